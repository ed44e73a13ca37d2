"""Learning-rate schedules with linear warmup, as multipliers of the base rate."""

from __future__ import annotations

import math
from functools import partial

import torch

from ..config import OptimizerSettings


def lr_factor(step: int, total: int, warmup: int, kind: str, restarts: int = 1) -> float:
    """Multiplier for the optimizer step `step` (0-based) of `total`."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    progress = min(max(progress, 0.0), 1.0)
    if kind in ("linear", "polynomial"):
        return max(0.0, 1.0 - progress)
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if kind == "cosine_with_restarts":
        if progress >= 1.0:
            return 0.0
        return 0.5 * (1.0 + math.cos(math.pi * ((restarts * progress) % 1.0)))
    raise ValueError(f"unknown scheduler {kind!r}")


def build_scheduler(optimizer: torch.optim.Optimizer, settings: OptimizerSettings, total_steps: int):
    factor = partial(lr_factor, total=total_steps, warmup=settings.warmup_steps,
                     kind=settings.scheduler, restarts=settings.restarts)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
