"""The Train tab's presets: the engine's table (`lib_training/train/presets.py`) with a one-line
description of each, its expected steps, time and memory from the tab's estimate."""

from __future__ import annotations

from ...train.presets import (  # noqa: F401 - the tab, its settings and the tests use these names from here
    DEFAULT_PRESET, PRESET_BATCH, PRESET_EPOCHS, PRESETS, SDXL_CHANGES, TARGET_SAMPLES_PER_EPOCH, Preset, find_preset,
    preset_choices, suggested_repeats)


def describe(preset: Preset) -> str:
    """One line: what it is for, its main values, and expected steps, time and memory with their basis."""
    from .estimate import REFERENCE_GPU, format_duration, reference_cost

    low, high = TARGET_SAMPLES_PER_EPOCH
    per_epoch = (low + high) // 2
    steps = per_epoch // PRESET_BATCH * PRESET_EPOCHS
    seconds_per_step, memory = reference_cost(preset.values, preset.family)
    v = preset.values
    te = "text encoder off" if not v["network.train_text_encoder"] else f"TE lr {v['optimizer.text_encoder_lr']:g}"
    conv = f", conv {v['network.conv_rank']}" if v["network.conv_rank"] else ""
    return (f"{preset.label}: {preset.summary}. Rank {v['network.rank']}/alpha {v['network.alpha']:g}{conv}, UNet lr "
            f"{v['optimizer.unet_lr']:g}, {te}, {v['optimizer.scheduler']}"
            + (f", {v['data.resolution']} px (SDXL)" if preset.family == "sdxl" else "")
            + f". ≈{steps} steps ({per_epoch} images × "
            f"repeats per epoch, batch {PRESET_BATCH}, {PRESET_EPOCHS} epochs, a file every epoch), "
            f"≈{format_duration(steps * seconds_per_step)} and ≈{memory:.0f} GB on a {REFERENCE_GPU} "
            "(the estimate's model; press Estimate for your dataset and GPU).")
