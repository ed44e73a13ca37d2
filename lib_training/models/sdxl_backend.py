"""ModelAdapter over SDXL's diffusers/transformers modules (CLI, tests, benchmarks).

What differs from SD 1.x/2.x, each as kohya's sdxl_train_network does it:
* two text encoders: CLIP-L's and bigG's penultimate hidden states, concatenated to a 2048-wide
  context; bigG's pooled (projected) output plus six size numbers per sample feed the UNet's
  `text_time` embedding; bigG's prompt is padded with token 0, not end-of-text;
* UNet module names are SDXL's original (sgm) block paths — kohya's SDXL UNet keeps them, so
  its keys read `lora_unet_input_blocks_4_1_...`, not diffusers' `down_blocks`;
* the VAE encodes in fp32 when fp16 gives inf/NaN (SDXL's VAE overflows in fp16).
"""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

import torch
from torch import nn

from ..lora.targets import TEXT_ENCODER_PREFIX
from .adapter import ModelInfo, SizeConditioning
from .diffusers_backend import DiffusersAdapter, _text_root, named_clip_modules
from .ldm_convert import unet_module_map
from .sd_configs import SDXL_LATENT_SCALE

BIG_G_PAD_TOKEN = 0  # open_clip's tokenizer (A1111, kohya, diffusers' tokenizer_2) pads with 0


class SdxlAdapter(DiffusersAdapter):
    def __init__(self, unet: nn.Module, vae: nn.Module, clip_l: nn.Module, big_g: nn.Module, tokenizer,
                 info: ModelInfo, vae_scaling_factor: float = SDXL_LATENT_SCALE):
        super().__init__(unet, vae, nn.ModuleList([clip_l, big_g]), tokenizer, info, vae_scaling_factor)
        self._sgm_names = {diffusers: sgm for sgm, diffusers in unet_module_map(unet.config).items()}

    @property
    def clip_l(self) -> nn.Module:
        return self._text_encoder[0]

    @property
    def big_g(self) -> nn.Module:
        return self._text_encoder[1]

    def named_unet_modules(self) -> Iterator[tuple[str, nn.Module]]:
        """(sgm path, module) for every UNet module the original layout has."""
        for path, module in self._unet.named_modules():
            if path in self._sgm_names:
                yield self._sgm_names[path], module

    def named_text_encoder_modules(self) -> Iterator[tuple[str, nn.Module]]:
        return named_clip_modules(self.clip_l)

    def text_encoder_parts(self) -> list[tuple[str, Iterator[tuple[str, nn.Module]]]]:
        return [(TEXT_ENCODER_PREFIX + "1", named_clip_modules(self.clip_l)),
                (TEXT_ENCODER_PREFIX + "2", named_clip_modules(self.big_g))]

    def checkpoint_units(self) -> list[nn.Module]:
        units = [m for m in self._unet.modules() if type(m).__name__ in ("ResnetBlock2D", "Transformer2DModel")]
        return units + [layer for te in self._text_encoder for layer in _text_root(te).encoder.layers]

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        return encode_with_fp32_fallback(self._vae, lambda: super(SdxlAdapter, self).encode_images(pixels))

    def encode_prompts(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        ids_l = self.tokenize(prompts)
        ids_g = _pad_after_end(ids_l, self.tokenizer.eos_token_id, BIG_G_PAD_TOKEN)
        hidden_l = self.clip_l(ids_l, output_hidden_states=True).hidden_states[-2]
        out_g = self.big_g(ids_g, output_hidden_states=True)
        return {"context": torch.cat([hidden_l, out_g.hidden_states[-2].to(hidden_l.dtype)], dim=-1),
                "pooled": out_g.text_embeds}

    def predict(self, noisy_latents: torch.Tensor, timesteps: torch.Tensor, cond: dict[str, torch.Tensor],
                sizes: Sequence[SizeConditioning] | None = None) -> torch.Tensor:
        context = cond["context"].to(self.dtype)
        time_ids = torch.tensor([s.as_list() for s in _sizes_or_square(sizes, noisy_latents)],
                                device=context.device, dtype=context.dtype)
        added = {"text_embeds": cond["pooled"].to(self.dtype), "time_ids": time_ids}
        return self._unet(noisy_latents, timesteps, encoder_hidden_states=context, added_cond_kwargs=added).sample


def encode_with_fp32_fallback(vae: nn.Module, encode: Callable[[], torch.Tensor]) -> torch.Tensor:
    """`encode()`, redone with the VAE in fp32 (then put back) when fp16 gave inf/NaN, as A1111's
    NaN fallback does. The retry draws the same posterior noise: the RNG is rewound first."""
    device = next(vae.parameters()).device
    cpu_state = torch.get_rng_state()
    cuda_state = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    latents = encode()
    dtype = next(vae.parameters()).dtype
    if torch.isfinite(latents).all() or dtype == torch.float32:
        return latents
    torch.set_rng_state(cpu_state)
    if cuda_state is not None:
        torch.cuda.set_rng_state(cuda_state, device)
    try:
        vae.to(torch.float32)
        return encode()
    finally:
        vae.to(dtype)


def _pad_after_end(ids: torch.Tensor, eos: int, pad: int) -> torch.Tensor:
    """CLIP-L's ids (padded with end-of-text) -> bigG's (padded with `pad` after the first end-of-text)."""
    positions = torch.arange(ids.shape[1], device=ids.device)
    first_end = (ids == eos).int().argmax(dim=1, keepdim=True)
    return torch.where(positions[None] > first_end, torch.full_like(ids, pad), ids)


def _sizes_or_square(sizes: Sequence[SizeConditioning] | None, latents: torch.Tensor) -> list[SizeConditioning]:
    """Given sizes, or (no bucket known, e.g. sampling) the latent's own size, uncropped."""
    if sizes:
        return list(sizes)
    hw = (latents.shape[-2] * 8, latents.shape[-1] * 8)
    return [SizeConditioning(hw, (0, 0), hw)] * latents.shape[0]
