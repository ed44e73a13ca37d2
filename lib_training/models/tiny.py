"""Tiny random-weight SD-shaped models: same classes as the real ones, CPU-fast.

Used by the tests and the benchmarks; nothing is downloaded.
"""

from __future__ import annotations

import torch

from .adapter import EPSILON, V_PREDICTION, ModelInfo
from .clip_tokenizer import load_clip_tokenizer
from .diffusers_backend import DiffusersAdapter
from .sd_configs import SDXL_LATENT_SCALE
from .sdxl_backend import SdxlAdapter

CLIP_VOCAB = 49408


def tiny_unet_config(family: str = "sd1") -> dict:
    cross = 32
    return dict(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross, attention_head_dim=8 if family == "sd1" else (4, 8),
        use_linear_projection=family == "sd2", norm_num_groups=8,
    )


def tiny_vae_config() -> dict:
    return dict(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1,
        block_out_channels=(16, 32, 32, 32),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        norm_num_groups=8, sample_size=64,
    )


def tiny_text_config(family: str = "sd1") -> dict:
    return dict(
        vocab_size=CLIP_VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, projection_dim=32,
        hidden_act="quick_gelu" if family == "sd1" else "gelu",
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
    )


def build_models(unet_config: dict, vae_config: dict, text_config: dict, seed: int = 0):
    """(unet, vae, text_encoder) with random weights, in eval mode, frozen."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**unet_config)
    _reinit_zero_outputs(unet)
    vae = AutoencoderKL(**vae_config)
    text_encoder = CLIPTextModel(CLIPTextConfig(**text_config))
    for module in (unet, vae, text_encoder):
        module.eval().requires_grad_(False)
    return unet, vae, text_encoder


def _reinit_zero_outputs(unet: torch.nn.Module) -> None:
    """Diffusers zero-initialises some output layers; give them small random weights so
    outputs depend on every layer (a real checkpoint's weights are never zero)."""
    generator = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for param in unet.parameters():
            if param.dim() > 1 and not param.any():
                param.copy_(torch.randn(param.shape, generator=generator) * 0.02)


def tiny_sdxl_unet_config() -> dict:
    """SDXL's shape in miniature: no attention at the first level, deeper transformers further
    down, linear projections, and the `text_time` embedding of pooled text + six size numbers."""
    return dict(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2), attention_head_dim=(4, 8),
        cross_attention_dim=64, use_linear_projection=True, norm_num_groups=8,
        addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=32 + 6 * 8,
    )


def tiny_sdxl_configs() -> dict:
    """unet / vae / CLIP-L ("text") / bigG ("text_2") kwargs of a tiny SDXL."""
    big_g = {**tiny_text_config("sd2"), "projection_dim": 32}
    return {"unet": tiny_sdxl_unet_config(), "vae": {**tiny_vae_config(), "scaling_factor": SDXL_LATENT_SCALE},
            "text": tiny_text_config("sd1"), "text_2": big_g}


def build_sdxl_models(configs: dict, seed: int = 0):
    """(unet, vae, clip_l, big_g) with random weights, in eval mode, frozen."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    unet, vae, clip_l = build_models(configs["unet"], configs["vae"], configs["text"], seed)
    big_g = CLIPTextModelWithProjection(CLIPTextConfig(**configs["text_2"])).eval().requires_grad_(False)
    return unet, vae, clip_l, big_g


def tiny_sdxl_adapter(seed: int = 0, prediction_type: str = EPSILON) -> SdxlAdapter:
    unet, vae, clip_l, big_g = build_sdxl_models(tiny_sdxl_configs(), seed)
    info = ModelInfo(family="sdxl", prediction_type=prediction_type, name="tiny-sdxl")
    return SdxlAdapter(unet, vae, clip_l, big_g, load_clip_tokenizer(), info)


def tiny_adapter(family: str = "sd1", seed: int = 0, prediction_type: str | None = None) -> DiffusersAdapter:
    if family == "sdxl":
        return tiny_sdxl_adapter(seed, prediction_type or EPSILON)
    configs = {"unet": tiny_unet_config(family), "vae": tiny_vae_config(), "text": tiny_text_config(family)}
    unet, vae, text_encoder = build_models(configs["unet"], configs["vae"], configs["text"], seed)
    prediction = prediction_type or (EPSILON if family == "sd1" else V_PREDICTION)
    info = ModelInfo(family=family, prediction_type=prediction, name=f"tiny-{family}")
    adapter = DiffusersAdapter(unet, vae, text_encoder, load_clip_tokenizer(), info)
    adapter.configs = configs
    return adapter
