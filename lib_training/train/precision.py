"""Which precision a run computes in: the setting, read against the base model's weights.

A GPU user's model is in fp16 (A1111's default), bf16, or fp8-stored (A1111's *FP8 weight*); the
LoRA is always fp32. Half or fp8 weights can only be trained under autocast, so `auto` follows the
weights: autocast at their dtype (fp8: fp16 on CUDA, bf16 on the CPU, as A1111's fp8 inference).
fp32 weights: fp16 autocast on CUDA, none on the CPU (slow there, and bf16 loses too much for a LoRA).
An explicit fp16/bf16 is honoured on every device (the CPU runs the CUDA path, for tests).
fp16 autocast comes with a GradScaler, so small LoRA gradients do not underflow.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import SettingsError
from ..models.fp8 import compute_dtype, has_fp8_weights
from .fp8_layers import autocast_dtype

HALF = (torch.float16, torch.bfloat16)
NAMES = {torch.float16: "fp16", torch.bfloat16: "bf16"}


@dataclass(frozen=True)
class Precision:
    autocast: torch.dtype | None  # None: no autocast
    weights: torch.dtype  # the base model's compute dtype (the UNet's inputs are cast to it)
    fp8: bool  # some base Linear/Conv2d weights are stored in fp8 (upcast per layer)

    @property
    def label(self) -> str:
        """kohya's ss_mixed_precision."""
        return NAMES.get(self.autocast, "no")

    @property
    def needs_scaler(self) -> bool:
        return self.autocast == torch.float16


def choose_precision(mixed_precision: str, device: torch.device, unet: torch.nn.Module,
                     text_encoder: torch.nn.Module | None = None) -> Precision:
    """The run's precision; SettingsError (before any step) for a setting the weights cannot run in."""
    modules = [m for m in (unet, text_encoder) if m is not None]
    weights, fp8 = compute_dtype(unet), has_fp8_weights(modules)
    if mixed_precision == "no":
        if weights in HALF:
            raise SettingsError(
                f"train.mixed_precision is 'no' (fp32), but the model's weights are {NAMES[weights]}. Choose "
                "'auto', or load the model in fp32 (WebUI: start it with --no-half).")
        return Precision(None, weights, fp8)
    explicit = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(mixed_precision)
    if explicit is not None:
        precision = Precision(explicit, weights, fp8)
    elif weights in HALF:
        precision = Precision(weights, weights, fp8)
    elif fp8 or device.type == "cuda":
        precision = Precision(torch.float16 if device.type == "cuda" else torch.bfloat16, weights, fp8)
    else:
        return Precision(None, weights, fp8)
    if not autocast_works(device.type, precision.autocast):
        raise SettingsError(
            f"This PyTorch ({torch.__version__}) cannot run {precision.label} autocast on the {device.type}, which "
            f"training on {NAMES.get(weights, 'fp8')} weights needs. Load the model in fp32 (WebUI: --no-half), "
            "or choose bf16.")
    return precision


def autocast_works(device_type: str, dtype: torch.dtype) -> bool:
    """Whether autocast really turns on for (device, dtype): older PyTorch (A1111 pins 2.1) only warns
    and disables it, e.g. fp16 on the CPU."""
    import warnings

    if device_type == "cuda" and not torch.cuda.is_available():
        return True  # decided on the GPU machine itself; nothing to probe here
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with torch.autocast(device_type, dtype=dtype):
                return autocast_dtype(device_type) == dtype
        except RuntimeError:
            return False


def grad_scaler(precision: Precision, device: torch.device):
    """A GradScaler for fp16 autocast (torch.amp's on any device; torch 2.1 has CUDA's only)."""
    if not precision.needs_scaler:
        return None
    amp_scaler = getattr(torch.amp, "GradScaler", None)
    if amp_scaler is not None:
        return amp_scaler(device.type)
    return torch.cuda.amp.GradScaler() if device.type == "cuda" else None
