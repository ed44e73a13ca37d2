"""Train on fp8-stored frozen weights: each Linear/Conv2d upcast per layer, as A1111's fp8 inference.

A1111 relies on autocast to upcast an fp8 weight when its layer runs. The engine does the same per
layer, with one difference that matters for training: the upcast copy is made again in backward
instead of being kept for it, so what backward keeps holds fp8 weights (1 byte a parameter), not a
half-precision copy of every layer (which would give back all the memory fp8 saves).

The stored fp8 tensors are only read: after training they are bit for bit what they were.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..models.fp8 import is_fp8
from .guard import replaced_forwards


@contextmanager
def fp8_upcast(modules: Iterable[nn.Module]) -> Iterator[int]:
    """Run every fp8-stored Linear/Conv2d of `modules` through an upcasting forward for the duration.

    The forward is set on the instance (its hooks, and so the LoRA, still run) and removed on exit.
    Yields the number of layers wrapped (0: nothing is fp8, nothing changes)."""
    layers = [m for module in modules for m in module.modules()
              if isinstance(m, (nn.Linear, nn.Conv2d)) and is_fp8(m.weight.dtype)]
    with replaced_forwards((layer, _upcasting_forward(layer)) for layer in layers):
        yield len(layers)


def _target_dtype(x: torch.Tensor) -> torch.dtype:
    """Autocast's dtype when autocast is on (as A1111's fp8 inference), else the input's."""
    dtype = autocast_dtype(x.device.type)
    if dtype is not None:
        return dtype
    return x.dtype if x.is_floating_point() and not is_fp8(x.dtype) else torch.float32


def autocast_dtype(device: str) -> torch.dtype | None:
    """The dtype autocast runs in on `device` now, None when it is off (torch 2.1's API and today's)."""
    if hasattr(torch, "get_autocast_dtype"):
        if device in ("cuda", "cpu") and torch.is_autocast_enabled(device):
            return torch.get_autocast_dtype(device)
        return None
    if device == "cuda" and torch.is_autocast_enabled():
        return torch.get_autocast_gpu_dtype()
    if device == "cpu" and torch.is_autocast_cpu_enabled():
        return torch.get_autocast_cpu_dtype()
    return None


def _upcasting_forward(layer: nn.Module):
    def forward(x: torch.Tensor, *_, **__) -> torch.Tensor:  # diffusers' LoRACompatible layers pass `scale`
        dtype = _target_dtype(x)
        return _Fp8Layer.apply(x.to(dtype), layer.weight, layer.bias, layer, dtype)

    return forward


class _Fp8Layer(torch.autograd.Function):
    """Linear/Conv2d with an fp8 weight upcast on the fly: saves the fp8 weight, not the copy.

    Frozen base only: no gradient for the weight or bias (the engine never trains them)."""

    @staticmethod
    def forward(ctx, x, weight, bias, layer, dtype):
        ctx.layer, ctx.dtype = layer, dtype
        ctx.save_for_backward(weight)
        ctx.input_shape = x.shape
        w = weight.to(dtype)
        b = bias.to(dtype) if bias is not None else None
        with torch.autocast(x.device.type, enabled=False):
            if isinstance(layer, nn.Linear):
                return F.linear(x, w, b)
            return layer._conv_forward(x, w, b)

    @staticmethod
    def backward(ctx, grad_out):
        (weight,) = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None, None
        layer, w = ctx.layer, weight.to(ctx.dtype)
        grad_out = grad_out.to(ctx.dtype)
        with torch.autocast(grad_out.device.type, enabled=False):
            if isinstance(layer, nn.Linear):
                grad_x = grad_out @ w
            else:
                grad_x = torch.nn.grad.conv2d_input(ctx.input_shape, w, grad_out, layer.stride, layer.padding,
                                                    layer.dilation, layer.groups)
        return grad_x, None, None, None, None
