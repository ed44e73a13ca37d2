"""Faster frozen Linear / Conv2d layers on the CPU, chosen by timing (like cudnn.benchmark).

Training a LoRA, most of a step is the frozen base layers' forward and input-gradient.
Deep in the UNet at training resolutions there are few tokens (16 at 4×4) against large
weights (10–120 MB), and there the CPU libraries are far from the memory bandwidth:
PyTorch's convolution re-packs the weight into oneDNN's blocked layout on every call, and
BLAS picks different kernels for `x @ Wᵀ` and `W @ xᵀ` — for a [16, 1280] × [1280, 10240]
feed-forward the second layout is ~1.7× faster here, forward and backward (see
bench/README.md). Which way wins depends on the CPU and the shape, so each distinct
(layer shape, input shape) is timed once, every candidate forward and backward, and the
fastest is used from then on. Every candidate reads the weight in place (no copy) and gives
the same result up to float rounding; nothing changes outside the context.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .guard import replaced_forwards
from .tuning_cache import choices_file, load_choices, save_choices

_TIMED_RUNS = 2
# Keep PyTorch's own way unless another is clearly faster: timing a few runs is noisy.
_MIN_GAIN = 0.05


# MKL's GEMM on few columns (2×2 latents: 4 pixels) runs 2–3× slower than on 16 (measured on
# an AMD EPYC, bench/README.md); zero columns up to this many are cheaper than the slow kernel.
_MIN_COLUMNS = 16


def _weight_times(weight: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    """weight @ columns ([..., K, N]), with N padded to _MIN_COLUMNS when smaller."""
    n = columns.shape[-1]
    if n >= _MIN_COLUMNS:
        return torch.matmul(weight, columns)
    return torch.matmul(weight, F.pad(columns, (0, _MIN_COLUMNS - n)))[..., :n]


def linear_weight_first(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """layer(x) computed as (W @ xᵀ)ᵀ."""
    flat = x.reshape(-1, layer.in_features)
    out = _weight_times(layer.weight, flat.t()).t()
    if layer.bias is not None:
        out = out + layer.bias
    return out.reshape(*x.shape[:-1], layer.out_features)


def conv_as_matmul(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    """conv(x) computed as W[out, in·kh·kw] @ unfold(x) (no per-call weight re-pack)."""
    batch, _, height, width = x.shape
    kh, kw = conv.kernel_size
    (sh, sw), (ph, pw) = conv.stride, conv.padding
    out_h = (height + 2 * ph - kh) // sh + 1
    out_w = (width + 2 * pw - kw) // sw + 1
    if conv.kernel_size == (1, 1) and conv.stride == (1, 1) and conv.padding == (0, 0):
        columns = x.reshape(batch, conv.in_channels, height * width)
    else:
        columns = F.unfold(x, conv.kernel_size, padding=conv.padding, stride=conv.stride)  # [B, in·kh·kw, L]
    out = _weight_times(conv.weight.view(conv.out_channels, -1), columns)  # [B, out, L]
    if conv.bias is not None:
        out = out + conv.bias.view(1, -1, 1)
    return out.view(batch, conv.out_channels, out_h, out_w)


def _torch_linear(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, layer.weight, layer.bias)


def _torch_conv(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    return conv._conv_forward(x, conv.weight, conv.bias)


Way = Callable[[nn.Module, torch.Tensor], torch.Tensor]
# The first way of each is PyTorch's own.
WAYS: dict[type, tuple[Way, ...]] = {
    nn.Linear: (_torch_linear, linear_weight_first),
    nn.Conv2d: (_torch_conv, conv_as_matmul),
}


def eligible(layer: nn.Module) -> bool:
    """A frozen CPU float32 Linear, or a plain Conv2d (groups 1, no dilation, zero padding)."""
    if type(layer) not in WAYS or layer.weight.device.type != "cpu" or layer.weight.requires_grad:
        return False
    if layer.weight.dtype != torch.float32:
        return False
    if isinstance(layer, nn.Conv2d):
        return (layer.groups == 1 and layer.dilation == (1, 1) and layer.padding_mode == "zeros"
                and not isinstance(layer.padding, str))
    return True


# Choices made in this process, kept across runs: a second training in the same WebUI
# session (or a resumed one) starts without timing anything again.
_PROCESS_CHOICES: dict[tuple, int] = {}


class LayerTuner:
    """Remembers, per shape, the fastest way to run a frozen layer; shared by all layers."""

    def __init__(self, choice: dict[tuple, int] | None = None, timer: Callable[[], float] = time.perf_counter):
        self.choice: dict[tuple, int] = {} if choice is None else choice
        self._timer = timer

    def forward(self, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
        ways = WAYS[type(layer)]
        if x.device.type != "cpu" or x.dtype != layer.weight.dtype or (isinstance(layer, nn.Conv2d) and x.dim() != 4):
            return ways[0](layer, x)
        needs_backward = torch.is_grad_enabled() and x.requires_grad
        key = (type(layer).__name__, tuple(layer.weight.shape), getattr(layer, "stride", None),
               getattr(layer, "padding", None), layer.bias is not None, tuple(x.shape), needs_backward)
        index = self.choice.get(key)
        if index is None:
            index = self.choice[key] = self._fastest(ways, layer, x, needs_backward)
        return ways[index](layer, x)

    def _fastest(self, ways: tuple[Way, ...], layer: nn.Module, x: torch.Tensor, needs_backward: bool) -> int:
        probe = x.detach().clone()
        # The probes' graphs are private: inside a checkpointed block, the checkpoint's own
        # saved-tensor hooks must not see them (its recompute would count other tensors).
        with torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
            times = [self._time(way, layer, probe, needs_backward) for way in ways]
        best = min(range(len(ways)), key=times.__getitem__)
        return best if times[best] < times[0] * (1 - _MIN_GAIN) else 0

    def _time(self, way: Way, layer: nn.Module, probe: torch.Tensor, needs_backward: bool) -> float:
        runs = []
        for _ in range(_TIMED_RUNS + 1):  # the first run warms up
            start = self._timer()
            if needs_backward:
                probe.requires_grad_(True)
                with torch.enable_grad():
                    out = way(layer, probe)
                    out.backward(torch.ones_like(out))
                probe.grad = None
            else:
                with torch.no_grad():
                    way(layer, probe)
            runs.append(self._timer() - start)
        return min(runs[1:])


@contextmanager
def tuned_layers(modules: Iterable[nn.Module], enabled: bool = True,
                 persist: bool = False) -> Iterator[LayerTuner | None]:
    """While inside, every eligible layer under `modules` runs the fastest way for its shapes.

    Sets an instance-level `forward` (forward hooks, e.g. the LoRA's, still run) and removes
    it on exit. Enter after freezing the base: only frozen layers are tuned. `persist` reuses the
    choices saved by earlier runs and saves new ones (tuning_cache.py): runs become bit-identical.
    """
    if not enabled:
        yield None
        return
    path = choices_file() if persist else None
    if path is not None:
        _PROCESS_CHOICES.update(load_choices(path))  # the saved choice wins: every run uses the same kernel
    known = len(_PROCESS_CHOICES)
    tuner = LayerTuner(_PROCESS_CHOICES)
    layers = [layer for root in modules for layer in root.modules() if eligible(layer)]
    try:
        with replaced_forwards((layer, _bound(tuner, layer)) for layer in layers):
            yield tuner
    finally:
        if path is not None and len(_PROCESS_CHOICES) > known:
            save_choices(path, _PROCESS_CHOICES)


def _bound(tuner: LayerTuner, layer: nn.Module):
    def forward(x: torch.Tensor) -> torch.Tensor:
        return tuner.forward(layer, x)

    return forward
