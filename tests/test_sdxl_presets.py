"""The Train tab's presets and estimate with an SDXL model loaded (no gradio needed)."""

from __future__ import annotations

import pytest

from conftest import small_config
from lib_training.webui.train import form
from lib_training.webui.train.actions import preset_values
from lib_training.webui.train.estimate import DeviceInfo, estimate, memory_gb, seconds_per_step
from lib_training.webui.train.presets import PRESETS, SDXL_CHANGES, describe, find_preset

RTX_3060 = DeviceInfo("cuda", "NVIDIA GeForce RTX 3060", 12.0)


@pytest.mark.parametrize("key", list(PRESETS))
def test_sdxl_presets_follow_kohyas_sdxl_advice(key, photo_dataset):
    sd1, xl = find_preset(key), find_preset(key, "sdxl")
    v = xl.values
    assert sd1.family == "sd1" and xl.family == "sdxl" and xl.label == sd1.label
    assert v["data.resolution"] == 1024 and v["optimizer.unet_lr"] == 1e-4 and 16 <= v["network.rank"] <= 32
    assert not v["network.train_text_encoder"] and v["optimizer.text_encoder_lr"] == 0
    assert v["train.gradient_checkpointing"] and not v["data.shuffle_captions"]  # fixed captions: outputs cached
    assert {k: v[k] for k in v if k not in SDXL_CHANGES} == {k: sd1.values[k] for k in v if k not in SDXL_CHANGES}
    assert "1024 px (SDXL)" in describe(xl) and "(SDXL)" not in describe(sd1)
    config = form.config_from_values(form.apply_preset({**form.default_values(), "data.train_dir": str(photo_dataset)},
                                                       xl))
    config.validate()
    assert config.data.resolution == 1024 and not config.network.train_text_encoder
    assert preset_values(sd1.label, "sdxl")[1] == dict(v)


def test_sdxl_estimate_costs_more_than_sd15_and_fits_a_12gb_gpu_with_the_preset(photo_dataset):
    config = small_config(photo_dataset, photo_dataset)
    config.data.resolution, config.train.batch_size = 1024, 1
    config.train.gradient_checkpointing, config.network.train_text_encoder = True, False
    config.train.mixed_precision = "fp16"
    sd1_time, sdxl_time = seconds_per_step(config, RTX_3060)[0], seconds_per_step(config, RTX_3060, "sdxl")[0]
    sd1_mem, sdxl_mem = memory_gb(config, RTX_3060)[0], memory_gb(config, RTX_3060, "sdxl")[0]
    assert sdxl_time == pytest.approx(2.5 * sd1_time) and sdxl_mem > sd1_mem + 4
    result = estimate(config, RTX_3060, "sdxl")
    assert 8 < result.memory_gb < 12 and result.fits  # kohya trains SDXL LoRAs at 1024 px on 12 GB cards
