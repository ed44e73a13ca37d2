"""The Compare tab's actions with a fake generator and a fake embedder (no WebUI, no CLIP):
the spec from a run's files, defaults from its trigger word and class, the recommendation text,
clicking a cell and what goes to txt2img, a stop in the middle, the API route, A1111's generator
against a faked `modules.processing`, and the gradio layout (when gradio is there)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import numpy as np
import pytest
import safetensors.numpy
from PIL import Image

from conftest import write_photos
from lib_training.config import TrainConfig
from lib_training.errors import SettingsError
from lib_training.webui.compare import actions
from lib_training.webui.compare import form
from lib_training.webui.compare.actions import CompareContext, GenerationStopped
from lib_training.webui.compare.form import SOURCE_FILES, CompareRequest
from lib_training.webui.train.actions import Folders

ROOT = Path(__file__).resolve().parents[1]
RUN = "my_run"
SIZE = 64
MARK = 7  # blue channel of every fake generated image


# ---- a run on disk: epoch files, final file, config, loss log, dataset ---------------------------
@pytest.fixture
def world(tmp_path):
    lora_dir, runs_dir = tmp_path / "Lora", tmp_path / "Lora" / "lora_studio_runs"
    dataset = tmp_path / "data"
    write_photos(dataset / "2_sks cat", captions={"chelsea": "sks cat, sitting", "astronaut": "sks cat, in a suit"})
    lora_dir.mkdir()
    for stem, value in ((f"{RUN}-000001", 1.0), (f"{RUN}-000002", 2.0), (RUN, 3.0)):
        safetensors.numpy.save_file({"w": np.full(4, value, np.float32)}, str(lora_dir / f"{stem}.safetensors"))
    config = TrainConfig()
    config.data.train_dir, config.data.resolution = str(dataset), SIZE
    config.output.name, config.output.trigger_word, config.output.output_dir = RUN, "sks", str(lora_dir)
    (runs_dir / RUN).mkdir(parents=True)
    (runs_dir / RUN / "config.toml").write_text(config.to_toml(), encoding="utf-8")
    (runs_dir / RUN / "log.jsonl").write_text(
        "".join(json.dumps({"step": s, "loss": 0.2 / s}) + "\n" for s in range(1, 21)), encoding="utf-8")
    folders = Folders(lora_dir, runs_dir)
    context = CompareContext(folders=folders, cache_dir=tmp_path / "cache", output_dir=tmp_path / "grids",
                             base_model_hash="f" * 64, base_model_name="random-sd15")
    return SimpleNamespace(folders=folders, context=context, dataset=dataset, lora_dir=lora_dir, tmp=tmp_path)


def request_for(world, **overrides) -> CompareRequest:
    """What choosing the run in the tab fills in, at 64 px with 8 steps."""
    defaults = form.run_defaults(RUN, world.folders)
    values = dict(run=RUN, prompts=defaults.prompts, class_prompt=defaults.class_prompt,
                  trigger_words=defaults.trigger_words, training_dir=defaults.training_dir,
                  width=defaults.size, height=defaults.size, steps=8)
    values.update(overrides)
    return CompareRequest(**values)


# ---- fakes: images that carry their request, embeddings designed so the answer is known ----------
STRENGTH = {f"{RUN}-000001": 0.5, f"{RUN}-000002": 1.0, RUN: 1.5}


REGISTRY: list = []  # every request a fake generator made, in order: the index is in the image


class FakeGenerator:
    """A uniform image whose colour encodes the request's index in REGISTRY."""

    def __init__(self, stop_after: int | None = None):
        self.made: list = []
        self.stop_after = stop_after

    def generate(self, cell):
        if self.stop_after is not None and len(self.made) >= self.stop_after:
            raise GenerationStopped("Stopped.")
        self.made.append(cell)
        REGISTRY.append(cell)
        index = len(REGISTRY) - 1
        return Image.new("RGB", (cell.width, cell.height), (index % 256, index // 256, MARK))


class FakeEmbedder:
    """Training images -> e0. A cell: subject prompt [x, 1, seed jitter], class prompt [0.6x, 0, 0, 1, jitter]
    with x = file strength x weight: fidelity and drift grow with x; drift passes 0.20 above x ~ 1.2."""

    def __init__(self, generator: FakeGenerator, class_prompt: str):
        self.generator, self.class_prompt = generator, class_prompt
        self.calls = 0

    def embed_images(self, images):
        self.calls += 1
        return np.stack([self.vector(img) for img in images])

    def vector(self, image):
        extrema = image.getextrema()
        if not all(lo == hi for lo, hi in extrema) or extrema[2][0] != MARK:
            return np.eye(7)[0]  # a training photo
        cell = REGISTRY[extrema[0][0] + 256 * extrema[1][0]]
        x = STRENGTH[cell.lora.name] * cell.weight if cell.lora else 0.0
        jitter = np.zeros(2)
        jitter[cell.seed % 2] = 0.5
        if cell.user_prompt == self.class_prompt:
            return np.array([0.6 * x, 0, 0, 1, 0, *jitter])
        return np.array([x, 1, 0, 0, 0, *jitter])

    def embed_texts(self, texts):
        return np.stack([np.eye(7)[1] for _ in texts])


def run(world, request, generator=None, **kw):
    generator = generator or FakeGenerator()
    embedder = FakeEmbedder(generator, request.class_prompt)
    outcome = actions.run_compare(request, world.context, generator, lambda: embedder, **kw)
    return outcome, generator, embedder


# ---- tests ---------------------------------------------------------------------------------------
def test_defaults_come_from_the_runs_trigger_word_and_class(world):
    defaults = form.run_defaults(RUN, world.folders)
    assert defaults.prompts == "a photo of sks cat"
    assert defaults.class_prompt == "a photo of a cat"
    assert defaults.trigger_words == "sks" and defaults.size == SIZE
    assert defaults.training_dir == str(world.dataset)
    assert defaults.files == [f"{RUN} epoch 1", f"{RUN} epoch 2", f"{RUN} (final)"]
    assert defaults.curve_runs == [RUN]
    assert form.run_names(world.folders) == [RUN]
    request = CompareRequest()
    assert form.parse_weights(request.weights) == (0.0, 0.25, 0.5, 0.75, 1.0)
    assert form.parse_seeds(request.seeds) == (1, 2)
    assert form.default_prompts("", "woman") == ("a photo of woman", "a photo of a woman")
    assert form.default_prompts("", "", "nosnja outfit, red") == ("nosnja outfit, red", "")


def test_spec_from_a_runs_files(world):
    spec = actions.build_spec(request_for(world), world.context)
    assert [f.display for f in spec.files] == [f"{RUN} epoch 1", f"{RUN} epoch 2", f"{RUN} (final)"]
    assert [Path(f.path).name for f in spec.files] == [f"{RUN}-000001.safetensors", f"{RUN}-000002.safetensors",
                                                       f"{RUN}.safetensors"]
    assert spec.weights == (0.0, 0.25, 0.5, 0.75, 1.0) and spec.seeds == (1, 2)
    assert spec.all_prompts == ("a photo of sks cat", "a photo of a cat")
    assert spec.trigger_words == ("sks",) and (spec.width, spec.height, spec.steps) == (SIZE, SIZE, (8,))
    assert spec.base_model_hash == "f" * 64
    # 4 base images (2 prompts x 2 seeds) shared by the files + 3 files x 4 weights x 4
    assert actions.count_images(spec) == 4 + 48
    plan = actions.plan_text(request_for(world), world.folders)
    assert plan.startswith("3 file(s) × 5 weight(s) × 2 prompt(s) × 2 seed(s) → 52 images at 64x64"), plan


def test_bad_forms_are_refused_before_anything_is_generated(world):
    for overrides, words in (({"weights": "0, half"}, "not a number"), ({"seeds": "-1"}, "random"),
                             ({"prompts": "  "}, "at least one prompt"), ({"width": 60}, "multiples of 8"),
                             ({"run": "nope"}, "No run named")):
        with pytest.raises(SettingsError, match=words):
            actions.build_spec(request_for(world, **overrides), world.context)
    outside = world.tmp / "elsewhere.safetensors"
    shutil.copy(world.lora_dir / f"{RUN}.safetensors", outside)
    with pytest.raises(SettingsError, match="outside the WebUI's Lora folder"):
        form.chosen_files(["../elsewhere.safetensors"], world.folders)
    assert "⚠" in actions.plan_text(request_for(world, weights="x"), world.folders)


def test_one_click_gives_grid_numbers_recommendation_and_curves(world):
    outcome, generator, _ = run(world, request_for(world))
    assert outcome.complete and not outcome.error
    assert len(generator.made) == 52 and outcome.generated == 52 and outcome.from_cache == 0
    assert outcome.grid_path.is_file() and outcome.grid_path.parent == world.context.output_dir
    assert outcome.display.width <= 1400 and outcome.curves is not None

    # the table: base model + 3 files x 4 weights, numbers rounded, the recommended row marked
    assert len(outcome.table) == 13 and outcome.table[0][0] == "base model (weight 0)"
    recommended = [row for row in outcome.table if row[-1] == actions.RECOMMENDED]
    assert len(recommended) == 1
    # Highest fidelity within drift <= 0.20: x = 1.5 x 0.75 = 1.125 (x = 1.5 drifts 0.26).
    assert recommended[0][:2] == [f"{RUN} (final) @ 0.75", 0.75]
    over = next(row for row in outcome.table if row[0] == f"{RUN} (final) @ 1")
    assert over[-1].startswith("outside: drift")
    text = outcome.recommendation_md
    assert text.startswith(f"### Recommended: {RUN} (final) at weight 0.75")
    assert "the highest fidelity" in text and "within bounds" in text and "drift" in text
    assert "What the numbers mean" in text

    # what goes to txt2img by default: the recommended choice on the subject prompt, first seed
    assert outcome.selected.prompt == f"a photo of sks cat, <lora:{RUN}:0.75>" and outcome.selected.seed == 1
    assert "✔" in outcome.status_md and "52 image(s) generated" in outcome.status_md

    # opening the same comparison again generates nothing
    again, generator2, _ = run(world, request_for(world))
    assert generator2.made == [] and again.from_cache == 52 and again.recommendation_md == outcome.recommendation_md


def test_clicking_a_cell_gives_its_lora_tag_prompt_and_seed_for_txt2img(world):
    outcome, _, _ = run(world, request_for(world, weights="0, 0.5, 1", seeds="3, 4"))
    state = json.loads(json.dumps(outcome.state()))  # what gr.State keeps must be plain JSON
    g = state["geometry"]
    # columns: weights 0, 0.5, 1; rows: file (3) x prompt (2) x seed (2) -> row 5 = epoch 2, subject, seed 4
    x = g["left"] + 1 * (g["cell_width"] + g["gap"]) + g["cell_width"] // 2
    y = g["top"] + 5 * (g["cell_height"] + g["gap"]) + 3
    choice = actions.cell_at(state, x, y)
    assert choice.prompt == f"a photo of sks cat, <lora:{RUN}-000002:0.5>" and choice.seed == 4
    description, prompt, negative, seed, settings = actions.send_values(choice)
    assert description == f"{RUN} epoch 2 @ 0.5, seed 4 (Euler a, 8 steps, CFG 7, 64x64)"
    assert (prompt, negative, seed) == (choice.prompt, "", 4)
    assert json.loads(settings) == {"steps": 8, "cfg_scale": 7.0, "width": SIZE, "height": SIZE, "sampler": "Euler a"}
    # weight 0 is the base model: no tag at all
    base = actions.cell_at(state, g["left"] + 2, g["top"] + 2)
    assert base.prompt == "a photo of sks cat" and base.label == "base model (weight 0)"
    # labels and margins select nothing
    assert actions.cell_at(state, 1, 1) is None and actions.cell_at(None, 5, 5) is None
    # a table row selects that choice's first subject-prompt cell
    row = actions.cell_of_row(state, f"{RUN} epoch 1 @ 1")
    assert row.prompt == f"a photo of sks cat, <lora:{RUN}-000001:1>" and row.seed == 3


def test_a_stop_keeps_the_images_made_and_generate_continues(world):
    request = request_for(world, weights="0, 1", seeds="1")
    outcome, generator, embedder = run(world, request, generator=FakeGenerator(stop_after=3))
    assert not outcome.complete and outcome.error == "Stopped." and len(generator.made) == 3
    assert outcome.recommendation is None and embedder.calls == 0
    assert "Stopped" in outcome.status_md and "press Generate again" in outcome.recommendation_md
    assert outcome.display is not None and outcome.grid_path.is_file()  # the partial grid, grey cells
    done = {(c["lora_name"], c["weight"], c["prompt"], c["seed"]) for c in outcome.cells if c["done"]}
    assert len(done) == 3  # the base image appears once per file block, made once
    finished, generator2, _ = run(world, request)
    assert finished.complete and finished.from_cache == 3 and len(generator2.made) == actions.count_images(
        finished.spec) - 3
    assert finished.recommendation is not None


def test_a_failing_generator_is_reported_with_what_was_made(world):
    class Broken(FakeGenerator):
        def generate(self, cell):
            if len(self.made) == 2:
                raise RuntimeError("NansException: A tensor with all NaNs was produced in Unet.")
            return super().generate(cell)

    outcome, _, _ = run(world, request_for(world, weights="0, 1", seeds="1"), generator=Broken())
    assert not outcome.complete and "NansException" in outcome.error and "NansException" in outcome.status_md
    assert outcome.recommendation is None


def test_without_a_clip_model_the_grid_is_still_made(world):
    def no_model():
        from lib_training.errors import CheckpointError

        raise CheckpointError("No CLIP model for the numbers: set Settings → LoRA Studio → 'CLIP model'.")

    outcome = actions.run_compare(request_for(world, weights="0, 1", seeds="1"), world.context, FakeGenerator(),
                                  no_model)
    assert outcome.complete and outcome.display is not None and outcome.recommendation is None
    assert "No numbers: No CLIP model" in outcome.recommendation_md


def test_files_from_the_lora_folder(world):
    (world.lora_dir / "sub").mkdir()
    shutil.copy(world.lora_dir / f"{RUN}.safetensors", world.lora_dir / "sub" / "other_v2.safetensors")
    (world.lora_dir / "sub" / "other_v2.json").write_text(json.dumps({"activation text": "zzk"}), encoding="utf-8")
    choices = form.lora_file_choices(world.lora_dir)
    assert choices == [f"{RUN}-000001.safetensors", f"{RUN}-000002.safetensors", f"{RUN}.safetensors",
                       "sub/other_v2.safetensors"]
    defaults = form.files_defaults([f"{RUN}-000002.safetensors", "sub/other_v2.safetensors"], world.folders)
    assert defaults.trigger_words == "zzk"  # the card's activation text; my_run's files have no card
    assert defaults.training_dir == str(world.dataset)  # from the run my_run-000002 belongs to
    assert defaults.prompts == "a photo of zzk cat" and defaults.curve_runs == [RUN]
    request = CompareRequest(source=SOURCE_FILES, files=(f"{RUN}-000002.safetensors", "sub/other_v2.safetensors"),
                             weights="1", seeds="1", prompts="a photo of zzk cat", width=SIZE, height=SIZE)
    spec = actions.build_spec(request, world.context)
    assert [f.name for f in spec.files] == [f"{RUN}-000002", "other_v2"]
    with pytest.raises(SettingsError, match="both called"):
        shutil.copy(world.lora_dir / f"{RUN}.safetensors", world.lora_dir / "sub" / f"{RUN}.safetensors")
        form.chosen_files([f"{RUN}.safetensors", f"sub/{RUN}.safetensors"], world.folders)


def test_request_from_an_api_body(world):
    request = form.CompareRequest.from_json({"run": RUN, "weights": [0, 1], "seeds": [5], "prompts": ["a", "b"]})
    assert (request.weights, request.seeds, request.prompts) == ("0, 1", "5", "a\nb")
    files = form.CompareRequest.from_json({"files": "x.safetensors"})
    assert files.source == SOURCE_FILES and files.files == ("x.safetensors",)
    with pytest.raises(SettingsError, match="Unknown field"):
        form.CompareRequest.from_json({"run": RUN, "wieghts": [1]})
    filled = form.with_defaults(form.CompareRequest.from_json({"run": RUN}), world.folders, given={"run"})
    assert filled.prompts == "a photo of sks cat" and filled.class_prompt == "a photo of a cat"
    assert filled.training_dir == str(world.dataset) and filled.width == SIZE
    body = {"run": RUN, "prompts": ["sks cat, red"], "class_prompt": ""}
    kept = form.with_defaults(form.CompareRequest.from_json(body), world.folders, given=body)
    assert kept.prompts == "sks cat, red" and kept.class_prompt == "" and kept.trigger_words == "sks"


def test_outcome_as_json_for_the_api(world):
    outcome, _, _ = run(world, request_for(world, weights="0, 1", seeds="1"))
    body = actions.outcome_to_json(outcome)
    json.dumps(body)
    assert body["complete"] and body["recommendation"]["within_bounds"] in (True, False)
    assert {(c["lora_name"], c["weight"]) for c in body["cells"]} >= {("", 0.0), (RUN, 1.0)}
    assert all(c["image"] for c in body["cells"]) and body["grid"]
    assert body["table"]["columns"][0] == "choice"


# ---- the API route -------------------------------------------------------------------------------
def test_compare_route_follows_auth_and_reports_errors(tmp_path):
    pytest.importorskip("fastapi")
    pytest.importorskip("httpx")
    import base64
    import threading

    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from lib_training.webui import api
    from lib_training.webui.backend.service import TrainingService

    calls = []

    def compare(body):
        calls.append(body)
        if body.get("run") == "bad":
            raise SettingsError("No run named 'bad'.")
        return {"complete": True}

    service = TrainingService(runner=lambda *a, **k: None, lock=threading.Lock())
    backend = api.Backend(service=lambda: service, start=service.start, lora_dir=lambda: tmp_path,
                          runs_dir=lambda: tmp_path / "runs", compare=compare)
    app = FastAPI()
    api.register(app, backend, api_auth="u:p", public_api=True)
    client = TestClient(app)
    auth = {"Authorization": "Basic " + base64.b64encode(b"u:p").decode()}
    assert client.post("/lora-studio/v1/compare", json={"run": "x"}).status_code == 401
    assert client.post("/lora-studio/v1/compare", json={"run": "x"}, headers=auth).json() == {"complete": True}
    bad = client.post("/lora-studio/v1/compare", json={"run": "bad"}, headers=auth)
    assert bad.status_code == 400 and "No run named" in bad.json()["detail"]


# ---- A1111's generator against a faked modules.processing ---------------------------------------
@pytest.fixture
def fake_processing(monkeypatch):
    made = []
    state = SimpleNamespace(job_count=-1, job_no=0, textinfo=None, interrupted=False, skipped=False,
                            stopping_generation=False)

    class Txt2Img:
        def __init__(self, **kw):
            self.kw, self.closed = kw, False

        def close(self):
            self.closed = True

    def process_images(p):
        made.append(p)
        state.job_no += 1
        if p.kw["prompt"].startswith("interrupt"):
            state.interrupted = True  # the user pressed Interrupt during this image
        return SimpleNamespace(images=[Image.new("RGB", (p.kw["width"], p.kw["height"]), (9, 9, 9))])

    modules = ModuleType("modules")
    processing = ModuleType("modules.processing")
    processing.StableDiffusionProcessingTxt2Img, processing.process_images = Txt2Img, process_images
    shared = ModuleType("modules.shared")
    shared.state, shared.sd_model = state, object()
    modules.processing, modules.shared = processing, shared
    for name, module in (("modules", modules), ("modules.processing", processing), ("modules.shared", shared)):
        monkeypatch.setitem(sys.modules, name, module)
    return SimpleNamespace(made=made, state=state)


def test_a1111_generator_pins_the_checkpoint_and_stops_on_interrupt(world, fake_processing, tmp_path):
    from lib_training.compare import run_grid
    from lib_training.webui.compare.generator import A1111Generator, WebUIStop

    generator = A1111Generator("random-sd15.safetensors [1617035976]")
    request = request_for(world, weights="0, 1", seeds="1", prompts="a photo of sks cat", class_prompt="")
    spec = actions.build_spec(request, world.context)
    generator.expect(*actions.pending_images(spec, tmp_path / "c"))
    assert fake_processing.state.job_count == 4  # base + 3 files, one prompt, one seed
    result = run_grid(spec, generator, tmp_path / "c", cancel=WebUIStop())
    assert result.complete and fake_processing.state.job_no == 4
    kw = [p.kw for p in fake_processing.made]
    assert kw[0]["prompt"] == "a photo of sks cat" and kw[1]["prompt"] == f"a photo of sks cat, <lora:{RUN}-000001:1>"
    assert all(k["override_settings"] == {"sd_model_checkpoint": "random-sd15.safetensors [1617035976]"} for k in kw)
    assert all(k["do_not_save_samples"] and k["do_not_save_grid"] and k["seed"] == 1 and k["steps"] == 8
               and (k["width"], k["height"]) == (SIZE, SIZE) and k["sampler_name"] == "Euler a" for k in kw)
    assert all(p.closed for p in fake_processing.made)
    assert "LoRA Studio: image 4/4" in fake_processing.state.textinfo

    # Interrupt during an image: that image is thrown away (half-sampled), the run stops, nothing more is made
    stopped = request_for(world, weights="1", seeds="2", prompts="interrupt me", class_prompt="")
    outcome = actions.run_compare(stopped, world.context, generator, None, cancel=WebUIStop())
    assert outcome.error == "Stopped." and not outcome.complete
    assert len(fake_processing.made) == 5 and [c["done"] for c in outcome.cells] == [False, False, False]


def test_stop_interrupts_a_comparison_only(fake_processing):
    from lib_training.webui.compare import generator as compare_generator

    fake_processing.state.interrupt = lambda: setattr(fake_processing.state, "interrupted", True)
    assert compare_generator.interrupt() == "No comparison is running."  # e.g. a training run: left alone
    assert fake_processing.state.interrupted is False
    compare_generator._active.set()
    try:
        assert compare_generator.interrupt().startswith("Stopping after the image being made")
    finally:
        compare_generator._active.clear()
    assert fake_processing.state.interrupted is True


# ---- the JavaScript and the layout ---------------------------------------------------------------
JS = (ROOT / "javascript" / "lora_studio_compare.js").read_text(encoding="utf-8")
UI = (ROOT / "lib_training" / "webui" / "compare" / "ui.py").read_text(encoding="utf-8")


def test_the_scripts_callbacks_and_elements_exist():
    names = set(re.findall(r'_js="(\w+)"', UI))
    assert names == {"lora_studio_compare_start", "lora_studio_compare_send"}
    for name in names:
        assert re.search(rf"^function {name}\(", JS, re.M), name
    for element_id in re.findall(r"getElementById\('(\w+)'\)", JS):
        assert f'"{element_id}"' in UI, element_id
    start = JS[JS.index("function lora_studio_compare_start("):JS.index("function lora_studio_compare_send(")]
    assert "randomId()" in start and "requestProgress(id," in start and "res[0] = id" in start
    assert "#txt2img_prompt textarea" in JS and "#txt2img_seed input" in JS and "switch_to_txt2img()" in JS
    node = shutil.which("node")
    if node:
        result = subprocess.run([node, "--check", str(ROOT / "javascript" / "lora_studio_compare.js")],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr


def test_the_compare_tab_builds_and_generates_through_the_queue(monkeypatch, world):
    gr = pytest.importorskip("gradio", reason="gradio comes with A1111: PYTHONPATH=<webui>/venv/lib/python3.x/"
                                              "site-packages to run this layout test")
    wrapped = []
    modules = ModuleType("modules")
    call_queue = ModuleType("modules.call_queue")
    call_queue.wrap_gradio_gpu_call = lambda fn, extra_outputs=None: wrapped.append((fn, extra_outputs)) or fn
    ui_components = ModuleType("modules.ui_components")
    ui_components.ToolButton = lambda value, elem_id=None, tooltip=None: gr.Button(value, elem_id=elem_id)
    shared = ModuleType("modules.shared")
    shared.opts = SimpleNamespace(lora_studio_clip_model="")
    shared.interrogator = SimpleNamespace(clip_model=None)
    shared.cmd_opts = SimpleNamespace(clip_models_path=str(world.tmp / "no_clip"))
    for name, module in (("modules", modules), ("modules.call_queue", call_queue),
                         ("modules.ui_components", ui_components), ("modules.shared", shared)):
        monkeypatch.setitem(sys.modules, name, module)
    modules.call_queue, modules.ui_components, modules.shared = call_queue, ui_components, shared
    from lib_training.webui.backend import runtime
    from lib_training.webui.compare import ui as ui_compare

    monkeypatch.setattr(runtime, "lora_dir", lambda: world.lora_dir)
    monkeypatch.setattr(runtime, "runs_dir", lambda: world.folders.runs_dir)
    with gr.Blocks() as block:
        ui_compare.create_compare_tab()
    by_elem = {getattr(b, "elem_id", None): b for b in block.blocks.values()}
    assert by_elem["lora_studio_compare_run"].choices == [RUN]
    assert by_elem["lora_studio_compare_weights"].value == "0, 0.25, 0.5, 0.75, 1"
    assert "No CLIP model" in by_elem["lora_studio_compare_embedder"].value
    generate = [d for d in block.dependencies if d.get("js") == "lora_studio_compare_start"]
    assert len(generate) == 1 and len(generate[0]["outputs"]) == 13 and len(generate[0]["inputs"]) == 18
    (fn, extra_outputs), = wrapped
    assert len(extra_outputs) == 12  # A1111 puts the error HTML into the 13th output (the status line)
    assert all(getattr(by_elem[e], "do_not_save_to_config", False) for e in (
        "lora_studio_compare_sampler", "lora_studio_compare_steps", "lora_studio_compare_send_prompt"))
    send = [d for d in block.dependencies if d.get("js") == "lora_studio_compare_send"]
    assert len(send) == 1 and len(send[0]["inputs"]) == 4
    # choosing the run fills the prompts from its trigger word and class
    choose = [d for d in block.dependencies if by_elem["lora_studio_compare_run"]._id in d["targets"]][0]
    fn = block.fns[block.dependencies.index(choose)].fn
    values = [by_elem[e].value for e in ("lora_studio_compare_source",)] + [RUN] + [None] * 15
    filled = fn(RUN, *values)
    assert filled[1] == "a photo of sks cat" and filled[2] == "a photo of a cat" and filled[5] == SIZE


def test_a_base_model_outside_the_diversity_bound_is_pointed_out():
    from lib_training.compare import Bounds, GroupMetrics, MetricsReport

    def report(diversity):
        return MetricsReport((), (GroupMetrics(None, 0.0, 0.8, 30.0, None, diversity, 4),))

    assert "not a sign of overfitting" in actions.base_model_note(report(0.02), Bounds())
    assert actions.base_model_note(report(0.2), Bounds()) == ""
    assert actions.base_model_note(None, Bounds()) == ""
