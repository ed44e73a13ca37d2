"""fp8 weight storage: what A1111's *FP8 weight* option does to a model.

A1111 (Settings > Optimizations > FP8 weight) stores every Linear and Conv2d of the UNet and the
text encoder as `float8_e4m3fn` (the VAE stays as it was) and relies on autocast to upcast each
weight when its layer runs. `store_as_fp8` does the same for the CLI (`model.weight_dtype = "fp8"`);
training on such weights is `train/fp8_layers.py`.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

FP8_DTYPES = tuple(getattr(torch, name) for name in ("float8_e4m3fn", "float8_e5m2") if hasattr(torch, name))


def is_fp8(dtype: torch.dtype) -> bool:
    return dtype in FP8_DTYPES


def has_fp8_weights(modules: Iterable[nn.Module]) -> bool:
    return any(is_fp8(p.dtype) for m in modules for p in m.parameters())


def compute_dtype(module: nn.Module) -> torch.dtype:
    """The dtype a model computes in: its weights' dtype, skipping fp8-stored ones (A1111 keeps
    norms and embeddings in fp16 beside fp8 Linear/Conv2d weights)."""
    for param in module.parameters():
        if param.is_floating_point() and not is_fp8(param.dtype):
            return param.dtype
    return torch.float32


def store_as_fp8(modules: Iterable[nn.Module], dtype: torch.dtype | None = None) -> int:
    """Convert every Linear/Conv2d of `modules` to fp8 storage in place, as A1111 does; returns how many."""
    dtype = dtype or FP8_DTYPES[0]
    layers = [m for module in modules for m in module.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    for layer in layers:
        layer.to(dtype)
    return len(layers)
