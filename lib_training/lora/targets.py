"""Which modules get a LoRA, and their kohya names (kohya `networks.lora` rules)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from torch import nn

UNET_PREFIX = "lora_unet"
TEXT_ENCODER_PREFIX = "lora_te"

# Container classes whose Linear / 1x1-conv children are targeted (kohya's defaults).
UNET_ATTENTION_CONTAINERS = ("Transformer2DModel",)
# With conv_dim set, kohya also targets the 3x3 convs of these (LoCon-style).
UNET_CONV_CONTAINERS = ("ResnetBlock2D", "Downsample2D", "Upsample2D")
TEXT_ENCODER_CONTAINERS = ("CLIPAttention", "CLIPSdpaAttention", "CLIPFlashAttention2", "CLIPMLP")


@dataclass(frozen=True)
class LoraTarget:
    """A module to adapt: its kohya key prefix, the module itself, and its rank/alpha."""

    kohya_name: str
    module: nn.Module
    rank: int
    alpha: float


def kohya_name(prefix: str, module_path: str) -> str:
    """'lora_unet' + 'down_blocks.0.attentions.0.proj_in' -> 'lora_unet_down_blocks_0_attentions_0_proj_in'."""
    return f"{prefix}.{module_path}".replace(".", "_")


def _is_1x1_conv(module: nn.Module) -> bool:
    return isinstance(module, nn.Conv2d) and tuple(module.kernel_size) == (1, 1)


def _adaptable(module: nn.Module) -> bool:
    return isinstance(module, (nn.Linear, nn.Conv2d))


def find_targets(
    named_modules: Iterable[tuple[str, nn.Module]],
    prefix: str,
    containers: tuple[str, ...],
    rank: int,
    alpha: float,
    conv_rank: int = 0,
    conv_alpha: float = 1.0,
) -> list[LoraTarget]:
    """Every Linear/Conv2d inside a container class, named and sized as kohya does.

    Linear and 1x1 convs get `rank`; larger convs get `conv_rank` (skipped when 0).
    `named_modules` yields (diffusers path, module) for every module that has a diffusers
    name; a backend whose own names differ (A1111's ldm) yields the mapped names, and its
    container classes are recognised through `container_class_name`.
    """
    named = list(named_modules)
    path_of = {id(module): path for path, module in named}
    targets: list[LoraTarget] = []
    seen: set[str] = set()
    for _, container in named:
        if container_class_name(container) not in containers:
            continue
        for child in container.modules():
            path = path_of.get(id(child))
            if child is container or path is None or not _adaptable(child):
                continue
            name = kohya_name(prefix, path)
            if name in seen:
                continue
            if isinstance(child, nn.Linear) or _is_1x1_conv(child):
                child_rank, child_alpha = rank, alpha
            else:
                child_rank, child_alpha = conv_rank, conv_alpha
            if child_rank <= 0:
                continue
            seen.add(name)
            targets.append(LoraTarget(name, child, child_rank, float(child_alpha)))
    return targets


# A1111's UNet is an ldm UNetModel; these ldm classes stand for the diffusers ones kohya targets.
_LDM_EQUIVALENTS = {
    "SpatialTransformer": "Transformer2DModel",
    "ResBlock": "ResnetBlock2D",
    "Downsample": "Downsample2D",
    "Upsample": "Upsample2D",
}


def container_class_name(module: nn.Module) -> str:
    """The diffusers class name a module stands for."""
    name = type(module).__name__
    return _LDM_EQUIVALENTS.get(name, name)
