"""ModelAdapter over diffusers/transformers modules (CLI, benchmarks, tests)."""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Sequence

import torch
from torch import nn

from ..lora.targets import TEXT_ENCODER_PREFIX
from .adapter import ModelInfo, SizeConditioning
from .fp8 import compute_dtype
from .schedule import scaled_linear_alphas_cumprod

TOKEN_WINDOW = 77


class DiffusersAdapter:
    def __init__(self, unet: nn.Module, vae: nn.Module, text_encoder: nn.Module, tokenizer, info: ModelInfo,
                 vae_scaling_factor: float | None = None):
        self._unet = unet
        self._vae = vae
        self._text_encoder = text_encoder
        self.tokenizer = tokenizer
        self.info = info
        self.vae_scaling_factor = vae_scaling_factor or getattr(vae.config, "scaling_factor", 0.18215)
        self._alphas_cumprod = scaled_linear_alphas_cumprod().to(self.device)
        # unet / vae / text kwargs of a non-standard (tiny) model, written into checkpoints made from it
        self.configs: dict | None = None

    @property
    def device(self) -> torch.device:
        return next(self._unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return compute_dtype(self._unet)

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return self._alphas_cumprod

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> "DiffusersAdapter":
        for module in (self._unet, self._vae, self._text_encoder):
            module.to(device=device, dtype=dtype)
        self._alphas_cumprod = self._alphas_cumprod.to(device)
        return self

    def unet(self) -> nn.Module:
        return self._unet

    def text_encoder(self) -> nn.Module:
        return self._text_encoder

    def vae(self) -> nn.Module:
        return self._vae

    def named_unet_modules(self) -> Iterator[tuple[str, nn.Module]]:
        return self._unet.named_modules()

    def named_text_encoder_modules(self) -> Iterator[tuple[str, nn.Module]]:
        return named_clip_modules(self._text_encoder)

    def text_encoder_parts(self) -> list[tuple[str, Iterator[tuple[str, nn.Module]]]]:
        return [(TEXT_ENCODER_PREFIX, self.named_text_encoder_modules())]

    def checkpoint_units(self) -> list[nn.Module]:
        """Blocks whose activations are recomputed under gradient checkpointing."""
        units = [m for m in self._unet.modules() if type(m).__name__ in ("ResnetBlock2D", "Transformer2DModel")]
        return units + list(_text_root(self._text_encoder).encoder.layers)

    def original_layout_state_dict(self, value: Callable[[torch.Tensor], torch.Tensor] = lambda t: t
                                   ) -> dict[str, torch.Tensor]:
        """The whole model in the single-file (ldm) layout; `value` maps each weight to what is written
        (the trainer's fp32 master for a trained weight)."""
        from .ldm_convert import diffusers_to_ldm

        parts = [{k: value(v) for k, v in m.state_dict(keep_vars=True).items()}
                 for m in (self._unet, self._vae, self._text_encoder)]
        return diffusers_to_ldm(*parts, dict(self._unet.config), dict(self._vae.config), self.info.family)

    def prepared_for_training(self) -> contextlib.nullcontext:
        return contextlib.nullcontext()

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        vae_dtype = next(self._vae.parameters()).dtype
        posterior = self._vae.encode(pixels.to(self.device, vae_dtype)).latent_dist
        return posterior.sample() * self.vae_scaling_factor

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        vae_dtype = next(self._vae.parameters()).dtype
        return self._vae.decode(latents.to(vae_dtype) / self.vae_scaling_factor).sample.clamp(-1, 1)

    def tokenize(self, prompts: Sequence[str]) -> torch.Tensor:
        return self.tokenizer(
            list(prompts), padding="max_length", max_length=TOKEN_WINDOW, truncation=True, return_tensors="pt"
        ).input_ids.to(self.device)

    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        ids = self.tokenize(prompts)
        clip_skip = self.info.clip_skip
        out = self._text_encoder(ids, output_hidden_states=clip_skip > 1)
        if clip_skip <= 1:
            return out.last_hidden_state
        # As A1111 and kohya: an earlier layer, then the final layer norm.
        hidden = out.hidden_states[-clip_skip]
        return _text_root(self._text_encoder).final_layer_norm(hidden)

    def predict(self, noisy_latents: torch.Tensor, timesteps: torch.Tensor, cond: torch.Tensor,
                sizes: Sequence[SizeConditioning] | None = None) -> torch.Tensor:
        return self._unet(noisy_latents, timesteps, encoder_hidden_states=cond).sample


def named_clip_modules(text_encoder: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """kohya names use transformers 4's paths ('text_model.encoder...'); 5.x dropped that level."""
    if hasattr(text_encoder, "text_model"):
        return text_encoder.named_modules()
    return text_encoder.named_modules(prefix="text_model")


def _text_root(text_encoder: nn.Module) -> nn.Module:
    """The CLIP text transformer (transformers 4 nests it as `.text_model`, 5.x does not)."""
    return getattr(text_encoder, "text_model", text_encoder)
