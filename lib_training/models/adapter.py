"""The one small protocol every model backend implements.

The trainer talks to a model only through this: the diffusers backend (CLI, tests)
and the WebUI backend (A1111's loaded ldm model) both fit it. Module names handed to
the LoRA code are the paths kohya names its keys after, whatever the backend: *diffusers*
paths for SD 1.x/2.x, the original (sgm) block paths for SDXL (kohya's SDXL UNet keeps them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ContextManager, Iterator, Protocol, Sequence, Union

import torch
from torch import nn

EPSILON = "epsilon"
V_PREDICTION = "v_prediction"
SDXL = "sdxl"

# What `encode_prompts` returns: the cross-attention context (SD1/2), or for SDXL a dict of
# the context and bigG's pooled output (see `models.conditioning` for caching it per caption).
Conditioning = Union[torch.Tensor, dict]


@dataclass(frozen=True)
class SizeConditioning:
    """SDXL's per-image micro-conditioning, as kohya computes it from the bucket and the crop:
    the image's original size, the crop's top-left corner and the trained size, all (height, width)."""

    original_hw: tuple[int, int]
    crop_top_left: tuple[int, int]
    target_hw: tuple[int, int]

    def as_list(self) -> list[int]:
        """The six numbers in the order SDXL embeds them (diffusers' `time_ids`)."""
        return [*self.original_hw, *self.crop_top_left, *self.target_hw]


@dataclass(frozen=True)
class ModelInfo:
    """What the saved LoRA's metadata says about the base model."""

    family: str  # "sd1" | "sd2" | "sdxl"
    prediction_type: str  # EPSILON | V_PREDICTION
    name: str = ""  # file name of the checkpoint, as ss_sd_model_name
    legacy_hash: str = ""  # A1111's old 8-hex hash (ss_sd_model_hash)
    sha256: str = ""  # full file sha256 (ss_new_sd_model_hash)
    clip_skip: int = 1
    extra: dict = field(default_factory=dict)

    @property
    def base_model_version(self) -> str:
        """kohya's ss_base_model_version (A1111 shows a LoRA under an SDXL model only when it starts 'sdxl_')."""
        if self.family == SDXL:
            return "sdxl_base_v1-0"  # kohya writes this for v-prediction SDXL too
        if self.family == "sd2":
            return "sd_v2" + ("_v" if self.prediction_type == V_PREDICTION else "")
        return "sd_v1"

    @property
    def modelspec_architecture(self) -> str:
        if self.family == SDXL:
            return "stable-diffusion-xl-v1-base/lora"
        if self.family == "sd2":
            return "stable-diffusion-v2-768-v/lora" if self.prediction_type == V_PREDICTION else "stable-diffusion-v2-512/lora"
        return "stable-diffusion-v1/lora"

    @property
    def modelspec_implementation(self) -> str:
        """kohya's sai_model_spec: SDXL LoRAs name Stability's implementation, others diffusers."""
        return "https://github.com/Stability-AI/generative-models" if self.family == SDXL else "diffusers"


class ModelAdapter(Protocol):
    """A text-to-image latent diffusion model, seen from the trainer."""

    info: ModelInfo
    device: torch.device
    dtype: torch.dtype  # the UNet's compute dtype: its weights' (for fp8-stored layers, that of the rest)

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        """The training noise schedule, float32 on `device`, length = number of timesteps."""

    def unet(self) -> nn.Module:
        """The denoiser, whose modules carry diffusers names (see `named_unet_modules`)."""

    def text_encoder(self) -> nn.Module:
        """The text encoder (CLIP text transformer)."""

    def named_unet_modules(self) -> Iterator[tuple[str, nn.Module]]:
        """(diffusers module path, module) for every UNet module, e.g. 'down_blocks.0.attentions.0'."""

    def named_text_encoder_modules(self) -> Iterator[tuple[str, nn.Module]]:
        """(transformers CLIPTextModel path, module), e.g. 'text_model.encoder.layers.0.self_attn'."""

    def text_encoder_parts(self) -> list[tuple[str, Iterator[tuple[str, nn.Module]]]]:
        """(kohya key prefix, named modules) per text encoder: [('lora_te', ...)] for SD 1.x/2.x,
        [('lora_te1', CLIP-L), ('lora_te2', bigG)] for SDXL."""

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Pixels in [-1, 1], (B, 3, H, W) -> scaled latents (B, C, H/8, W/8) as the UNet sees them."""

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> pixels in [-1, 1]."""

    def encode_prompts(self, prompts: Sequence[str]) -> Conditioning:
        """Captions -> UNet conditioning (B, tokens, dim); differentiable through the text encoder."""

    def predict(self, noisy_latents: torch.Tensor, timesteps: torch.Tensor, cond: Conditioning,
                sizes: Sequence[SizeConditioning] | None = None) -> torch.Tensor:
        """UNet output (noise for eps models, v for v-prediction models). `sizes` (one per sample)
        is SDXL's size/crop conditioning; SD 1.x/2.x ignore it."""

    def checkpoint_units(self) -> list[nn.Module]:
        """Blocks whose activations the engine recomputes under gradient checkpointing."""

    def prepared_for_training(self) -> ContextManager[None]:
        """Backend-specific set-up held for the whole run, undone on exit (may do nothing)."""
