"""ModelAdapter over an ldm `LatentDiffusion` — the model object A1111 keeps loaded.

Nothing is copied or converted: the UNet, text encoder and VAE are the loaded modules,
and LoRA hooks go on them directly. Module names are translated to diffusers paths so
the saved file has kohya's keys. Works on a plain ldm model (tests) and on A1111's
hijacked one (where `cond_stage_model` is A1111's prompt wrapper).
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import lru_cache
from typing import Callable, Iterator, Sequence

import torch
from torch import nn

from ...data.captions import cap_caption
from ...data.health import clip_token_counter
from ...errors import CheckpointError
from ...lora.targets import TEXT_ENCODER_PREFIX
from ...models.adapter import EPSILON, V_PREDICTION, ModelInfo, SizeConditioning
from ...models.fp8 import compute_dtype
from ...train.cpu_autocast import cuda_like_norms
from .ldm_names import named_unet_modules


MAX_PROMPT_TOKENS = 225  # three of A1111's 75-token chunks, kohya's longest max_token_length


def capped_prompts(prompts: Sequence[str]) -> list[str]:
    """Captions as A1111's prompt wrapper gets them: cut at a tag after MAX_PROMPT_TOKENS tokens.

    The wrapper encodes any length in 75-token chunks; a scraped caption of 3,000 tags became 120
    text-encoder passes held for the backward and took the WebUI process past 24 GB."""
    count = _token_counter()
    return [cap_caption(prompt, count, MAX_PROMPT_TOKENS) for prompt in prompts]


@lru_cache(maxsize=1)
def _token_counter() -> Callable[[str], int]:
    return clip_token_counter()[0]


def ldm_family(sd_model) -> str:
    """'sd1' or 'sd2' from the loaded model's parts; anything else is refused."""
    if getattr(sd_model, "is_sdxl", False) or hasattr(sd_model, "conditioner"):
        raise CheckpointError("The loaded model is SDXL (an sgm DiffusionEngine): the SDXL backend "
                              "(sgm_adapter.SgmAdapter) trains it, not the ldm one.")
    if getattr(sd_model.model, "conditioning_key", "crossattn") != "crossattn":
        raise CheckpointError("The loaded model is an inpainting or instruct-pix2pix model (extra UNet inputs); "
                              "load a plain text-to-image checkpoint to train a LoRA.")
    if getattr(sd_model, "is_sd2", False):
        return "sd2"
    context_dim = getattr(sd_model.model.diffusion_model, "context_dim", None)
    encoder = _clip_transformer(sd_model.cond_stage_model)
    if encoder is None or context_dim == 1024:
        return "sd2"
    return "sd1"


def unwrapped_key(key: str) -> str:
    """'cond_stage_model.wrapped.transformer...token_embedding.wrapped.weight' -> the checkpoint's key."""
    return ".".join(part for part in key.split(".") if part != "wrapped")


def prediction_type(sd_model) -> str:
    return V_PREDICTION if getattr(sd_model, "parameterization", "eps") == "v" else EPSILON


def _clip_transformer(cond_stage_model: nn.Module) -> nn.Module | None:
    """The HF CLIPTextModel inside ldm's FrozenCLIPEmbedder (A1111 wraps it as `.wrapped`)."""
    inner = getattr(cond_stage_model, "wrapped", cond_stage_model)
    transformer = getattr(inner, "transformer", None)
    return transformer if hasattr(transformer, "text_model") else None


class LdmAdapter:
    """The engine's view of an ldm LatentDiffusion. `info` says where it came from."""

    def __init__(self, sd_model, info: ModelInfo, device: torch.device | None = None):
        self.sd_model = sd_model
        self.info = info
        self._unet = sd_model.model.diffusion_model
        self.device = torch.device(device) if device is not None else next(self._unet.parameters()).device
        self.dtype = compute_dtype(self._unet)  # fp16 beside A1111's fp8-stored layers
        # A1111 may replace alphas_cumprod for sampling (e.g. zero terminal SNR); train on the original.
        schedule = getattr(sd_model, "alphas_cumprod_original", None)
        if schedule is None:
            schedule = sd_model.alphas_cumprod
        self._alphas_cumprod = schedule.detach().to(self.device, torch.float32)

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        return self._alphas_cumprod

    def unet(self) -> nn.Module:
        return self._unet

    def text_encoder(self) -> nn.Module:
        return self.sd_model.cond_stage_model

    def named_unet_modules(self) -> Iterator[tuple[str, nn.Module]]:
        return named_unet_modules(self._unet)

    def named_text_encoder_modules(self) -> Iterator[tuple[str, nn.Module]]:
        transformer = _clip_transformer(self.sd_model.cond_stage_model)
        if transformer is None:  # SD2's open_clip: see `text_encoder_trainable`
            return iter(())
        return transformer.named_modules()

    def text_encoder_parts(self) -> list[tuple[str, Iterator[tuple[str, nn.Module]]]]:
        return [(TEXT_ENCODER_PREFIX, self.named_text_encoder_modules())]

    @property
    def text_encoder_trainable(self) -> bool:
        """SD2's OpenCLIP packs q/k/v into one MultiheadAttention; only SD1's CLIP gets a LoRA so far."""
        return _clip_transformer(self.sd_model.cond_stage_model) is not None

    def checkpoint_units(self) -> list[nn.Module]:
        units = [m for m in self._unet.modules() if type(m).__name__ in ("ResBlock", "SpatialTransformer")]
        transformer = _clip_transformer(self.sd_model.cond_stage_model)
        if transformer is not None:
            units += list(transformer.text_model.encoder.layers)
        return units

    def original_layout_state_dict(self, value: Callable[[torch.Tensor], torch.Tensor] = lambda t: t
                                   ) -> dict[str, torch.Tensor]:
        """The loaded model as a checkpoint file holds it (a full fine-tune's output): A1111's wrappers
        (`cond_stage_model.wrapped`, the embeddings' `token_embedding.wrapped`) taken out of the names,
        the schedule as trained on. `value` maps each weight to what is written (the trainer's masters)."""
        state = {unwrapped_key(k): value(v) for k, v in self.sd_model.state_dict(keep_vars=True).items()}
        original = getattr(self.sd_model, "alphas_cumprod_original", None)
        if original is not None and "alphas_cumprod" in state:
            state["alphas_cumprod"] = original
        return state

    @contextmanager
    def prepared_for_training(self) -> Iterator[None]:
        """ldm's own checkpointing (`use_checkpoint`) is a reentrant autograd Function that
        differentiates only the block's own parameters: LoRA weights would get no gradient.
        It is switched off here; the engine's non-reentrant checkpointing replaces it."""
        flags = [(m, attr, getattr(m, attr)) for m in self._unet.modules()
                 for attr in ("checkpoint", "use_checkpoint") if isinstance(getattr(m, attr, None), bool)]
        try:
            for module, attr, _ in flags:
                setattr(module, attr, False)
            yield
        finally:
            for module, attr, value in flags:
                setattr(module, attr, value)

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        vae_dtype = next(self.sd_model.first_stage_model.parameters()).dtype
        with self._vae_autocast(vae_dtype):
            posterior = self.sd_model.encode_first_stage(pixels.to(self.device, vae_dtype))
            return self.sd_model.get_first_stage_encoding(posterior).float()

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        vae_dtype = next(self.sd_model.first_stage_model.parameters()).dtype
        with self._vae_autocast(vae_dtype):
            return self.sd_model.decode_first_stage(latents.to(self.device, vae_dtype)).float().clamp(-1, 1)

    @contextmanager
    def _vae_autocast(self, vae_dtype: torch.dtype) -> Iterator[None]:
        """A half-precision VAE runs as A1111 runs it, under autocast: ldm's GroupNorm32 feeds its half
        norm an fp32 input, which only autocast's fp32 rule for norms (made explicit on the CPU) accepts."""
        if vae_dtype not in (torch.float16, torch.bfloat16):
            yield
            return
        with torch.autocast(self.device.type, dtype=vae_dtype), cuda_like_norms([self.sd_model.first_stage_model], True):
            yield

    def encode_prompts(self, prompts: Sequence[str]) -> torch.Tensor:
        # In A1111 this is its prompt wrapper: clip skip, (emphasis:1.1), embeddings and
        # prompts over 75 tokens behave exactly as in txt2img.
        cond = self.sd_model.cond_stage_model(capped_prompts(prompts))
        return cond.to(self.device)

    def predict(self, noisy_latents: torch.Tensor, timesteps: torch.Tensor, cond: torch.Tensor,
                sizes: Sequence[SizeConditioning] | None = None) -> torch.Tensor:
        return self._unet(noisy_latents, timesteps, context=cond.to(self.dtype))
