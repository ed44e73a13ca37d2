"""Write a random-weight Stable Diffusion checkpoint in the original single-file (ldm) layout.

For tests against a real WebUI and for benchmarks: no real weights can be downloaded here.
The architecture is the real SD1.5 (SD2.x, SDXL base) one unless --tiny is given; layers that
diffusers/ldm create zeroed get small random weights so every layer shapes the output.

    python tools/random_checkpoint.py --out models/Stable-diffusion/random-sd15.safetensors
    python tools/random_checkpoint.py --family sdxl --out models/Stable-diffusion/random-sdxl.safetensors

The real-size SDXL one (6.9 GB in fp16) is built on the meta device and filled in the save dtype,
so it needs about 8 GB of RAM, not the 28 GB an fp32 build would take.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from lib_training.models import sd_configs, tiny  # noqa: E402
from lib_training.models.single_file import save_checkpoint, save_sdxl_checkpoint  # noqa: E402


def make_random_checkpoint(out: Path, family: str = "sd1", seed: int = 0, half: bool = True,
                           tiny_size: bool = False) -> Path:
    if family == "sdxl":
        return make_random_sdxl_checkpoint(out, seed, half, tiny_size)
    if tiny_size:
        configs = {"unet": tiny.tiny_unet_config(family), "vae": tiny.tiny_vae_config(),
                   "text": tiny.tiny_text_config(family)}
    else:
        configs = {"unet": sd_configs.unet_config(family), "vae": sd_configs.vae_config(),
                   "text": sd_configs.text_encoder_config(family).to_dict()}
    unet, vae, text_encoder = tiny.build_models(configs["unet"], configs["vae"], configs["text"], seed)
    _trained_looking_norms(text_encoder, seed)
    dtype = torch.float16 if half else torch.float32
    return save_checkpoint(Path(out), unet, vae, text_encoder, family,
                           configs=configs if tiny_size else None, dtype=dtype)


def make_random_sdxl_checkpoint(out: Path, seed: int = 0, half: bool = True, tiny_size: bool = False) -> Path:
    dtype = torch.float16 if half else torch.float32
    if tiny_size:
        configs = tiny.tiny_sdxl_configs()
        unet, vae, clip_l, big_g = tiny.build_sdxl_models(configs, seed)
    else:
        configs = {"unet": sd_configs.unet_config("sdxl"), "vae": sd_configs.vae_config("sdxl"),
                   "text": sd_configs.text_encoder_config("sdxl").to_dict(),
                   "text_2": sd_configs.sdxl_text_encoder_2_config().to_dict()}
        unet, vae, clip_l, big_g = _random_sdxl_in(configs, dtype, seed)
    for text_encoder in (clip_l, big_g):
        _trained_looking_norms(text_encoder, seed)
    return save_sdxl_checkpoint(Path(out), unet, vae, clip_l, big_g,
                                configs=configs if tiny_size else None, dtype=dtype)


def _random_sdxl_in(configs: dict, dtype: torch.dtype, seed: int):
    """The real SDXL modules built on the meta device, then given random weights directly in `dtype`."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    with torch.device("meta"):
        models = (UNet2DConditionModel(**configs["unet"]), AutoencoderKL(**configs["vae"]),
                  CLIPTextModel(CLIPTextConfig(**configs["text"])),
                  CLIPTextModelWithProjection(CLIPTextConfig(**configs["text_2"])))
    generator = torch.Generator().manual_seed(seed)
    for model in models:
        model.to_empty(device="cpu").to(dtype)
        with torch.no_grad():
            for name, param in model.named_parameters():
                _fill(name, param, generator)
            for name, buffer in model.named_buffers():
                if name.endswith("position_ids"):
                    buffer.copy_(torch.arange(buffer.shape[-1]).expand_as(buffer))
    return models


def _fill(name: str, param: torch.Tensor, generator: torch.Generator) -> None:
    """Norms at 1/0, embeddings N(0, 0.02), weights N(0, 1/fan_in) so activations keep their scale."""
    if param.dim() == 1:
        param.fill_(1.0 if name.endswith("weight") and "norm" in name else 0.0)
        return
    fan_in = param[0].numel() if "embedding" not in name else 2500
    chunk = torch.empty(param.shape, dtype=torch.float32) if param.numel() < 2**24 else None
    if chunk is None:  # big matrices row by row, so no fp32 copy of the whole weight exists
        for row in param:
            row.copy_(torch.randn(row.shape, generator=generator) / fan_in ** 0.5)
    else:
        param.copy_(chunk.normal_(0, 1 / fan_in ** 0.5, generator=generator))


def _trained_looking_norms(text_encoder: torch.nn.Module, seed: int) -> None:
    """Give the text encoder's LayerNorms non-default weights, as a trained CLIP has.

    With weight 1 / bias 0 the conditioning's mean is ~0, and A1111's emphasis step divides
    by that mean: text-encoder gradients through it overflow. Real checkpoints never do that.
    """
    generator = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():
        for module in text_encoder.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.copy_(1 + 0.1 * torch.randn(module.weight.shape, generator=generator))
                module.bias.copy_(0.1 + 0.1 * torch.randn(module.bias.shape, generator=generator))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="the .safetensors file to write")
    parser.add_argument("--family", choices=sd_configs.FAMILIES, default="sd1")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--fp32", action="store_true", help="store fp32 weights (default fp16, half the size)")
    parser.add_argument("--tiny", action="store_true", help="tiny test sizes instead of the real architecture")
    args = parser.parse_args(argv)
    path = make_random_checkpoint(args.out, args.family, args.seed, half=not args.fp32, tiny_size=args.tiny)
    print(f"wrote {path} ({path.stat().st_size / 2**20:.0f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
