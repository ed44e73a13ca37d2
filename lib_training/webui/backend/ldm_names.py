"""Diffusers names for the modules of an ldm UNetModel (A1111's UNet).

Saved LoRA keys must be kohya's, which follow diffusers' module paths; the mapping
itself lives in `models.ldm_convert`. Here we only read the UNet's shape off the live
module, so any SD1/SD2-shaped UNet (including tiny test ones) maps.
"""

from __future__ import annotations

from typing import Iterator

from torch import nn

from ...models.ldm_convert import unet_module_map


def _transformer_depth(block: nn.Module) -> int | None:
    for module in block.modules():
        if type(module).__name__ == "SpatialTransformer":
            return len(module.transformer_blocks)
    return None


def diffusers_unet_config(unet: nn.Module) -> dict:
    """The parts of a diffusers UNet config that decide module names, read off an ldm UNetModel."""
    mults = list(unet.channel_mult)
    levels = len(mults)
    per_level = unet.num_res_blocks if isinstance(unet.num_res_blocks, (list, tuple)) else [unet.num_res_blocks] * levels
    depths: list[int] = []
    attention: list[bool] = []
    index = 1  # input_blocks[0] is conv_in
    for level in range(levels):
        depth = _transformer_depth(unet.input_blocks[index])
        attention.append(depth is not None)
        depths.append(depth or 1)
        index += per_level[level] + (1 if level < levels - 1 else 0)
    return {
        "block_out_channels": [unet.model_channels * m for m in mults],
        "layers_per_block": list(per_level),
        "transformer_layers_per_block": depths,
        "down_block_types": ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention],
        "up_block_types": ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention)],
    }


def named_unet_modules(unet: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """(diffusers path, ldm module) for every UNet module that has a diffusers counterpart."""
    mapping = unet_module_map(diffusers_unet_config(unet))
    for ldm_path, module in unet.named_modules():
        diffusers_path = mapping.get(ldm_path)
        if diffusers_path is not None:
            yield diffusers_path, module
