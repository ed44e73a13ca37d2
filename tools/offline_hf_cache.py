"""Put `openai/clip-vit-large-patch14`'s tokenizer and config into the Hugging Face cache, offline.

A1111 builds SD1's text encoder (ldm's FrozenCLIPEmbedder) and SDXL's first one (sgm's) with
`CLIPTokenizer.from_pretrained("openai/clip-vit-large-patch14")` and a `CLIPTextModel` from that
id's config; with no hub to reach (HF_HUB_OFFLINE=1) both must already be in the cache. The
tokenizer is built from the BPE vocabulary open_clip ships (the same one), the config is
ViT-L/14's; no weights are needed (they come from the checkpoint).

    python tools/offline_hf_cache.py            # into $HF_HUB_CACHE (~/.cache/huggingface/hub)
    python tools/offline_hf_cache.py --cache DIR
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MODEL_ID = "openai/clip-vit-large-patch14"
REVISION = "0" * 40  # any commit-like name: offline, the cache's refs/main just has to point at it
VISION = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
              image_size=224, patch_size=14)  # ViT-L/14's image tower, for a complete CLIPConfig


def default_cache() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def write_clip_l(cache: Path) -> Path:
    """refs/main + snapshots/<rev>/{vocab.json, merges.txt, tokenizer_config.json, config.json, ...}."""
    from transformers import CLIPConfig

    from lib_training.models.clip_tokenizer import load_clip_tokenizer
    from lib_training.models.sd_configs import text_encoder_config

    repo = cache / ("models--" + MODEL_ID.replace("/", "--"))
    snapshot = repo / "snapshots" / REVISION
    snapshot.mkdir(parents=True, exist_ok=True)
    tokenizer = load_clip_tokenizer()
    tokenizer.model_max_length = 77  # as the hub's tokenizer_config.json says
    tokenizer.save_pretrained(str(snapshot))
    text = text_encoder_config("sd1").to_dict()
    CLIPConfig(text_config=text, vision_config=VISION, projection_dim=768).save_pretrained(str(snapshot))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(REVISION)
    return snapshot


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cache", type=Path, default=None, help="the hub cache folder (default: HF_HUB_CACHE)")
    args = parser.parse_args(argv)
    print(f"wrote {write_clip_l(args.cache or default_cache())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
