"""The CPU layer tuner's choices kept on disk, so a seed gives the same LoRA bit for bit in every run.

The tuner (cpu_tuning.py) picks, per layer shape, the faster of two kernels by timing them;
timing is noisy, so two runs could pick differently and their LoRAs differ in the last bits
(up to 3e-5 after a few hundred steps). With `train.deterministic` the first run's choices are
saved here and every later run on this machine (same PyTorch, CPU and thread count) reuses them.
"""

from __future__ import annotations

import ast
import hashlib
import json
from pathlib import Path

import torch

from ..cache_dir import user_cache_dir
from ..fileio import atomic_write_text

Choices = dict  # (layer kind, weight shape, stride, padding, bias, input shape, backward) -> way index


def choices_file() -> Path:
    """One file per machine setting that can change which kernel wins."""
    machine = f"{torch.__version__}|{_cpu_name()}|{torch.get_num_threads()}"
    digest = hashlib.sha256(machine.encode()).hexdigest()[:16]
    return user_cache_dir("cpu_tuning", f"choices-{digest}.json")


def load_choices(path: Path) -> Choices:
    """The saved choices; an unreadable file counts as none (it is rewritten at the end of the run)."""
    try:
        saved = json.loads(path.read_text(encoding="utf-8"))
        return {ast.literal_eval(key): int(index) for key, index in saved.items()}
    except (OSError, ValueError, SyntaxError, AttributeError):
        return {}


def save_choices(path: Path, choices: Choices) -> None:
    """Merge into what is on disk (another run may have added shapes meanwhile) and write atomically."""
    merged = {repr(k): v for k, v in load_choices(path).items()}
    merged.update({repr(k): v for k, v in choices.items()})
    atomic_write_text(path, json.dumps(merged, indent=0, sort_keys=True))


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()
