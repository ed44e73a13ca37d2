"""The Estimate's time model, calibrated on this machine's own earlier runs.

Every run writes `stats.json` (lib_training/train/run_stats.py): its steady seconds per step, the
seconds its sample images took, and the device it ran on. Dividing a run's s/step by the time model's
factors for that run's settings (`estimate.step_factor`) gives what one 512² image takes on this
device; the median over the latest runs replaces the table's guess (on a 2-core CPU the table said
0.31 s/step where 1.5 s/step was measured). Likewise for a sample image (one prompt, 512²).
"""

from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

from ...config import TrainConfig
from ...errors import LoraStudioError
from ...train.run_stats import device_label, read_stats
from .estimate import DeviceInfo, step_factor

MAX_RUNS = 8  # the latest runs only: the machine or the software may have changed since


@dataclass(frozen=True)
class Calibration:
    seconds_per_image_512: Optional[float]
    sample_seconds_512: Optional[float]  # one sample image (one prompt) at 512², all its sampler steps
    runs: int


def calibrated(device: DeviceInfo, run_roots: Iterable[Path], torch_device) -> DeviceInfo:
    """`device` with the timings measured by the earlier runs under `run_roots` on this same device."""
    import torch

    calibration = calibrate(run_roots, device_label(torch.device(torch_device)))
    if calibration is None:
        return device
    return dataclasses.replace(device, seconds_per_image_512=calibration.seconds_per_image_512,
                               sample_seconds_512=calibration.sample_seconds_512, measured_runs=calibration.runs)


def calibrate(run_roots: Iterable[Path], device_label: str) -> Optional[Calibration]:
    """From the latest runs on `device_label` under `run_roots`; None when there are none."""
    per_image, per_sample = [], []
    for run_dir in _latest_run_dirs(run_roots):
        stats = read_stats(run_dir)
        if not stats or stats.get("device") != device_label or not stats.get("steady_s_per_step"):
            continue
        try:
            config = TrainConfig.from_toml(run_dir / "config.toml")
        except LoraStudioError:
            continue
        pixels = (config.data.resolution / 512) ** 2
        per_image.append(stats["steady_s_per_step"] / step_factor(config, stats.get("family") or "sd1"))
        per_sample += [seconds / prompts / pixels for _, prompts, seconds in stats.get("samples", []) if prompts]
        if len(per_image) >= MAX_RUNS:
            break
    if not per_image:
        return None
    return Calibration(statistics.median(per_image), statistics.median(per_sample) if per_sample else None,
                       len(per_image))


def _latest_run_dirs(run_roots: Iterable[Path]) -> list[Path]:
    found = {}
    for root in run_roots:
        for stats in Path(root).glob("*/stats.json"):
            found[stats.parent.resolve()] = stats.stat().st_mtime
    return sorted(found, key=found.get, reverse=True)
