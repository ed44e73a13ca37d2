"""Model configs for the Stable Diffusion families, written out in code.

Nothing here touches the Hugging Face hub: the values are those of the diffusers
repositories (runwayml SD1.5, stabilityai SD2.x, stabilityai SDXL base 1.0) so that a single-file checkpoint can be
turned into diffusers/transformers models offline.
"""

from __future__ import annotations

from typing import Any

from transformers import CLIPTextConfig

FAMILIES = ("sd1", "sd2", "sdxl")
SDXL_LATENT_SCALE = 0.13025  # SDXL's VAE scaling factor (SD 1.x/2.x: 0.18215)


def check_family(family: str) -> str:
    """Return `family` if it is one we support, else raise ValueError naming the choices."""
    if family not in FAMILIES:
        raise ValueError(f"unknown model family {family!r}; expected one of {', '.join(FAMILIES)}")
    return family


def unet_config(family: str) -> dict[str, Any]:
    """UNet2DConditionModel kwargs of SD1.5 ("sd1"), SD2.x 768 ("sd2") or SDXL base 1.0 ("sdxl")."""
    if check_family(family) == "sdxl":
        return _sdxl_unet_config()
    config: dict[str, Any] = {
        "sample_size": 64,
        "in_channels": 4,
        "out_channels": 4,
        "center_input_sample": False,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        "only_cross_attention": False,
        "block_out_channels": (320, 640, 1280, 1280),
        "layers_per_block": 2,
        "downsample_padding": 1,
        "mid_block_scale_factor": 1,
        "act_fn": "silu",
        "norm_num_groups": 32,
        "norm_eps": 1e-5,
        "cross_attention_dim": 768,
        "attention_head_dim": 8,  # diffusers' name for the number of heads (8 heads in SD1)
        "use_linear_projection": False,
        "upcast_attention": False,
    }
    if family == "sd2":
        config.update(
            sample_size=96,
            cross_attention_dim=1024,
            attention_head_dim=(5, 10, 20, 20),  # 64-channel heads, as num_head_channels=64 in ldm
            use_linear_projection=True,
            # SD2.1 overflows in fp16 attention without it (diffusers sets it for 2.1);
            # it changes only the precision of the softmax, never the weights.
            upcast_attention=True,
        )
    return config


def _sdxl_unet_config() -> dict[str, Any]:
    """stabilityai/stable-diffusion-xl-base-1.0's unet/config.json."""
    return {
        "sample_size": 128,
        "in_channels": 4,
        "out_channels": 4,
        "center_input_sample": False,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        "only_cross_attention": False,
        "block_out_channels": (320, 640, 1280),
        "layers_per_block": 2,
        "downsample_padding": 1,
        "mid_block_scale_factor": 1,
        "act_fn": "silu",
        "norm_num_groups": 32,
        "norm_eps": 1e-5,
        "cross_attention_dim": 2048,
        "transformer_layers_per_block": (1, 2, 10),
        "attention_head_dim": (5, 10, 20),  # 64-channel heads
        "use_linear_projection": True,
        "upcast_attention": False,
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": 256,
        "projection_class_embeddings_input_dim": 2816,  # bigG pooled (1280) + 6 size numbers x 256
    }


def vae_config(family: str = "sd1") -> dict[str, Any]:
    """AutoencoderKL kwargs of the SD VAE (the same network in SD1, SD2 and SDXL; SDXL's latents
    are scaled differently)."""
    return {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ("DownEncoderBlock2D",) * 4,
        "up_block_types": ("UpDecoderBlock2D",) * 4,
        "block_out_channels": (128, 256, 512, 512),
        "layers_per_block": 2,
        "act_fn": "silu",
        "latent_channels": 4,
        "norm_num_groups": 32,
        "sample_size": 512,
        "scaling_factor": SDXL_LATENT_SCALE if family == "sdxl" else 0.18215,
    }


def text_encoder_config(family: str) -> CLIPTextConfig:
    """CLIPTextConfig of the text encoder: OpenAI ViT-L/14 (sd1, and SDXL's first) or OpenCLIP ViT-H (sd2)."""
    check_family(family)
    # Token ids as in the diffusers SD repos; eos_token_id=2 keeps transformers' argmax
    # pooling, which is right for the CLIP tokenizer (eos is the largest id).
    common: dict[str, Any] = {
        "vocab_size": 49408,
        "max_position_embeddings": 77,
        "layer_norm_eps": 1e-5,
        "attention_dropout": 0.0,
        "dropout": 0.0,
        "initializer_range": 0.02,
        "initializer_factor": 1.0,
        "bos_token_id": 0,
        "eos_token_id": 2,
        "pad_token_id": 1,
    }
    if family in ("sd1", "sdxl"):
        return CLIPTextConfig(
            hidden_size=768,
            intermediate_size=3072,
            num_hidden_layers=12,
            num_attention_heads=12,
            hidden_act="quick_gelu",
            projection_dim=768,
            **common,
        )
    # SD2 conditions on the penultimate layer of the 24-layer OpenCLIP text tower, so the
    # diffusers model simply has 23 layers (its final_layer_norm is OpenCLIP's ln_final).
    return CLIPTextConfig(
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=23,
        num_attention_heads=16,
        hidden_act="gelu",
        projection_dim=1024,
        **common,
    )


def sdxl_text_encoder_2_config() -> CLIPTextConfig:
    """SDXL's second text encoder, OpenCLIP ViT-bigG/14, as a CLIPTextModelWithProjection config.
    All 32 layers: SDXL reads the penultimate hidden state and pools the last."""
    return CLIPTextConfig(
        vocab_size=49408, max_position_embeddings=77, layer_norm_eps=1e-5, attention_dropout=0.0, dropout=0.0,
        initializer_range=0.02, initializer_factor=1.0, bos_token_id=0, eos_token_id=2, pad_token_id=1,
        hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
        hidden_act="gelu", projection_dim=1280,
    )


def scheduler_kwargs(family: str) -> dict[str, Any]:
    """DDPMScheduler kwargs of the SD training noise schedule (same for sd1 and sd2)."""
    check_family(family)
    return {
        "num_train_timesteps": 1000,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "clip_sample": False,  # SD's schedulers never clip; only matters when sampling
    }
