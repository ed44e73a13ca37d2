"""In which dtype the CLI holds the base model: what a GPU user's WebUI would hold.

`model.weight_dtype`: auto = fp16 on CUDA (fp32 with mixed_precision "no"), fp32 elsewhere;
fp8 = A1111's *FP8 weight*: Linear/Conv2d of the UNet and text encoder stored as float8_e4m3fn
(`fp8.store_as_fp8`), the rest (norms, embeddings, the VAE) in bf16 when mixed_precision is bf16 or
on the CPU, fp16 otherwise. The WebUI trains the model as A1111 loaded it and ignores this setting.
"""

from __future__ import annotations

import torch

_NAMED = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_weight_dtype(setting: str, mixed_precision: str, device_type: str) -> tuple[torch.dtype, bool]:
    """(dtype to load the checkpoint in, whether its Linear/Conv2d layers are then stored in fp8)."""
    if setting in _NAMED:
        return _NAMED[setting], False
    if setting == "fp8":
        rest = torch.bfloat16 if mixed_precision == "bf16" or device_type != "cuda" else torch.float16
        return rest, True
    if device_type == "cuda" and mixed_precision != "no":
        return (torch.bfloat16 if mixed_precision == "bf16" else torch.float16), False
    return torch.float32, False
