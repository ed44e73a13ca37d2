"""ModelAdapter over A1111's loaded SDXL model: an sgm `DiffusionEngine`, used in place.

* UNet: `model.diffusion_model`, an sgm UNetModel whose module paths are SDXL's original block
  names — exactly the names kohya's SDXL keys are made of, so no mapping is needed.
* Text: A1111's wrapped `conditioner` (its CLIP-L and bigG embedders with A1111's prompt
  handling: emphasis, embeddings, prompts over 75 tokens), called with A1111's `sdxl_conds`
  batch. Its `vector` output is bigG's pooled output followed by the size embeddings; the
  adapter keeps the pooled part per caption and re-embeds each sample's own size and crop with
  the conditioner's own `ConcatTimestepEmbedderND`s (the refiner's aesthetic score is refused).
* VAE: `encode_first_stage` as A1111 calls it (scaled latents; fp32 when A1111 keeps the VAE in
  fp32 with --no-half-vae), redone in fp32 when fp16 overflows.

Text-encoder LoRA: UNet only. A1111's bigG is open_clip's, with q/k/v fused in one
`in_proj_weight` of an nn.MultiheadAttention that does not call its projections as modules,
so a forward hook cannot adapt them; kohya also advises against training SDXL's text encoders.
`fit_to_model` switches it off with a note.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch
from torch import nn

from ...errors import CheckpointError
from ...models.adapter import ModelInfo, SizeConditioning
from ...models.sdxl_backend import encode_with_fp32_fallback
from .ldm_adapter import LdmAdapter, capped_prompts

SIZE_KEYS = ("original_size_as_tuple", "crop_coords_top_left", "target_size_as_tuple")
DEFAULT_SIZE = 1024


def is_sgm(sd_model) -> bool:
    return bool(getattr(sd_model, "is_sdxl", False)) or hasattr(sd_model, "conditioner")


def sgm_family(sd_model) -> str:
    """'sdxl' for an SDXL base-architecture model; the refiner and SDXL inpainting are refused."""
    keys = [getattr(e, "input_key", None) for e in getattr(sd_model.conditioner, "embedders", [])]
    if "aesthetic_score" in keys or not all(key in keys for key in SIZE_KEYS):
        raise CheckpointError("The loaded model is an SDXL refiner; LoRA Studio trains SDXL base-architecture "
                              "models (SDXL base, Pony, Illustrious, NoobAI...). Load one and start again.")
    first = sd_model.model.diffusion_model.input_blocks[0][0]
    if getattr(sd_model, "is_sdxl_inpaint", False) or getattr(first, "in_channels", 4) != 4:
        raise CheckpointError("The loaded model is an SDXL inpainting model (extra UNet inputs); load a plain "
                              "text-to-image SDXL checkpoint to train a LoRA.")
    return "sdxl"


class SgmAdapter(LdmAdapter):
    """The engine's view of A1111's SDXL DiffusionEngine."""

    def __init__(self, sd_model, info: ModelInfo, device: torch.device | None = None):
        super().__init__(sd_model, info, device)
        embedders = list(sd_model.conditioner.embedders)
        self._size_embedders = [next(e for e in embedders if getattr(e, "input_key", None) == key)
                                for key in SIZE_KEYS]

    def text_encoder(self) -> nn.Module:
        return self.sd_model.conditioner

    def named_unet_modules(self) -> Iterator[tuple[str, nn.Module]]:
        return self._unet.named_modules()

    def named_text_encoder_modules(self) -> Iterator[tuple[str, nn.Module]]:
        return iter(())

    def text_encoder_parts(self) -> list:
        return []

    @property
    def text_encoder_trainable(self) -> bool:
        return False

    def checkpoint_units(self) -> list[nn.Module]:
        return [m for m in self._unet.modules() if type(m).__name__ in ("ResBlock", "SpatialTransformer")]

    def _size_width(self) -> int:
        return sum(2 * int(e.outdim) for e in self._size_embedders)

    def encode_prompts(self, prompts: Sequence[str]) -> dict[str, torch.Tensor]:
        cond = self.sd_model.conditioner(self._batch(capped_prompts(prompts)))
        vector = cond["vector"]
        return {"context": cond["crossattn"].to(self.device),
                "pooled": vector[:, :vector.shape[1] - self._size_width()].to(self.device)}

    def _batch(self, prompts: list[str], sizes: Sequence[SizeConditioning] | None = None) -> dict:
        """A1111's `sdxl_conds` (its get_learned_conditioning), with each sample's own sizes."""
        square = SizeConditioning((DEFAULT_SIZE,) * 2, (0, 0), (DEFAULT_SIZE,) * 2)  # A1111's txt2img default
        rows = list(sizes) if sizes else [square] * len(prompts)
        batch: dict = {"txt": prompts}
        for index, key in enumerate(SIZE_KEYS):
            batch[key] = torch.tensor([row.as_list()[2 * index:2 * index + 2] for row in rows], device=self.device)
        return batch

    def predict(self, noisy_latents: torch.Tensor, timesteps: torch.Tensor, cond: dict[str, torch.Tensor],
                sizes: Sequence[SizeConditioning] | None = None) -> torch.Tensor:
        if not sizes:
            hw = (noisy_latents.shape[-2] * 8, noisy_latents.shape[-1] * 8)
            sizes = [SizeConditioning(hw, (0, 0), hw)] * noisy_latents.shape[0]
        batch = self._batch([""] * len(sizes), sizes)
        parts = [cond["pooled"]] + [e(batch[key]).to(cond["pooled"]) for e, key in zip(self._size_embedders, SIZE_KEYS)]
        vector = torch.cat(parts, dim=1)
        return self._unet(noisy_latents, timesteps, context=cond["context"].to(self.dtype), y=vector.to(self.dtype))

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        encode = super().encode_images
        return encode_with_fp32_fallback(self.sd_model.first_stage_model, lambda: encode(pixels))
