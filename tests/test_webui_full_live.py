"""Against a real A1111 (set WEBUI_DIR): a full fine-tune (DreamBooth) in the WebUI process.

A few steps on the loaded random-weight SD1.5 on the CPU: the new checkpoint lands in
models/Stable-diffusion and in A1111's checkpoint list at once, switching to it changes the image,
switching back gives the original image pixel for pixel, and the extracted LoRA loads in A1111's
Lora loader. Skipped without WEBUI_DIR (README, "Testing against a real WebUI"). The full state of
SD1.5's UNet in fp32 (weights + originals + gradients + AdamW) needs about 16 GB of RAM.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

WEBUI_DIR = os.environ.get("WEBUI_DIR")
pytestmark = pytest.mark.skipif(
    not WEBUI_DIR, reason="needs a real A1111: set WEBUI_DIR=/path/to/stable-diffusion-webui "
                          "(prepared as in README, 'Testing against a real WebUI')")

from test_webui_live import ARTIFACTS, dataset, pixels, wait_for_run, webui  # noqa: E402,F401

NAME = "ls_live_full"


def full_settings(dataset: Path, steps: int) -> dict:
    return {
        "method": "full",
        "data": {"train_dir": str(dataset), "resolution": 64, "bucketing": False},
        "network": {"train_text_encoder": False},
        "optimizer": {"optimizer": "lion", "unet_lr": 1e-5, "text_encoder_lr": 0.0, "scheduler": "constant"},
        "train": {"max_steps": steps, "batch_size": 1, "save_every_epochs": 1, "seed": 3},
        "output": {"name": NAME, "trigger_word": "sks", "overwrite": True, "extract_lora_rank": 4},
    }


def test_full_finetune_writes_a_checkpoint_that_a1111_lists_switches_to_and_back(webui, dataset):
    models_dir = Path(WEBUI_DIR) / "models"
    original = webui.get("/sdapi/v1/options")["sd_model_checkpoint"]
    base = webui.txt2img("a photo of sks cat", seed=7)
    started = webui.post("/lora-studio/v1/start", full_settings(dataset, steps=3))
    assert started["status"]["state"] == "running"
    status = wait_for_run(webui)
    assert status["state"] == "finished", (status["error"], status["messages"])

    # The loaded model is as before (restored bit for bit): the same image.
    assert np.array_equal(pixels(webui.txt2img("a photo of sks cat", seed=7)), pixels(base))

    checkpoint = models_dir / "Stable-diffusion" / f"{NAME}.safetensors"
    assert checkpoint.is_file() and (models_dir / "Stable-diffusion" / f"{NAME}-000001.safetensors").is_file()
    assert (models_dir / "Lora" / f"{NAME}.safetensors").is_file()
    # In the checkpoint list without a refresh call: the run refreshed it.
    titles = [m["title"] for m in webui.get("/sdapi/v1/sd-models") if m["filename"].endswith(checkpoint.name)]
    assert titles, "the new checkpoint is not in A1111's list"
    report = webui.get(f"/lora-studio/v1/lora-check/{NAME}")
    assert report["matched_modules"] == report["file_modules"] > 0, report

    try:
        webui.post("/sdapi/v1/options", {"sd_model_checkpoint": titles[0]})
        tuned = webui.txt2img("a photo of sks cat", seed=7)
        assert np.abs(pixels(tuned) - pixels(base)).max() > 0, "the fine-tuned checkpoint gives the same image"
    finally:
        webui.post("/sdapi/v1/options", {"sd_model_checkpoint": original})
    assert np.array_equal(pixels(webui.txt2img("a photo of sks cat", seed=7)), pixels(base))


@pytest.fixture(autouse=True)
def _remove_outputs():
    """The run's checkpoints would otherwise sort before random-sd15 and be the next boot's --ckpt."""
    yield
    for folder in ("Stable-diffusion", "Lora"):
        for path in (Path(WEBUI_DIR) / "models" / folder).glob(NAME + "*"):
            path.unlink()
