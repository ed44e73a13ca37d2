"""The Dataset tab's actions without gradio or A1111: create, health report, preprocess, captions with
A1111's interrogators faked at their boundary, the caption editor, class images with a fake generator,
the API route, and "Use in Train". The gradio layout test at the end needs gradio 3.41 (A1111's venv)."""

from __future__ import annotations

import html
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest
from PIL import Image

from conftest import write_photos
from lib_training.data.health import approximate_token_count
from lib_training.errors import SettingsError
from lib_training.webui.dataset import class_images as ci
from lib_training.webui.dataset import actions, names
from lib_training.webui.train.form import METHOD_DREAMBOOTH, METHOD_LORA
from lib_training.webui.dataset.interrogators import (BLIP, DEEPDANBOORU, A1111BlipCaptioner, A1111DeepDanbooruCaptioner,
                                              a1111_captioner)
from lib_training.webui.job_progress import JobStopped, StateProgress


@pytest.fixture
def datasets(tmp_path) -> Path:
    folder = tmp_path / "datasets"
    folder.mkdir()
    return folder


@pytest.fixture
def photos(tmp_path) -> Path:
    """A raw folder: two photos (one captioned) and a text file that is not an image."""
    source = write_photos(tmp_path / "raw", names=("chelsea", "astronaut"), size=96,
                          captions={"chelsea": "a cat on a chair"})
    (source / "notes.md").write_text("not an image")
    return source


@pytest.fixture
def cat_set(datasets, photos) -> Path:
    outcome = actions.create_dataset(datasets, "cats", str(photos), trigger="sks", class_word="cat", repeats=5)
    assert outcome.ok, outcome.message
    return datasets / "cats"


def state() -> SimpleNamespace:
    return SimpleNamespace(job_count=0, job_no=0, textinfo="", interrupted=False, stopping_generation=False,
                           skipped=False)


# ---- pick / create ---------------------------------------------------------------------------

def test_create_from_a_folder_gives_a_kohya_project_the_tab_can_open(datasets, photos, cat_set):
    subset = cat_set / "img" / "5_sks cat"
    assert sorted(p.name for p in subset.iterdir()) == ["astronaut.png", "chelsea.png", "chelsea.txt"]
    assert names.list_datasets(datasets) == ["cats"]
    info = actions.open_dataset(datasets, "cats")
    assert (info.trigger, info.class_word, info.num_images, info.error) == ("sks", "cat", 2, "")
    assert info.train_dir == cat_set / "img" and info.reg_dir is None
    assert "2 images" in info.line
    assert sorted(p.name for p in photos.iterdir()) == ["astronaut.png", "chelsea.png", "chelsea.txt", "notes.md"]


def test_create_message_lists_skipped_files_and_adding_again_copies_nothing(datasets, photos, cat_set):
    again = actions.create_dataset(datasets, "cats", str(photos), trigger="sks", class_word="cat", repeats=5)
    assert again.ok and again.message.startswith("Added 0 image(s)") and "2 were already there" in again.message
    assert "notes.md" in again.message


def test_create_from_uploads_pairs_captions_by_name(datasets, tmp_path):
    upload = write_photos(tmp_path / "upload", names=("coffee",), size=64, captions={"coffee": "a cup"})
    outcome = actions.create_dataset(datasets, "cups", uploads=[str(upload / "coffee.png"), str(upload / "coffee.txt")],
                                     trigger="zzcup", class_word="cup", repeats=3)
    assert outcome.ok and outcome.dataset == "cups", outcome.message
    assert (datasets / "cups" / "img" / "3_zzcup cup" / "coffee.txt").read_text() == "a cup"


@pytest.mark.parametrize("name, source, expected", [
    ("", "x", "Give the dataset a name"),
    ("../evil", "x", "may only use"),
    (".hidden", "x", "may only use"),
    ("ok", "", "Give a folder of photos"),
    ("ok", "/does/not/exist", "does not exist"),
])
def test_create_refuses_bad_input_with_a_message(datasets, name, source, expected):
    outcome = actions.create_dataset(datasets, name, source, trigger="sks")
    assert not outcome.ok and expected in outcome.message
    assert "error" in outcome.html() and list(datasets.iterdir()) == []


# ---- health report ---------------------------------------------------------------------------

def test_health_report_summary_and_problem_thumbnails(tmp_path, cat_set):
    subset = cat_set / "img" / "5_sks cat"
    (subset / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    view = actions.health_report(cat_set, 512, "sks", thumbnails_dir=tmp_path / "thumbs",
                                 count_tokens=approximate_token_count)
    assert view.ok and view.report is not None
    assert "Not ready" in view.markdown and "broken file: 1" in view.markdown
    assert "smaller than the resolution: 2" in view.markdown and "trigger word missing" in view.markdown
    first = view.problems[0]
    assert first.path.name == "broken.jpg" and first.severity == "error" and "broken file" in first.caption
    with Image.open(first.thumbnail) as thumb:  # a placeholder tile: the file itself cannot be shown
        assert thumb.size == (256, 256)
    chelsea = next(p for p in view.problems if p.path.name == "chelsea.png")
    assert "smaller than the resolution: 96x" in chelsea.caption and "trigger word missing" in chelsea.caption
    with Image.open(chelsea.thumbnail) as thumb:
        assert max(thumb.size) <= 256 and thumb.format == "JPEG"


def test_health_report_of_a_missing_folder_is_a_message(datasets):
    view = actions.health_report(datasets / "nope", 512, count_tokens=approximate_token_count)
    assert not view.ok and "does not exist" in view.markdown and view.problems == []


# ---- preprocess ------------------------------------------------------------------------------

def test_preprocess_writes_a_new_dataset_and_reports_progress(datasets, cat_set):
    before = {p: p.read_bytes() for p in cat_set.rglob("*") if p.is_file()}
    seen = []
    outcome = actions.preprocess(datasets, "cats", "", 64, "Centre crop", True,
                                 on_progress=lambda d, t: seen.append((d, t)))
    assert outcome.ok and outcome.dataset == "cats-64", outcome.message
    out = datasets / "cats-64" / "img" / "5_sks cat"
    assert sorted(p.name for p in out.iterdir()) == ["0001.png", "0001_flipped.png", "0002.png", "0002.txt",
                                                     "0002_flipped.png", "0002_flipped.txt"]
    assert seen[-1] == (2, 2) and "2 images + 2 mirrored copies" in outcome.message
    assert {p: p.read_bytes() for p in cat_set.rglob("*") if p.is_file()} == before


def test_preprocess_stopped_writes_nothing(datasets, cat_set):
    fake = state()
    progress = StateProgress("preprocess", state=fake)
    fake.interrupted = True
    outcome = actions.preprocess(datasets, "cats", "stopped", 64, "center", on_progress=progress)
    assert not outcome.ok and "stopped" in outcome.message and not (datasets / "stopped").exists()
    assert fake.job_count == 2 and fake.job_no == 1 and "preprocess 1/2" in fake.textinfo


# ---- captions with A1111's interrogators faked at their boundary -------------------------------

class FakeBlipModel:
    def __init__(self, log):
        self.log = log

    def half(self):
        self.log.append("half")
        return self

    def to(self, device):
        self.log.append(f"to {device}")
        return self

    def parameters(self):
        import torch

        return iter([torch.zeros(1, dtype=torch.float16)])


class FakeInterrogator:
    """What A1111's InterrogateModels offers: load_blip_model, generate_caption, send_blip_to_ram."""

    def __init__(self):
        self.log, self.blip_model, self.dtype, self.running_on_cpu = [], None, None, False

    def load_blip_model(self):
        self.log.append("load")
        return FakeBlipModel(self.log)

    def generate_caption(self, image):
        assert image.mode == "RGB" and self.dtype is not None
        self.log.append("caption")
        return "a cat sitting on a chair "

    def send_blip_to_ram(self):
        self.log.append("to ram")


def fake_a1111_modules(interrogator=None, no_half=False):
    devices = SimpleNamespace(device_interrogate="cuda:0", torch_gc=lambda: None)
    lowvram = SimpleNamespace(send_everything_to_cpu=lambda: interrogator.log.append("lowvram"))
    shared = SimpleNamespace(interrogator=interrogator, cmd_opts=SimpleNamespace(no_half=no_half))
    return dict(shared=shared, devices=devices, lowvram=lowvram)


def test_blip_captions_every_image_with_the_trigger_word_and_loads_once(cat_set):
    interrogator = FakeInterrogator()
    (cat_set / "img" / "5_sks cat" / "chelsea.txt").write_text("")  # empty: captioned too
    captioner = A1111BlipCaptioner(**fake_a1111_modules(interrogator))
    seen = []
    outcome = actions.caption_dataset(cat_set, captioner, "sks", "cat", on_progress=lambda *a: seen.append(a))
    assert outcome.ok, outcome.message
    subset = cat_set / "img" / "5_sks cat"
    assert (subset / "astronaut.txt").read_text() == "sks, a cat sitting on a chair\n"
    assert (subset / "chelsea.txt").read_text() == "sks, a cat sitting on a chair\n"
    assert interrogator.log == ["lowvram", "load", "half", "to cuda:0", "caption", "caption", "to ram"]
    assert seen == [(1, 2, "astronaut.png"), (2, 2, "chelsea.png")]
    assert "Wrote 2 caption(s)" in outcome.message and "'sks cat'" in outcome.message


def test_blip_keeps_existing_captions_unless_asked_and_stays_fp32_with_no_half(cat_set):
    interrogator = FakeInterrogator()
    outcome = actions.caption_dataset(cat_set, A1111BlipCaptioner(**fake_a1111_modules(interrogator, no_half=True)),
                                      "sks", "cat")
    assert "kept 1 existing" in outcome.message
    assert (cat_set / "img" / "5_sks cat" / "chelsea.txt").read_text() == "a cat on a chair"
    assert "half" not in interrogator.log


def test_blip_that_cannot_load_says_where_a1111_keeps_the_model(cat_set):
    interrogator = FakeInterrogator()
    interrogator.load_blip_model = lambda: (_ for _ in ()).throw(OSError("no internet"))
    outcome = actions.caption_dataset(cat_set, A1111BlipCaptioner(**fake_a1111_modules(interrogator)), "sks")
    assert not outcome.ok and "models/BLIP" in outcome.message and "no internet" in outcome.message


def test_deepdanbooru_through_the_lazily_imported_module(cat_set, monkeypatch):
    log = []
    model = SimpleNamespace(start=lambda: log.append("start"), stop=lambda: log.append("stop"),
                            tag_multi=lambda image: log.append("tag") or "1girl, cat ears, \\(smile\\)")
    modules = ModuleType("modules")
    modules.deepbooru = SimpleNamespace(model=model)
    modules.devices = SimpleNamespace(torch_gc=lambda: None)
    monkeypatch.setitem(sys.modules, "modules", modules)
    outcome = actions.caption_dataset(cat_set, a1111_captioner(DEEPDANBOORU), "sks", overwrite=True)
    assert outcome.ok, outcome.message
    assert (cat_set / "img" / "5_sks cat" / "chelsea.txt").read_text() == "sks, 1girl, cat ears, \\(smile\\)\n"
    assert log == ["start", "tag", "tag", "stop"]


def test_captioning_stops_on_interrupt_and_keeps_what_is_written(cat_set):
    fake = state()
    interrogator = FakeInterrogator()
    original = interrogator.generate_caption

    def caption_then_interrupt(image):
        fake.interrupted = True  # the user presses Stop while the first image is captioned
        return original(image)

    interrogator.generate_caption = caption_then_interrupt
    outcome = actions.caption_dataset(cat_set, A1111BlipCaptioner(**fake_a1111_modules(interrogator)), "sks",
                                      overwrite=True, on_progress=StateProgress("captions", state=fake))
    assert not outcome.ok and "stopped after 1 of 2" in outcome.message
    assert (cat_set / "img" / "5_sks cat" / "astronaut.txt").read_text() == "sks, a cat sitting on a chair\n"
    assert (cat_set / "img" / "5_sks cat" / "chelsea.txt").read_text() == "a cat on a chair"
    assert interrogator.log[-1] == "to ram"  # the model goes back to RAM on the way out


def test_unknown_captioner_is_refused():
    with pytest.raises(Exception, match="Unknown captioner"):
        a1111_captioner("GPT")
    assert isinstance(a1111_captioner(BLIP), A1111BlipCaptioner)
    assert isinstance(a1111_captioner(DEEPDANBOORU), A1111DeepDanbooruCaptioner)


def test_prefix_find_replace_and_tag_table(cat_set):
    outcome = actions.add_trigger(cat_set, "sks", "")
    assert outcome.ok and "2 caption(s)" in outcome.message
    subset = cat_set / "img" / "5_sks cat"
    assert (subset / "chelsea.txt").read_text() == "sks, a cat on a chair\n"
    assert (subset / "astronaut.txt").read_text() == "sks\n"
    replaced = actions.replace_in_captions(cat_set, "chair", "sofa")
    assert replaced.ok and "1 occurrence(s) in 1 caption(s)" in replaced.message
    assert (subset / "chelsea.txt").read_text() == "sks, a cat on a sofa\n"
    assert "not found" in actions.replace_in_captions(cat_set, "dragon", "x").message
    bad = actions.replace_in_captions(cat_set, "(", "x", regex=True)
    assert not bad.ok and "regular expression" in bad.message
    table = actions.tag_table_html(cat_set)
    assert "<td>sks</td><td>2</td><td>100%</td>" in table and "<td>a cat on a sofa</td><td>1</td>" in table


# ---- the caption editor ----------------------------------------------------------------------

def test_editor_lists_training_images_and_saves_a_caption_to_disk(tmp_path, cat_set):
    items = actions.editor_items(cat_set, thumbnails_dir=tmp_path / "thumbs")
    assert [i.label for i in items] == ["astronaut.png", "chelsea.png"]
    assert all(i.thumbnail.is_file() for i in items)
    text, where = actions.read_caption(cat_set, str(items[0].image))
    assert text == "" and "no caption file yet" in where
    outcome = actions.save_caption(cat_set, str(items[0].image), "  sks cat, an astronaut  ")
    assert outcome.ok and outcome.message == "Saved astronaut.txt."
    subset = cat_set / "img" / "5_sks cat"
    assert (subset / "astronaut.txt").read_bytes() == b"sks cat, an astronaut\n"
    assert not [p for p in subset.iterdir() if p.name.startswith(".")]  # no temp file left behind
    assert actions.read_caption(cat_set, str(items[0].image))[0] == "sks cat, an astronaut"


def test_editor_writes_an_existing_caption_file_and_refuses_other_paths(tmp_path, cat_set):
    subset = cat_set / "img" / "5_sks cat"
    (subset / "chelsea.txt").rename(subset / "chelsea.caption")
    assert actions.save_caption(cat_set, str(subset / "chelsea.png"), "sks cat, café").ok
    assert (subset / "chelsea.caption").read_text(encoding="utf-8") == "sks cat, café\n"
    assert not (subset / "chelsea.txt").exists()
    outside = tmp_path / "elsewhere.png"
    Image.new("RGB", (8, 8)).save(outside)
    refused = actions.save_caption(cat_set, str(outside), "x")
    assert not refused.ok and "not an image of the dataset" in refused.message
    assert not actions.save_caption(cat_set, "", "x").ok


# ---- class images with a fake generator ------------------------------------------------------

class FakeGenerate:
    def __init__(self, fail_at: int | None = None):
        self.requests: list[ci.GenerationRequest] = []
        self.fail_at = fail_at

    def __call__(self, request):
        self.requests.append(request)
        if self.fail_at is not None and len(self.requests) == self.fail_at:
            raise RuntimeError("A tensor with all NaNs was produced in Unet.")
        images = []
        for seed in request.seeds:
            image = Image.new("RGB", (request.width, request.height), (seed % 256, 0, 0))
            image.info["parameters"] = f"{request.prompt}\nSteps: {request.steps}, Seed: {seed}"
            images.append(image)
        return images

    @property
    def seeds(self) -> list[int]:
        return [s for r in self.requests for s in r.seeds]


def settings(**overrides) -> ci.ClassImageSettings:
    values = dict(class_word="cat", per_image=3, steps=1, width=64, height=64, seed=100, sampler="Euler")
    values.update(overrides)
    return ci.ClassImageSettings(**values)


def test_class_images_count_seeds_and_reg_folder_layout(cat_set):
    generate = FakeGenerate()
    progress = []
    result = ci.generate_class_images(cat_set, settings(prompt="a photo of a cat"), generate,
                                      on_progress=lambda *a: progress.append(a))
    folder = cat_set / "reg" / "1_cat"
    assert result.folder == folder and result.planned == 6 and len(result.written) == 6 and result.complete
    assert generate.seeds == [100, 101, 102, 103, 104, 105]
    assert {(r.sampler, r.steps, r.width, r.height, r.prompt) for r in generate.requests} == {
        ("Euler", 1, 64, 64, "a photo of a cat")}
    assert sorted(p.name for p in folder.glob("*.png")) == [f"{i:05d}.png" for i in range(6)]
    assert (folder / "00004.txt").read_text() == "a photo of a cat\n"
    with Image.open(folder / "00004.png") as image:
        assert image.getpixel((0, 0)) == (104, 0, 0) and "Seed: 104" in image.info["parameters"]
    assert (folder / ci.MANIFEST).is_file()
    assert progress[0] == (0, 6, "0/6 on disk") and progress[-1] == (6, 6, "6/6 made, seed 105")
    # The training tab reads it as a class-image folder; the class word is the caption fallback.
    info = actions.open_dataset(cat_set.parent, "cats")
    assert info.num_reg_images == 6 and info.reg_dir == cat_set / "reg"
    assert "Made 6 class image(s)" in result.message() and "done" in result.message()


def test_class_images_resume_skips_what_is_on_disk(cat_set):
    folder = cat_set / "reg" / "1_cat"
    stop_after_two = lambda: len(list(folder.glob("*.png"))) >= 2  # noqa: E731  (Stop pressed after two images)
    first = ci.generate_class_images(cat_set, settings(), FakeGenerate(), should_stop=stop_after_two)
    assert first.stopped and len(first.written) == 2 and "continue where it stopped" in first.message()
    (folder / "00000.png").unlink()  # and one lost image
    generate = FakeGenerate()
    second = ci.generate_class_images(cat_set, settings(), generate)
    assert generate.seeds == [100, 102, 103, 104, 105]
    assert second.existing == 1 and len(second.written) == 5 and second.complete and not second.note
    again = FakeGenerate()
    assert ci.generate_class_images(cat_set, settings(), again).existing == 6 and again.requests == []


def test_class_images_batches_consecutive_seeds_of_one_prompt(cat_set):
    generate = FakeGenerate()
    ci.generate_class_images(cat_set, settings(batch_size=2, from_captions=True, trigger="sks"), generate)
    assert [r.seeds for r in generate.requests] == [(100, 101), (102,), (103, 104), (105,)]
    assert [r.prompt for r in generate.requests] == ["cat", "cat", "a cat on a chair", "a cat on a chair"]


def test_class_images_from_captions_replace_the_trigger_word(cat_set):
    (cat_set / "img" / "5_sks cat" / "astronaut.txt").write_text("sks, a woman in a space suit")
    jobs = ci.plan_class_images(cat_set, settings(per_image=1, from_captions=True, trigger="sks"))
    assert [j.prompt for j in jobs] == ["cat, a woman in a space suit", "a cat on a chair"]


@pytest.mark.parametrize("caption, expected", [
    ("sks cat, sitting on a sofa", "cat, sitting on a sofa"),
    ("a photo of sks cat", "a photo of cat"),
    ("sks, a woman in red", "cat, a woman in red"),
    ("a photo of SKS", "a photo of cat"),
    ("sks", "cat"),
    ("a cat, sks, sofa", "a cat, sofa"),
    ("sksy cat", "sksy cat"),
])
def test_class_prompt_from_caption(caption, expected):
    assert ci.class_prompt_from_caption(caption, "sks", "cat") == expected


def test_class_images_errors_and_interrupts_keep_what_is_done(cat_set):
    failing = ci.generate_class_images(cat_set, settings(), FakeGenerate(fail_at=3))
    assert len(failing.written) == 2 and "all NaNs" in failing.error and "Generate again" in failing.message()

    def interrupted(request):
        raise ci.ClassImagesStopped()

    stopped = ci.generate_class_images(cat_set, settings(), interrupted)
    assert stopped.stopped and stopped.existing == 2 and stopped.written == []


def test_class_images_note_when_the_settings_changed(cat_set):
    ci.generate_class_images(cat_set, settings(per_image=1), FakeGenerate())
    changed = ci.generate_class_images(cat_set, settings(per_image=1, steps=30), FakeGenerate())
    assert changed.existing == 2 and "steps" in changed.note and "other settings" in changed.message()


@pytest.mark.parametrize("values, expected", [
    ({"class_word": " "}, "class word"),
    ({"class_word": "cat", "per_image": 0}, "Images per instance image"),
    ({"class_word": "cat", "width": 500}, "multiple of 8"),
    ({"class_word": "cat", "cfg_scale": "x"}, "number"),
    ({"class_word": "cat", "steps": 2.5}, "whole number"),
    ({"class_word": "cat", "from_captions": True}, "trigger word"),
    ({"class_word": "cat", "colour": "red"}, "Unknown class-image setting"),
    ({"class_word": "c/a"}, "cannot be part of a folder name"),
])
def test_class_image_settings_are_checked(cat_set, values, expected):
    with pytest.raises(SettingsError, match=expected):
        ci.plan_class_images(cat_set, ci.settings_from_mapping(values))


def test_make_class_images_action_returns_the_gallery(cat_set):
    values = dict(class_word="cat", per_image=2, steps=1, width=64, height=64, seed=5.0, sampler="Euler",
                  batch_size=1, cfg_scale=7, prompt="", trigger="sks", from_captions=False)
    outcome, shown = actions.make_class_images(cat_set, values, FakeGenerate())
    assert outcome.ok and len(shown) == 4 and shown[0].name == "00000.png"
    bad, none = actions.make_class_images(cat_set, dict(values, class_word=""), FakeGenerate())
    assert not bad.ok and none == []


def test_a1111_generate_pins_the_checkpoint_and_stops_on_interrupt():
    made = []

    class Txt2Img:
        def __init__(self, **kwargs):
            made.append(kwargs)
            self.kwargs = kwargs

    checkpoint = SimpleNamespace(title="random.safetensors [abc]")
    shared = SimpleNamespace(sd_model=SimpleNamespace(sd_checkpoint_info=checkpoint), state=state())
    images = [Image.new("RGB", (8, 8)) for _ in range(2)]
    processing = SimpleNamespace(StableDiffusionProcessingTxt2Img=Txt2Img,
                                 process_images=lambda p: SimpleNamespace(images=images))
    generate = ci.a1111_generate(shared=shared, processing=processing)
    request = ci.GenerationRequest("cat", "blurry", (7, 8), "Euler a", "Automatic", 3, 5.0, 64, 72)
    assert generate(request) == images
    kwargs = made[0]
    assert kwargs["override_settings"] == {"sd_model_checkpoint": "random.safetensors [abc]"}
    assert [kwargs[k] for k in ("seed", "batch_size", "n_iter", "steps", "cfg_scale")] == [7, 2, 1, 3, 5.0]
    assert [kwargs[k] for k in ("width", "height", "sampler_name", "negative_prompt")] == [64, 72, "Euler a", "blurry"]
    assert kwargs["do_not_save_samples"] and kwargs["do_not_save_grid"]
    shared.state.skipped = True
    assert generate(request) == [] and not shared.state.skipped
    shared.state.interrupted = True
    with pytest.raises(ci.ClassImagesStopped):
        generate(request)
    with pytest.raises(Exception, match="No checkpoint is loaded"):
        ci.a1111_generate(shared=SimpleNamespace(sd_model=None), processing=processing)


# ---- progress, Use in Train, API ------------------------------------------------------------

def test_state_progress_feeds_a1111s_progress_bar():
    fake = state()
    progress = StateProgress("captions", state=fake)
    progress(3, 10, "chelsea.png")
    assert (fake.job_count, fake.job_no, fake.textinfo) == (10, 3, "LoRA Studio: captions: chelsea.png")
    fake.interrupted = True
    with pytest.raises(JobStopped):
        progress(4, 10)
    StateProgress("class images", state=fake, raise_when_stopped=False)(4, 10)


def test_use_in_train_values(cat_set):
    assert actions.use_in_train(cat_set, "sks", "my_lora").name == "cats"  # the Train tab's default name
    plain = actions.use_in_train(cat_set, " sks ", "")
    assert (plain.train_dir, plain.reg_dir, plain.trigger, plain.method, plain.name) == (
        str(cat_set / "img"), "", "sks", METHOD_LORA, "cats")
    ci.generate_class_images(cat_set, settings(per_image=1), FakeGenerate())
    with_class = actions.use_in_train(cat_set, "sks", "my_lora_v2")
    assert (with_class.reg_dir, with_class.method, with_class.name) == (str(cat_set / "reg"), METHOD_DREAMBOOTH,
                                                                        "my_lora_v2")
    assert "2 class images (DreamBooth-LoRA)" in with_class.message


def test_class_images_route_follows_api_auth(tmp_path, cat_set):
    pytest.importorskip("fastapi", reason="fastapi + httpx are in .venv-tests/a1111 only (A1111's pins)")
    pytest.importorskip("httpx", reason="fastapi + httpx are in .venv-tests/a1111 only (A1111's pins)")
    import base64

    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from lib_training.webui import api

    calls = []

    def class_images(body):
        calls.append(body)
        settings_ = ci.settings_from_mapping({k: v for k, v in body.items() if k != "dataset"})
        result = ci.generate_class_images(Path(body["dataset"]), settings_, FakeGenerate())
        return {"written": [str(p) for p in result.written], "planned": result.planned}

    idle = SimpleNamespace(status=lambda: SimpleNamespace(active=False))
    backend = api.Backend(service=lambda: idle, start=None, lora_dir=lambda: tmp_path, runs_dir=lambda: tmp_path,
                          class_images=class_images)
    app = FastAPI()
    api.register(app, backend, api_auth="u:p", public_api=True)
    client = TestClient(app)
    body = {"dataset": str(cat_set), "class_word": "cat", "per_image": 1, "steps": 1, "width": 64, "height": 64}
    assert client.post("/lora-studio/v1/class-images", json=body).status_code == 401
    auth = {"Authorization": "Basic " + base64.b64encode(b"u:p").decode()}
    answer = client.post("/lora-studio/v1/class-images", json=body, headers=auth)
    assert answer.status_code == 200 and answer.json()["planned"] == 2 and len(answer.json()["written"]) == 2
    bad = client.post("/lora-studio/v1/class-images", json=dict(body, width=100), headers=auth)
    assert bad.status_code == 400 and "multiple of 8" in bad.json()["detail"]
    missing = api.Backend(service=lambda: idle, start=None, lora_dir=lambda: tmp_path, runs_dir=lambda: tmp_path)
    app2 = FastAPI()
    api.register(app2, missing, api_auth=None, public_api=True)
    assert TestClient(app2).post("/lora-studio/v1/class-images", json=body).status_code == 404


# ---- the gradio layout (needs gradio 3.41: A1111's venv on PYTHONPATH) -------------------------

from test_webui_tab import fake_a1111  # noqa: E402,F401  (the fixture: gradio + A1111 faked)

ROOT = Path(__file__).resolve().parents[1]


def test_every_dataset_js_callback_is_defined():
    import re

    source = (ROOT / "lib_training" / "webui" / "dataset" / "ui.py").read_text(encoding="utf-8")
    script = (ROOT / "javascript" / "lora_studio.js").read_text(encoding="utf-8")
    names = set(re.findall(r'_js="(\w+)"', source))
    assert names == {"lora_studio_dataset_preprocess", "lora_studio_dataset_caption",
                     "lora_studio_dataset_class_images"}
    for name in names:
        assert re.search(rf"^function {name}\(", script, re.M), name
    for element_id in re.findall(r"'(lora_studio_ds_\w+)'", script):
        assert f'"{element_id}"' in source, element_id


def test_dataset_tab_builds_and_use_in_train_fills_the_train_tab(fake_a1111, tmp_path):
    gr, wrapped = fake_a1111
    from lib_training.webui import ui_tab

    datasets = tmp_path / "datasets"
    write_photos(datasets / "dogs" / "img" / "4_zzdog dog", names=("chelsea",), size=48)
    write_photos(datasets / "dogs" / "reg" / "1_dog", names=("coffee",), size=48)
    [(block, _, _)] = ui_tab.on_ui_tabs()
    by_elem = {getattr(b, "elem_id", None): b for b in block.blocks.values()}
    for needed in ("lora_studio_ds_choice", "lora_studio_ds_check", "lora_studio_ds_problems",
                   "lora_studio_ds_images", "lora_studio_ds_caption_text", "lora_studio_ds_save_caption",
                   "lora_studio_ds_class_generate", "lora_studio_ds_use_in_train"):
        assert needed in by_elem, needed
    assert "dogs" in by_elem["lora_studio_ds_choice"].choices
    jobs = [d for d in block.dependencies if (d.get("js") or "").startswith("lora_studio_dataset_")]
    assert len(jobs) == 3 and all(d["inputs"] and d["outputs"] for d in jobs)
    queued = {fn.__name__ for fn, _ in wrapped}  # the Dataset jobs go through wrap_gradio_gpu_call
    assert {"preprocess_job", "caption_job", "class_job"} <= queued

    use_id = by_elem["lora_studio_ds_use_in_train"]._id
    index = next(i for i, d in enumerate(block.dependencies) if use_id in d["targets"])
    out_ids = block.dependencies[index]["outputs"]
    assert by_elem["lora_studio_data_train_dir"]._id in out_ids and by_elem["lora_studio_method"]._id in out_ids
    values = block.fns[index].fn("dogs", "zzdog", "", ".txt")
    assert values[0] == str(datasets / "dogs" / "img") and values[1] == str(datasets / "dogs" / "reg")
    assert values[2] == "zzdog" and values[3] == "dogs" and values[4] == METHOD_DREAMBOOTH
    assert "1 images" in values[5] and values[6]["selected"] == "train"


def test_dataset_tab_handlers_return_one_value_per_output(fake_a1111, tmp_path):
    """gradio only notices a wrong number of return values when a user clicks: call the handlers here."""
    gr, _ = fake_a1111
    from lib_training.webui import ui_tab

    source = write_photos(tmp_path / "raw", names=("chelsea",), size=48, captions={"chelsea": "a cat"})
    [(block, _, _)] = ui_tab.on_ui_tabs()
    by_elem = {getattr(b, "elem_id", None): b for b in block.blocks.values()}

    def handler(elem_id: str, event: str = "click"):
        target = by_elem[elem_id]._id
        index = next(i for i, d in enumerate(block.dependencies)
                     if target in d["targets"] and block.fns[i].fn is not None
                     and (d["trigger"] if isinstance(d.get("trigger"), str) else event) == event)
        return block.fns[index].fn, len(block.dependencies[index]["outputs"])

    create, outputs = handler("lora_studio_ds_create_button")
    result = create("pets", str(source), [], "sks", "cat", 10)
    assert len(result) == outputs and "Created dataset 'pets'" in html.unescape(result[1])
    pick, outputs = handler("lora_studio_ds_choice", "change")
    result = pick("pets", 512)
    assert len(result) == outputs and result[1:3] == ["sks", "cat"] and len(result[3]) == 1
    assert len(pick(None, 512)) == outputs
    check, outputs = handler("lora_studio_ds_check")
    markdown, problems = check("pets", 512, "sks")
    assert outputs == 2 and "smaller than the resolution" in markdown
    assert len(problems["value"]) == 1 and problems["visible"]
    save, outputs = handler("lora_studio_ds_save_caption")
    image = str(tmp_path / "datasets" / "pets" / "img" / "10_sks cat" / "chelsea.png")
    message, _summary = save("pets", image, "sks cat, edited")
    assert outputs == 2 and "Saved chelsea.txt" in html.unescape(message)
    assert Path(image).with_suffix(".txt").read_text() == "sks cat, edited\n"
