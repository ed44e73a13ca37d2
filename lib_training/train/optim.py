"""Optimizers: AdamW and Lion always; Prodigy and 8-bit AdamW when their packages work."""

from __future__ import annotations

import importlib.util
from typing import Iterable

import torch

from ..config import OptimizerSettings
from ..errors import SettingsError


class Lion(torch.optim.Optimizer):
    """Lion (Chen et al. 2023): sign of an interpolated momentum. Built in so it needs no package."""

    def __init__(self, params: Iterable, lr: float = 1e-4, betas=(0.9, 0.99), weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p)
                exp_avg = state["exp_avg"]
                p.mul_(1 - group["lr"] * group["weight_decay"])
                update = exp_avg.mul(beta1).add_(p.grad, alpha=1 - beta1).sign_()
                p.add_(update, alpha=-group["lr"])
                exp_avg.mul_(beta2).add_(p.grad, alpha=1 - beta2)
        return loss


def available_optimizers() -> list[str]:
    names = ["adamw", "lion"]
    if importlib.util.find_spec("prodigyopt"):
        names.append("prodigy")
    if torch.cuda.is_available() and bitsandbytes_problem() is None:
        names.append("adamw8bit")
    return names


def bitsandbytes_problem() -> str | None:
    """None when bitsandbytes imports; else why not (it raises more than ImportError without a usable
    CUDA set-up, e.g. a CPU-only build or a missing libcudart)."""
    if not importlib.util.find_spec("bitsandbytes"):
        return "the bitsandbytes package is not installed (pip install bitsandbytes)"
    try:
        import bitsandbytes  # noqa: F401
    except Exception as error:
        return f"bitsandbytes does not load here ({type(error).__name__}: {error})"
    return None


def build_optimizer(settings: OptimizerSettings, groups: list[dict], device: torch.device) -> torch.optim.Optimizer:
    """`groups`: [{"params": [...], "lr": ...}, ...] (UNet and text encoder learning rates)."""
    name, wd = settings.optimizer, settings.weight_decay
    if name == "adamw":
        return torch.optim.AdamW(groups, weight_decay=wd, foreach=True)
    if name == "lion":
        return Lion(groups, weight_decay=wd)
    if name == "prodigy":
        if not importlib.util.find_spec("prodigyopt"):
            raise SettingsError("Optimizer 'prodigy' needs the prodigyopt package: pip install prodigyopt.")
        from prodigyopt import Prodigy

        return Prodigy(groups, weight_decay=wd)
    if name == "adamw8bit":
        if device.type != "cuda":
            raise SettingsError("Optimizer 'adamw8bit' needs a CUDA GPU; use 'adamw' here.")
        problem = bitsandbytes_problem()
        if problem:
            raise SettingsError(f"Optimizer 'adamw8bit' cannot be used: {problem}. Use 'adamw', or fix bitsandbytes.")
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(groups, weight_decay=wd)
    raise SettingsError(f"Unknown optimizer {name!r}.")
