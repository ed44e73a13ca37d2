"""What a run measured — step times and peak memory — kept beside its log as `stats.json`.

The Estimate calibrates its time model on this machine's own earlier runs from these files (a
table of community timings is wrong by 5x on an unknown machine), and bench/gpu_check.py reads its
numbers from them, so the benchmark measures exactly what a user's run does.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from ..fileio import atomic_write_text

STATS_FILE = "stats.json"
GB = 1024 ** 3


def device_label(device: torch.device) -> str:
    """'cuda:NVIDIA H200' or 'cpu': what makes timings of two runs comparable."""
    if device.type == "cuda" and torch.cuda.is_available():
        return f"cuda:{torch.cuda.get_device_name(device)}"
    return device.type


@dataclass
class RunStats:
    device: str
    images_per_step: int  # batch × accumulation (× 2 with class images)
    precision: str
    family: str = ""
    setup_s: float = 0.0  # train() called -> first step starts (latent caching, ...)
    marks: list = field(default_factory=list)  # [step, training seconds since the first step started]
    samples: list = field(default_factory=list)  # [step, prompts, seconds] of each sample request

    @classmethod
    def begin(cls, device: torch.device, images_per_step: int, precision: str, family: str = "") -> "RunStats":
        if device.type == "cuda" and torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats(device)
        stats = cls(device_label(device), images_per_step, precision, family)
        stats._device, stats._created = device, time.monotonic()
        return stats

    def loop_started(self) -> None:
        self.setup_s = time.monotonic() - self._created

    def mark(self, step: int, elapsed: float) -> None:
        """`elapsed` since the first step started, samples included; they are taken out here."""
        sampling = sum(seconds for _, _, seconds in self.samples)
        self.marks.append([step, round(elapsed - sampling, 4)])

    def sampled(self, step: int, prompts: int, seconds: float) -> None:
        self.samples.append([step, prompts, round(seconds, 3)])

    def summary(self) -> dict:
        """first_step_s, steady_s_per_step (after the first step), images_per_s and the peaks."""
        out = asdict(self)
        out.pop("marks"), out.pop("samples")
        first = self.marks[0] if self.marks else None
        out["steps"] = self.marks[-1][0] if self.marks else 0
        out["first_step_s"] = first[1] / first[0] if first else None
        steady = None
        if len(self.marks) > 1 and self.marks[-1][0] > first[0]:
            steady = (self.marks[-1][1] - first[1]) / (self.marks[-1][0] - first[0])
        elif first:
            steady = first[1] / first[0]
        out["steady_s_per_step"] = steady
        out["images_per_s"] = self.images_per_step / steady if steady else None
        out.update(_peaks(self._device))
        out["marks"], out["samples"] = self.marks, self.samples
        return out

    def write(self, run_dir: Path) -> Path:
        path = Path(run_dir) / STATS_FILE
        atomic_write_text(path, json.dumps(self.summary(), indent=1))
        return path


def _peaks(device: torch.device) -> dict:
    peaks = {"peak_allocated_gb": None, "peak_reserved_gb": None}
    if device.type == "cuda" and torch.cuda.is_available():
        peaks["peak_allocated_gb"] = round(torch.cuda.max_memory_allocated(device) / GB, 3)
        peaks["peak_reserved_gb"] = round(torch.cuda.max_memory_reserved(device) / GB, 3)
    try:
        import resource  # not on Windows
    except ImportError:
        return peaks
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # the process's lifetime peak
    peaks["peak_host_rss_gb"] = round(rss / (GB if sys.platform == "darwin" else 1024 ** 2), 3)
    return peaks


def read_stats(run_dir: Path) -> dict | None:
    try:
        return json.loads((Path(run_dir) / STATS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
