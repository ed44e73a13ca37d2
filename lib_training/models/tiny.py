"""Tiny random-weight SD-shaped models: same classes as the real ones, CPU-fast.

Used by the tests and the benchmarks; nothing is downloaded.
"""

from __future__ import annotations

import torch

from .adapter import EPSILON, V_PREDICTION, ModelInfo
from .clip_tokenizer import load_clip_tokenizer
from .diffusers_backend import DiffusersAdapter

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


def tiny_adapter(family: str = "sd1", seed: int = 0, prediction_type: str | None = None) -> DiffusersAdapter:
    configs = {"unet": tiny_unet_config(family), "vae": tiny_vae_config(), "text": tiny_text_config(family)}
    unet, vae, text_encoder = build_models(configs["unet"], configs["vae"], configs["text"], seed)
    prediction = prediction_type or (EPSILON if family == "sd1" else V_PREDICTION)
    info = ModelInfo(family=family, prediction_type=prediction, name=f"tiny-{family}")
    adapter = DiffusersAdapter(unet, vae, text_encoder, load_clip_tokenizer(), info)
    adapter.configs = configs
    return adapter
