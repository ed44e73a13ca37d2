"""Against a real A1111 (set WEBUI_DIR) with an SDXL checkpoint loaded: train in the WebUI process.

A random-weight SDXL base (the real architecture) on the CPU at 64x64: a few UNet-LoRA steps on A1111's
`sgm` DiffusionEngine, then A1111's own Lora loader matches every module of the file, `<lora:x:0>`
gives the base image pixel for pixel and `<lora:x:1>` another one, the base txt2img is the same
before and after, and the Lora tab lists the card with the SDXL model loaded (A1111 hides LoRAs whose
metadata is not SDXL's). Then A1111 again with --medvram-sdxl: the run works there too.

Skipped without WEBUI_DIR (README, "Testing against a real WebUI") or without an SDXL checkpoint:
WEBUI_SDXL_CKPT, else models/Stable-diffusion/*sdxl*.safetensors. Make one (6.9 GB, ~8 GB of RAM):
    python tools/random_checkpoint.py --family sdxl --out $WEBUI_DIR/models/Stable-diffusion/random-sdxl.safetensors
A1111 holds it in fp32 (--no-half): about 15 GB of RAM while the test runs (A1111's Lora in its
"functional" mode, see `boot`), and each boot takes minutes; run nothing else heavy beside it.
Numbers go to tests/artifacts/webui_sdxl_live.json.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

WEBUI_DIR = os.environ.get("WEBUI_DIR")
pytestmark = pytest.mark.skipif(
    not WEBUI_DIR, reason="needs a real A1111: set WEBUI_DIR=/path/to/stable-diffusion-webui "
                          "(prepared as in README, 'Testing against a real WebUI')")

from test_webui_live import ARTIFACTS, dataset, pixels, wait_for_run  # noqa: E402,F401
from webui_server import WebUI, link_extension  # noqa: E402

SDXL_UNET_MODULES = 722  # kohya's default UNet targets on SDXL base (tests/test_sdxl.py pins the names)
PROMPT = "a photo of a cat"


def sdxl_checkpoint() -> Path | None:
    named = os.environ.get("WEBUI_SDXL_CKPT")
    if named:
        return Path(named)
    found = sorted((Path(WEBUI_DIR) / "models" / "Stable-diffusion").glob("*sdxl*.safetensors"))
    return found[0] if found else None


def boot(name: str, *extra_args: str):
    checkpoint = sdxl_checkpoint()
    if checkpoint is None or not checkpoint.is_file():
        pytest.skip("no SDXL checkpoint: set WEBUI_SDXL_CKPT or make one with `python tools/random_checkpoint.py "
                    "--family sdxl --out $WEBUI_DIR/models/Stable-diffusion/random-sdxl.safetensors`")
    root = Path(WEBUI_DIR)
    link_extension(root)
    ARTIFACTS.mkdir(exist_ok=True)
    server = WebUI(root, ARTIFACTS / f"{name}.log", extra_args=extra_args, checkpoint=checkpoint)
    server.wait_ready(timeout=1200)
    # Live previews ("Approx NN") would download vaeapprox-sdxl.pt at the first SDXL image (A1111 ships
    # only SD1's); nothing can be downloaded here, and previews do not change the images.
    # lora_functional: A1111 applies the LoRA in forward instead of merging it into the weights; merging
    # first copies every targeted weight (~6 GB in fp32 for an SDXL UNet LoRA), which with the 14 GB fp32
    # model does not fit a 24 GB machine. The merge path is tested live on SD1.5 (test_webui_live).
    server.post("/sdapi/v1/options", {"lora_studio_sample_steps": 1, "live_previews_enable": False,
                                      "lora_functional": True})
    return server


@pytest.fixture(scope="module")
def webui():
    server = boot("webui_sdxl_live")
    try:
        yield server
    finally:
        server.stop()


def sdxl_settings(dataset: Path, name: str, steps: int) -> dict:
    return {
        "data": {"train_dir": str(dataset), "resolution": 64, "bucketing": False},
        "network": {"rank": 4, "alpha": 4, "train_text_encoder": False},
        "optimizer": {"unet_lr": 5e-3, "text_encoder_lr": 0.0, "scheduler": "constant"},
        "train": {"max_steps": steps, "batch_size": 1, "save_every_epochs": 0, "seed": 3,
                  "gradient_checkpointing": True},
        "output": {"name": name, "trigger_word": "sks", "overwrite": True},
    }


def remove_lora(name: str) -> None:
    for path in (Path(WEBUI_DIR) / "models" / "Lora").glob(name + ".*"):
        path.unlink()


def test_sdxl_lora_trains_in_the_webui_and_a1111_loads_it(webui, dataset):
    name = "ls_live_sdxl"
    assert webui.get("/sdapi/v1/options")["sd_model_checkpoint"].startswith(sdxl_checkpoint().stem)
    base = webui.txt2img(PROMPT, seed=1)
    rss_before = webui.rss_bytes()
    webui.post("/lora-studio/v1/start", sdxl_settings(dataset, name, steps=3))
    status = wait_for_run(webui, timeout=1800)
    try:
        assert status["state"] == "finished", (status["error"], status["messages"], status["losses"])
        assert np.isfinite(np.asarray(status["losses"], dtype=float)).all(), status["losses"]
        after = webui.txt2img(PROMPT, seed=1)
        assert np.array_equal(pixels(after), pixels(base)), "the loaded SDXL model changed"

        report = webui.get(f"/lora-studio/v1/lora-check/{name}")
        assert report["file_modules"] == report["matched_modules"] == SDXL_UNET_MODULES, report
        assert report["sd_version"] == "SDXL" and report["listed"] is True, report

        at_zero = webui.txt2img(f"{PROMPT} <lora:{name}:0>", seed=1)
        with_lora = webui.txt2img(f"{PROMPT} <lora:{name}:1>", seed=1)
        assert np.array_equal(pixels(at_zero), pixels(base)), "weight 0 must give the base image"
        assert np.abs(pixels(with_lora) - pixels(base)).max() > 0, "the LoRA does not change the image"
        assert np.array_equal(pixels(webui.txt2img(PROMPT, seed=1)), pixels(base)), "the LoRA stayed merged"
    finally:
        remove_lora(name)
    measured = {"first_step_s": status["first_step_s"], "steps": status["step"], "seconds": status["elapsed_s"],
                "rss_before_gb": round(rss_before / 2**30, 2), "rss_after_gb": round(webui.rss_bytes() / 2**30, 2)}
    (ARTIFACTS / "webui_sdxl_live.json").write_text(json.dumps(measured, indent=2))
    print("\nSDXL WebUI live run:", json.dumps(measured))


def test_sdxl_under_medvram_sdxl_trains_and_leaves_the_model_exact(webui, dataset):
    """--medvram-sdxl moves the SDXL model's parts between devices around each use (A1111's lowvram
    hooks); a run must work under it or be refused before any step. The first server is stopped first:
    two SDXL models in fp32 do not fit in RAM together."""
    webui.stop()
    server = boot("webui_sdxl_medvram", "--medvram-sdxl")
    name = "ls_live_sdxl_medvram"
    try:
        base = server.txt2img(PROMPT, seed=2)
        server.post("/lora-studio/v1/start", sdxl_settings(dataset, name, steps=2))
        status = wait_for_run(server, timeout=1800)
        assert status["state"] == "finished", (status["error"], status["messages"])
        assert np.array_equal(pixels(server.txt2img(PROMPT, seed=2)), pixels(base)), "the loaded model changed"
        with_lora = server.txt2img(f"{PROMPT} <lora:{name}:1>", seed=2)
        assert np.abs(pixels(with_lora) - pixels(base)).max() > 0, "the LoRA does not change the image"
    finally:
        server.stop()
        remove_lora(name)
