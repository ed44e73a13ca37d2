"""Against a real A1111 (set WEBUI_DIR): train in the WebUI process on the loaded model.

Skipped without WEBUI_DIR. How to prepare one: README, "Testing against a real WebUI".
Runs at 64x64 on the CPU with a random-weight SD1.5 checkpoint; takes a few minutes.
Measurements (time to first step, extra memory) go to tests/artifacts/webui_live.json.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest

WEBUI_DIR = os.environ.get("WEBUI_DIR")
pytestmark = pytest.mark.skipif(
    not WEBUI_DIR, reason="needs a real A1111: set WEBUI_DIR=/path/to/stable-diffusion-webui "
                          "(prepared as in README, 'Testing against a real WebUI')")

from conftest import write_photos  # noqa: E402
from webui_server import ARTIFACTS, WebUI, running_webui  # noqa: E402

SD15_MODULES = 264  # 192 UNet + 72 text-encoder modules of kohya's networks.lora


@pytest.fixture(scope="module")
def webui():
    with running_webui("webui_live.log") as server:
        yield server


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("live_dataset")
    write_photos(root / "1_sks cat", names=("chelsea", "astronaut"), size=80,
                 captions={"chelsea": "sks cat, sitting", "astronaut": "sks cat, in a suit"})
    return root


def run_settings(dataset: Path, name: str, steps: int) -> dict:
    return {
        "data": {"train_dir": str(dataset), "resolution": 64, "bucketing": False},
        "network": {"rank": 4, "alpha": 4},
        "optimizer": {"unet_lr": 5e-3, "text_encoder_lr": 1e-3, "scheduler": "constant"},
        "train": {"max_steps": steps, "batch_size": 1, "save_every_epochs": 0, "seed": 3},
        "output": {"name": name, "trigger_word": "sks", "overwrite": True},
    }


def wait_for_run(webui: WebUI, timeout: float = 900, on_poll=None) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = webui.get("/lora-studio/v1/status")
        if on_poll:
            on_poll(status)
        if status["state"] != "running":
            return status
        time.sleep(0.5)
    raise TimeoutError("training did not finish")


def pixels(image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


def test_api_follows_api_auth(webui):
    import urllib.error

    with pytest.raises(urllib.error.HTTPError) as refused:
        webui.get("/lora-studio/v1/status", auth=False)
    assert refused.value.code == 401
    assert webui.get("/lora-studio/v1/status")["state"] in ("idle", "finished", "failed", "cancelled")


def test_train_in_the_webui_then_generate_with_it(webui, dataset):
    base = webui.txt2img("a photo of a cat", seed=1)
    rss_before = webui.rss_bytes()
    peak = {"rss": rss_before}
    started = webui.post("/lora-studio/v1/start", run_settings(dataset, "ls_live_a", steps=3))
    assert started["status"]["state"] == "running"

    # A Generate sent while training runs waits for the queue: it ends only after training.
    while webui.get("/lora-studio/v1/status")["total_steps"] == 0:
        time.sleep(0.2)
    queued: dict = {}

    def generate_during_training():
        queued["image"] = webui.txt2img("a photo of a cat", seed=1)
        queued["state_when_done"] = webui.get("/lora-studio/v1/status")["state"]

    thread = threading.Thread(target=generate_during_training)
    thread.start()
    status = wait_for_run(webui, on_poll=lambda s: peak.update(rss=max(peak["rss"], webui.rss_bytes())))
    thread.join(600)
    assert status["state"] == "finished", (status["error"], status["messages"], status["losses"])
    assert queued["state_when_done"] == "finished"
    assert np.array_equal(pixels(queued["image"]), pixels(base)), "the queued txt2img saw a changed model"

    lora_dir = Path(WEBUI_DIR) / "models" / "Lora"
    assert (lora_dir / "ls_live_a.safetensors").is_file()
    card = json.loads((lora_dir / "ls_live_a.json").read_text())
    assert card["activation text"] == "sks"
    assert (lora_dir / "ls_live_a.preview.png").is_file()

    report = webui.get("/lora-studio/v1/lora-check/ls_live_a")
    assert report["file_modules"] == SD15_MODULES and report["matched_modules"] == SD15_MODULES, report

    with_lora = webui.txt2img("a photo of a cat <lora:ls_live_a:1>", seed=1)
    at_zero = webui.txt2img("a photo of a cat <lora:ls_live_a:0>", seed=1)
    assert np.abs(pixels(with_lora) - pixels(base)).max() > 0, "the LoRA does not change the image"
    assert np.array_equal(pixels(at_zero), pixels(base)), "weight 0 must give the base image"

    measured = {"first_step_s": status["first_step_s"], "steps": status["step"],
                "seconds": status["elapsed_s"], "rss_before_gb": rss_before / 2**30,
                "peak_extra_rss_gb": (peak["rss"] - rss_before) / 2**30}
    (ARTIFACTS / "webui_live.json").write_text(json.dumps(measured, indent=2))
    print("\nWebUI live run:", json.dumps(measured))


def test_training_after_a_lora_generation_leaves_the_base_model_exact(webui, dataset):
    base = webui.txt2img("a photo of a cat", seed=5)
    webui.txt2img("a photo of a cat <lora:ls_live_a:1>", seed=5)  # leaves that LoRA merged in the weights
    webui.post("/lora-studio/v1/start", run_settings(dataset, "ls_live_b", steps=2))
    status = wait_for_run(webui)
    assert status["state"] == "finished", (status["error"], status["messages"], status["losses"])
    after = webui.txt2img("a photo of a cat", seed=5)
    assert np.array_equal(pixels(after), pixels(base)), "the base model changed"
    assert webui.get("/lora-studio/v1/lora-check/ls_live_b")["matched_modules"] == SD15_MODULES


def test_cancel_keeps_a_resumable_state_and_resume_finishes(webui, dataset):
    webui.post("/lora-studio/v1/start", run_settings(dataset, "ls_live_c", steps=6))
    while webui.get("/lora-studio/v1/status")["step"] < 1:
        time.sleep(0.2)
    assert webui.post("/lora-studio/v1/cancel")["cancelled"] is True
    status = wait_for_run(webui)
    assert status["state"] == "cancelled" and status["step"] < 6
    runs = webui.get("/lora-studio/v1/runs")["runs"]
    assert any(r["name"] == "ls_live_c" for r in runs)
    webui.post("/lora-studio/v1/start", {**run_settings(dataset, "ls_live_c", steps=6), "resume": True})
    status = wait_for_run(webui)
    assert status["state"] == "finished" and status["step"] == 6, status


def test_switching_checkpoint_during_training_cancels_it_cleanly(webui, dataset):
    models_dir = Path(WEBUI_DIR) / "models" / "Stable-diffusion"
    current = webui.get("/sdapi/v1/options")["sd_model_checkpoint"]
    twin = models_dir / "lora-studio-test-twin.safetensors"  # the same weights under another name
    if not twin.exists():
        twin.symlink_to(next(p for p in models_dir.glob("*.safetensors") if p.name != twin.name))
    webui.post("/sdapi/v1/refresh-checkpoints")
    other = next(m["title"] for m in webui.get("/sdapi/v1/sd-models") if m["filename"].endswith(twin.name))
    webui.post("/lora-studio/v1/start", run_settings(dataset, "ls_live_d", steps=30))
    while webui.get("/lora-studio/v1/status")["step"] < 1:
        time.sleep(0.2)
    # The options call itself waits for the queue (A1111 reloads the model inside it).
    switch = threading.Thread(target=lambda: webui.post("/sdapi/v1/options", {"sd_model_checkpoint": other}))
    switch.start()
    status = wait_for_run(webui)
    switch.join(600)
    try:
        assert status["state"] == "cancelled", status["error"]
        assert "checkpoint" in status["error"] and status["step"] < 30
        # The switch then happened (A1111 normalises the title to "<file> [<hash>]").
        assert twin.name in webui.get("/sdapi/v1/options")["sd_model_checkpoint"]
    finally:
        webui.post("/sdapi/v1/options", {"sd_model_checkpoint": current})
        twin.unlink()
