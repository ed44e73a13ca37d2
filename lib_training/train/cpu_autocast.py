"""CPU autocast made to follow CUDA's rule for normalisation layers, for the run.

CUDA autocast computes group_norm and layer_norm in fp32 (inputs, weights and output); CPU autocast
leaves them alone, so ldm's GroupNorm32 — which calls its half-precision norm on `x.float()`, as in
every A1111 model — fails there ("mixed dtype (CPU)"). Under CPU autocast the norms run in fp32
here exactly as they do on a GPU, so the CPU trains half-precision models along the CUDA path.
Weights are only read (cast copies); the forwards are removed on exit.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .guard import replaced_forwards


@contextmanager
def cuda_like_norms(modules: Iterable[nn.Module], enabled: bool) -> Iterator[None]:
    norms = [m for module in (modules if enabled else ()) for m in module.modules()
             if isinstance(m, (nn.GroupNorm, nn.LayerNorm)) and m.weight is not None
             and m.weight.dtype != torch.float32]
    with replaced_forwards((norm, _fp32_forward(norm)) for norm in norms):
        yield


def _fp32_forward(norm: nn.Module):
    def forward(x):
        weight, bias = norm.weight.float(), (norm.bias.float() if norm.bias is not None else None)
        if isinstance(norm, nn.GroupNorm):
            return F.group_norm(x.float(), norm.num_groups, weight, bias, norm.eps)
        return F.layer_norm(x.float(), norm.normalized_shape, weight, bias, norm.eps)

    return forward
