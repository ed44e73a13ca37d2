"""Tiny ldm `LatentDiffusion` models built with the real `ldm` classes A1111 uses.

The ldm package comes from PyPI's stable-diffusion-sdkit (installed --no-deps in the a1111
test environment); nothing of it is copied here. The text encoder is a tiny random
CLIPTextModel saved to a folder with the offline tokenizer, so ldm's FrozenCLIPEmbedder
loads it with `from_pretrained(<folder>)` and no hub access.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from lib_training.models.clip_tokenizer import load_clip_tokenizer
from lib_training.models.tiny import tiny_text_config

CONTEXT = 32


def unet_params(family: str) -> dict:
    heads = {"num_heads": 8} if family == "sd1" else {"num_head_channels": 4}
    return {
        "image_size": 8, "in_channels": 4, "out_channels": 4, "model_channels": 32,
        "attention_resolutions": [1], "num_res_blocks": 1, "channel_mult": [1, 2],
        "use_spatial_transformer": True, "transformer_depth": 1, "context_dim": CONTEXT,
        # True as in SD2's config: ldm's own reentrant checkpointing must be switched off for LoRA grads.
        "use_checkpoint": True, "legacy": False, "use_linear_in_transformer": family == "sd2", **heads,
    }


def ldm_config(family: str, clip_dir: Path) -> dict:
    ddconfig = {"double_z": True, "z_channels": 4, "resolution": 64, "in_channels": 3, "out_ch": 3, "ch": 32,
                "ch_mult": [1, 1, 1, 1], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}
    return {
        "linear_start": 0.00085, "linear_end": 0.012, "num_timesteps_cond": 1, "log_every_t": 200,
        "timesteps": 1000, "first_stage_key": "jpg", "cond_stage_key": "txt", "image_size": 8, "channels": 4,
        "cond_stage_trainable": False, "conditioning_key": "crossattn", "monitor": "val/loss_simple_ema",
        "scale_factor": 0.18215, "use_ema": False,
        "parameterization": "eps" if family == "sd1" else "v",
        "unet_config": {"target": "ldm.modules.diffusionmodules.openaimodel.UNetModel", "params": unet_params(family)},
        "first_stage_config": {"target": "ldm.models.autoencoder.AutoencoderKL", "params": {
            "embed_dim": 4, "monitor": "val/rec_loss", "ddconfig": ddconfig, "lossconfig": {"target": "torch.nn.Identity"}}},
        "cond_stage_config": {"target": "ldm.modules.encoders.modules.FrozenCLIPEmbedder",
                              "params": {"version": str(clip_dir), "device": "cpu"}},
    }


def write_clip_folder(folder: Path, seed: int = 0) -> Path:
    """A tiny random CLIPTextModel + tokenizer files, loadable with from_pretrained(folder)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    CLIPTextModel(CLIPTextConfig(**tiny_text_config("sd1"))).save_pretrained(folder)
    load_clip_tokenizer().save_pretrained(folder)
    return folder


def _reinit_zeroed(module: torch.nn.Module, seed: int) -> None:
    """ldm zero-initialises output layers (zero_module); give them small random weights so
    the UNet's output depends on every layer and a LoRA visibly changes it."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            if not param.any():
                param.copy_(torch.randn(param.shape, generator=generator) * 0.05)


def build_tiny_ldm(folder: Path, family: str = "sd1", seed: int = 0):
    """A frozen, eval-mode tiny LatentDiffusion (as A1111 leaves one: UNet requires_grad True)."""
    from ldm.models.diffusion.ddpm import LatentDiffusion

    clip_dir = folder / "clip"
    if not (clip_dir / "config.json").exists():
        write_clip_folder(clip_dir, seed)
    torch.manual_seed(seed)
    model = LatentDiffusion(**ldm_config(family, clip_dir))
    _reinit_zeroed(model.model.diffusion_model, seed + 1)
    if family == "sd2":
        model.is_sd2 = True  # A1111 marks the model family this way
    return model.eval()


def remove_clip_folder(folder: Path) -> None:
    shutil.rmtree(folder / "clip", ignore_errors=True)
