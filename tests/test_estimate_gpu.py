"""The Estimate for a GPU user: does it fit this card, what to change when not, and a time that is
calibrated on this machine's own earlier runs (with the sample images counted)."""

from __future__ import annotations

import json
import re
import time

import pytest

from conftest import small_config
from lib_training.train import events as ev
from lib_training.train.loop import train
from lib_training.train.run_stats import STATS_FILE, read_stats
from lib_training.webui.train.calibration import calibrate, calibrated
from lib_training.webui.train.estimate import (DeviceInfo, device_info_from_torch, estimate, fit_advice, memory_gb,
                                               step_factor)

CARD_8GB = DeviceInfo("cuda", "NVIDIA GeForce RTX 3070", 8.0)


def big_config(photo_dataset, **changes):
    config = small_config(photo_dataset, photo_dataset)
    config.data.resolution, config.train.batch_size, config.network.rank = 1024, 4, 32
    for key, value in changes.items():
        section, name = key.split("__")
        setattr(getattr(config, section), name, value)
    return config


def test_settings_that_do_not_fit_get_the_fewest_changes_that_do(photo_dataset):
    config = big_config(photo_dataset)
    assert memory_gb(config, CARD_8GB)[0] > 8
    advice = fit_advice(config, CARD_8GB)
    assert advice.startswith("To fit: turn on gradient checkpointing")
    needs = [float(x) for x in re.findall(r"≈ ([\d.]+) GB", advice)]
    assert needs == sorted(needs, reverse=True) and needs[-1] <= 8 * 0.95 < needs[-2]
    text = estimate(config, CARD_8GB).markdown()
    assert "May not fit in 8 GB. To fit:" in text and "batch size 1 with gradient accumulation 4" in text


def test_settings_that_fit_say_so_and_fp8_weights_halve_the_weights(photo_dataset):
    config = big_config(photo_dataset, data__resolution=512, train__batch_size=1,
                        train__gradient_checkpointing=True)
    result = estimate(config, CARD_8GB)
    assert result.fits and "— fits" in result.markdown()
    fp8 = DeviceInfo("cuda", "RTX 3070", 8.0, fp8_weights=True)
    half, quarter = memory_gb(config, CARD_8GB), memory_gb(config, fp8)
    assert half[0] - quarter[0] == pytest.approx((1.07e9 - 0.084e9) / 2**30)  # 1 byte less a weight, but the VAE's


def test_nothing_fits_on_a_tiny_card_and_it_says_so(photo_dataset):
    advice = fit_advice(big_config(photo_dataset), DeviceInfo("cuda", "tiny", 1.0))
    assert advice.startswith("Even with turn on gradient checkpointing") and "more memory" in advice


def write_run(root, name, config, device, steady, samples=()):
    run = root / name
    run.mkdir(parents=True)
    (run / "config.toml").write_text(config.to_toml(), encoding="utf-8")
    (run / STATS_FILE).write_text(json.dumps({"device": device, "steady_s_per_step": steady, "family": "sd1",
                                              "samples": list(samples)}), encoding="utf-8")


def test_time_is_calibrated_on_this_machines_earlier_runs(photo_dataset, tmp_path):
    config = small_config(photo_dataset, tmp_path)
    config.data.resolution = 128
    write_run(tmp_path / "runs", "a", config, "cpu", 1.5, samples=[[10, 2, 6.0]])
    write_run(tmp_path / "runs", "other_gpu", config, "cuda:Other", 0.01)
    calibration = calibrate([tmp_path / "runs"], "cpu")
    assert calibration.runs == 1
    assert calibration.seconds_per_image_512 == pytest.approx(1.5 / step_factor(config, "sd1", "cpu"))
    device = DeviceInfo("cpu", "CPU", None, calibration.seconds_per_image_512,
                        sample_seconds_512=calibration.sample_seconds_512, measured_runs=calibration.runs)
    config.train.max_steps = 10
    result = estimate(config, device, final_sample=True)
    assert result.seconds_per_step == pytest.approx(1.5)  # what this machine measured, not the table's 0.31
    assert result.total_seconds == pytest.approx(10 * 1.5 + 3.0)  # + the preview: one prompt, 3 s measured
    assert "median of 1 earlier run" in result.time_basis and "1 sample image" in result.time_basis
    assert estimate(config, device).total_seconds == pytest.approx(15.0)  # the CLI draws no preview
    assert calibrate([tmp_path / "runs"], "cuda:Missing") is None


def test_a_run_records_its_steps_without_the_samples_and_the_estimate_matches_it(sd1_model, photo_dataset, tmp_path):
    config = small_config(photo_dataset, tmp_path / "out", train__max_steps=5, train__sample_every_steps=2,
                          train__sample_prompts=["sks cat"])

    def slow_samples(event):
        if isinstance(event, ev.SampleRequest):
            time.sleep(1.0)

    result = train(config, sd1_model, on_event=slow_samples)
    run_dir = tmp_path / "out" / "lora_studio_runs" / "test_lora"
    stats = read_stats(run_dir)
    assert [s[0] for s in stats["samples"]] == [2, 4, 5] and all(s[2] >= 1.0 for s in stats["samples"])
    assert [m[0] for m in stats["marks"]] == [1, 2, 3, 4, 5]
    samples = sum(s[2] for s in stats["samples"])
    # The step times leave the samples out: steps + samples = the whole loop (+ saving the file).
    assert stats["marks"][-1][1] + samples == pytest.approx(result.seconds, abs=0.5)
    steady = stats["steady_s_per_step"]
    device = calibrated(device_info_from_torch(sd1_model.device), [run_dir.parent], sd1_model.device)
    assert device.measured_runs == 1
    predicted = estimate(config, device)
    assert predicted.seconds_per_step == pytest.approx(steady)
    assert predicted.total_seconds == pytest.approx(5 * steady + samples, rel=0.05)


# ---- text-encoder outputs cached when the text encoder is not trained -------------------------------

@pytest.mark.parametrize("unet_only, shuffle, expected_max", [(True, False, 2), (False, False, 6), (True, True, 6)])
def test_text_encoder_outputs_are_computed_once_per_caption_when_it_is_not_trained(
        sd1_model, photo_dataset, tmp_path, monkeypatch, unet_only, shuffle, expected_max):
    encoded: list[str] = []
    original = sd1_model.encode_prompts

    def counting(prompts):
        encoded.extend(prompts)
        return original(prompts)

    monkeypatch.setattr(sd1_model, "encode_prompts", counting)
    config = small_config(photo_dataset, tmp_path / "out", train__max_steps=6, network__train_text_encoder=not unet_only,
                          data__shuffle_captions=shuffle)
    train(config, sd1_model)
    # Two captions in the dataset: a UNet-only run with fixed captions encodes each once (saving the text
    # encoder's forward on every step); training it, or shuffling captions, encodes every step.
    assert len(encoded) == expected_max
