"""Against a real A1111 (set WEBUI_DIR): a comparison grid made with the WebUI's own processing.

Trains a tiny 3-epoch LoRA through /lora-studio/v1/start (save every epoch: `-000001`, `-000002`
and the final file), then POST /lora-studio/v1/compare makes a 2x2 grid, the two epoch files x
weights 0 and 1, at 64x64 with 1 step; the weight-0 column must be pixel-identical to the base
model's txt2img image with the same seed and settings, and the weight-1 cells must differ from it.
The numbers come from a tiny random CLIP saved as safetensors (Settings -> LoRA Studio -> CLIP
model); nothing is downloaded.

Skipped without WEBUI_DIR (prepare one as in README, 'Testing against a real WebUI'). Run it under
the WebUI lock, one thread:
    flock /tmp/webui.lock env OMP_NUM_THREADS=1 WEBUI_DIR=/work/webui \
        .venv-tests/a1111/bin/python -m pytest tests/test_webui_compare_live.py -s
The grid and the timings go to tests/artifacts/compare_live.png / compare_live.json.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import time
import uuid
from pathlib import Path

import numpy as np
import pytest

WEBUI_DIR = os.environ.get("WEBUI_DIR")
pytestmark = pytest.mark.skipif(
    not WEBUI_DIR, reason="needs a real A1111: set WEBUI_DIR=/path/to/stable-diffusion-webui "
                          "(prepared as in README, 'Testing against a real WebUI')")

from conftest import write_photos  # noqa: E402
from webui_server import ARTIFACTS, WebUI, running_webui  # noqa: E402

TRIGGER = "sks"
PROMPT = "a photo of sks cat"
SETTINGS = {"width": 64, "height": 64, "steps": 1, "cfg_scale": 1, "sampler": "Euler"}  # = WebUI.txt2img


def tiny_clip_folder(folder: Path) -> Path:
    """A random CLIP (transformers layout, safetensors weights, 32 px) that the WebUI loads offline."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel

    torch.manual_seed(0)
    config = CLIPConfig(
        text_config=dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=77, bos_token_id=49406,
                         eos_token_id=49407, pad_token_id=49407),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8),
        projection_dim=16)
    CLIPModel(config).save_pretrained(folder, safe_serialization=True)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def train_epochs(webui: WebUI, dataset: Path, name: str, epochs: int = 3) -> dict:
    """A tiny run that saves every epoch: <name>-000001 ... and <name>.safetensors."""
    settings = {
        "data": {"train_dir": str(dataset), "resolution": 64, "bucketing": False},
        "network": {"rank": 4, "alpha": 4},
        "optimizer": {"unet_lr": 5e-3, "text_encoder_lr": 1e-3, "scheduler": "constant"},
        "train": {"epochs": epochs, "max_steps": 0, "batch_size": 1, "save_every_epochs": 1, "seed": 3},
        "output": {"name": name, "trigger_word": TRIGGER, "overwrite": True},
    }
    webui.post("/lora-studio/v1/start", settings)
    deadline = time.time() + 900
    while time.time() < deadline:
        status = webui.get("/lora-studio/v1/status")
        if status["state"] != "running":
            assert status["state"] == "finished", (status["error"], status["messages"])
            return status
        time.sleep(0.5)
    raise TimeoutError("training did not finish")


def remove_run(webui: WebUI, name: str) -> None:
    """The run's LoRA files and cards, and its run folder (wherever the WebUI keeps runs)."""
    lora_dir = Path(WEBUI_DIR) / "models" / "Lora"
    for path in lora_dir.glob(name + "*"):
        if path.is_file():
            path.unlink()
    for run in webui.get("/lora-studio/v1/runs")["runs"]:
        if run["name"] == name and Path(run["folder"]).name == name:
            shutil.rmtree(run["folder"], ignore_errors=True)


def decode(b64: str):
    from PIL import Image

    return Image.open(io.BytesIO(base64.b64decode(b64))).convert("RGB")


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


@pytest.fixture(scope="module")
def webui(tmp_path_factory):
    clip = tiny_clip_folder(tmp_path_factory.mktemp("tiny_clip"))
    options = {"lora_studio_clip_model": str(clip), "lora_studio_compare_dir": str(tmp_path_factory.mktemp("compare"))}
    with running_webui("webui_compare_live.log", options) as server:
        yield server


@pytest.fixture(scope="module")
def run_name(webui, tmp_path_factory):
    dataset = tmp_path_factory.mktemp("compare_dataset")
    write_photos(dataset / f"1_{TRIGGER} cat", names=("chelsea", "astronaut"), size=80,
                 captions={"chelsea": f"{TRIGGER} cat, sitting", "astronaut": f"{TRIGGER} cat, in a suit"})
    name = "ls_cmp_" + uuid.uuid4().hex[:8]
    try:
        status = train_epochs(webui, dataset, name)
        assert [Path(f).name for f in status["files"]] == [f"{name}-000001.safetensors", f"{name}-000002.safetensors",
                                                           f"{name}.safetensors"]
        yield name
    finally:
        remove_run(webui, name)


def test_grid_of_two_epochs_by_weights_0_and_1(webui, run_name):
    body = {"files": [f"{run_name}-000001.safetensors", f"{run_name}-000002.safetensors"], "weights": [0, 1],
            "prompts": [PROMPT], "seeds": [1], "trigger_words": [TRIGGER], "class_prompt": "", **SETTINGS}
    started = time.time()
    result = webui.post("/lora-studio/v1/compare", body)
    seconds = time.time() - started
    assert result["complete"], result["error"]
    cells = {(c["row"], c["column"]): c for c in result["cells"]}
    assert sorted(cells) == [(0, 0), (0, 1), (1, 0), (1, 1)]  # rows: epoch files; columns: weights 0, 1
    assert [cells[(r, 1)]["prompt"] for r in (0, 1)] == [f"{PROMPT}, <lora:{run_name}-00000{e}:1>" for e in (1, 2)]
    assert cells[(0, 0)]["prompt"] == cells[(1, 0)]["prompt"] == PROMPT
    assert result["generated"] == 3  # the base image once, shared by both rows

    base = webui.txt2img(PROMPT, seed=1)  # txt2img through A1111's API, same seed and settings
    for row in (0, 1):
        assert np.array_equal(pixels(decode(cells[(row, 0)]["image"])), pixels(base)), \
            "weight 0 must be the base model's txt2img image, pixel for pixel"
        assert np.abs(pixels(decode(cells[(row, 1)]["image"])) - pixels(base)).max() > 0, "the LoRA changes nothing"
    with_lora = webui.txt2img(cells[(1, 1)]["prompt"], seed=1)  # "a photo of sks cat, <lora:...-000002:1>"
    assert np.array_equal(pixels(decode(cells[(1, 1)]["image"])), pixels(with_lora)), \
        "a weight-1 cell must be txt2img's image with <lora:name:1>"

    # numbers and a recommendation from the CLIP model in Settings
    rec = result["recommendation"]
    assert rec, result["recommendation_text"]
    assert rec["file"] in (f"{run_name}-000001", f"{run_name}-000002") and rec["weight"] == 1
    assert "fidelity" in rec["reason"] and result["recommendation_text"].startswith("### ")
    assert len(result["table"]["rows"]) == 3  # base + 2 files at weight 1

    grid = decode(result["grid"])
    grid.save(ARTIFACTS / "compare_live.png")
    again = webui.post("/lora-studio/v1/compare", body)
    assert again["generated"] == 0 and again["from_cache"] == 3
    measured = {"grid_seconds": round(seconds, 1), "images_generated": result["generated"],
                "cached_again_seconds": again["seconds"], "grid_size": list(grid.size),
                "recommendation": rec["reason"]}
    (ARTIFACTS / "compare_live.json").write_text(json.dumps(measured, indent=2))
    print("\ncompare live:", json.dumps(measured))


def test_a_run_with_defaults_and_bad_requests(webui, run_name):
    import urllib.error

    result = webui.post("/lora-studio/v1/compare", {"run": run_name, "weights": [1], "seeds": [1], **SETTINGS,
                                                     "images": False})
    assert result["complete"], result["error"]
    files = sorted({c["lora_name"] for c in result["cells"]})
    assert files == [run_name, f"{run_name}-000001", f"{run_name}-000002"]
    # prompts from the run's trigger word and class: the subject and, for drift, the class alone
    assert {c["prompt"].split(", <lora:")[0] for c in result["cells"]} == {"a photo of sks cat", "a photo of a cat"}
    assert result["recommendation"]["numbers"]["drift"] is not None
    assert "image" not in result["cells"][0] and result["grid"] is None
    with pytest.raises(urllib.error.HTTPError) as bad:
        webui.post("/lora-studio/v1/compare", {"run": run_name, "seeds": [-1]})
    assert bad.value.code == 400
    with pytest.raises(urllib.error.HTTPError) as refused:
        webui.post("/lora-studio/v1/compare", {"run": run_name}, auth=False)
    assert refused.value.code == 401


def test_interrupt_keeps_the_images_made_and_the_next_call_continues(webui, run_name):
    import threading

    body = {"files": [f"{run_name}-000001.safetensors", f"{run_name}-000002.safetensors"], "weights": [1],
            "prompts": ["a photo of sks cat, outdoors"], "seeds": [3, 4, 5], "class_prompt": "", "images": False,
            **SETTINGS}
    answer: dict = {}
    thread = threading.Thread(target=lambda: answer.update(webui.post("/lora-studio/v1/compare", body)))
    thread.start()
    deadline = time.time() + 300
    while time.time() < deadline:  # A1111's progress: job_no counts the images made
        progress = webui.get("/sdapi/v1/progress?skip_current_image=true")
        if progress["state"]["job"] == "lora_studio_compare" and progress["state"]["job_no"] >= 1:
            break
        time.sleep(0.3)
    webui.post("/sdapi/v1/interrupt")
    thread.join(300)
    assert answer["complete"] is False and answer["error"] == "Stopped.", answer["status"]
    made = sum(1 for c in answer["cells"] if c["done"])
    assert 1 <= made < 6 and answer["recommendation"] is None
    finished = webui.post("/lora-studio/v1/compare", body)
    assert finished["complete"] and finished["from_cache"] == made and finished["generated"] == 6 - made
