"""One LoRA adapter on one Linear/Conv2d, applied by a forward hook.

The base module is never modified: `attach` registers a forward hook that adds
`up(down(x)) * multiplier * alpha / rank` to its output, `detach` removes it.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle


class LoraModule(nn.Module):
    def __init__(self, kohya_name: str, base: nn.Module, rank: int, alpha: float):
        super().__init__()
        self.kohya_name = kohya_name
        self.rank = rank
        # A Python float, not a tensor: reading a CUDA scalar in every forward would sync the device.
        self.alpha = float(alpha)
        self.multiplier = 1.0
        if isinstance(base, nn.Conv2d):
            self.lora_down = nn.Conv2d(
                base.in_channels, rank, base.kernel_size, base.stride, base.padding, bias=False
            )
            self.lora_up = nn.Conv2d(rank, base.out_channels, 1, 1, bias=False)
        elif isinstance(base, nn.Linear):
            self.lora_down = nn.Linear(base.in_features, rank, bias=False)
            self.lora_up = nn.Linear(rank, base.out_features, bias=False)
        else:
            raise TypeError(f"LoRA supports Linear and Conv2d, not {type(base).__name__} ({kohya_name})")
        # kohya's init: down ~ kaiming-uniform, up = 0, so a fresh LoRA is the identity.
        nn.init.kaiming_uniform_(self.lora_down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_up.weight)
        self._base = [base]  # a list so the base is not registered as a submodule
        self._handle: RemovableHandle | None = None

    @property
    def base(self) -> nn.Module:
        return self._base[0]

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        down = self.lora_down.weight
        return self.lora_up(self.lora_down(x.to(down.dtype))) * (self.multiplier * self.scale)

    def weight_delta(self) -> torch.Tensor:
        """What merging adds to the base weight: `delta` as one weight (up @ down, over the 3x3 kernel for convs)."""
        up, down = self.lora_up.weight, self.lora_down.weight
        if down.dim() == 4:
            product = torch.einsum("or,rihw->oihw", up[:, :, 0, 0], down)
        else:
            product = up @ down
        return product * (self.multiplier * self.scale)

    def _hook(self, module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        return output + self.delta(inputs[0]).to(output.dtype)

    def attach(self) -> None:
        if self._handle is None:
            self._handle = self.base.register_forward_hook(self._hook)

    def detach(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    @property
    def attached(self) -> bool:
        return self._handle is not None
