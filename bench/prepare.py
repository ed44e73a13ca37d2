"""Bench inputs that need our environment (torch, Pillow, scikit-image, transformers).

Run by run_bench.py with our Python:

    python bench/prepare.py dataset <dir>           # kohya folder <dir>/1_sks photo/*.png + .txt
    python bench/prepare.py kohya-tokenizer <dir>   # kohya's --tokenizer_cache_dir: <dir>/openai_clip-vit-large-patch14
                                                    # and (SDXL) <dir>/laion_CLIP-ViT-bigG-14-laion2B-39B-b160k

Both are deterministic and idempotent (an existing complete output is left alone).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# scikit-image sample photos that ship inside the package (no download) and their captions.
PHOTOS = {
    "astronaut": "an astronaut in a white space suit in front of a flag",
    "chelsea": "a tabby cat looking to the side",
    "coffee": "a cup of coffee on a saucer, seen from above",
    "rocket": "a rocket on the launch pad against a blue sky",
    "hubble_deep_field": "a field of distant galaxies in deep space",
    "immunohistochemistry": "a stained tissue sample under a microscope",
    "retina": "a photograph of the back of an eye with blood vessels",
    "camera": "a black and white photo of a man with a camera on a tripod",
}
CONCEPT_FOLDER = "1_sks photo"  # kohya layout: 1 repeat, trigger "sks", class "photo"
SIZE = 512  # square, so both trainers use one square bucket at any bench resolution


def write_dataset(root: Path) -> Path:
    folder = root / CONCEPT_FOLDER
    if folder.is_dir() and len(list(folder.glob("*.png"))) == len(PHOTOS):
        return folder
    import numpy as np
    import skimage.data
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for name, caption in PHOTOS.items():
        array = getattr(skimage.data, name)()
        if array.ndim == 2:
            array = np.stack([array] * 3, axis=-1)
        image = Image.fromarray(np.ascontiguousarray(array[..., :3]).astype(np.uint8), "RGB")
        side = min(image.size)
        left, top = (image.width - side) // 2, (image.height - side) // 2
        image = image.crop((left, top, left + side, top + side)).resize((SIZE, SIZE), Image.LANCZOS)
        image.save(folder / f"{name}.png")
        (folder / f"{name}.txt").write_text(f"sks photo, {caption}\n", encoding="utf-8")
    return folder


# kohya's hub names (library/strategy_sdxl.py TOKENIZER1_PATH / TOKENIZER2_PATH); with
# --tokenizer_cache_dir it loads <dir>/<name with / -> _> (library/strategy_base.py _load_tokenizer).
CLIP_L = "openai/clip-vit-large-patch14"
CLIP_BIGG = "laion/CLIP-ViT-bigG-14-laion2B-39B-b160k"  # SDXL's second text encoder, OpenCLIP ViT-bigG/14


def kohya_tokenizer_dir(cache_dir: Path, hub_name: str) -> Path:
    return cache_dir / hub_name.replace("/", "_")


def _complete(folder: Path) -> bool:
    return all((folder / name).is_file() for name in ("vocab.json", "merges.txt", "tokenizer_config.json"))


def write_kohya_tokenizer(cache_dir: Path) -> Path:
    """The tokenizers kohya loads, in its --tokenizer_cache_dir layout; returns cache_dir.

    Both are built offline from CLIP's BPE file (our clip_tokenizer's bundled copy of open_clip's
    `bpe_simple_vocab_16e6.txt.gz`), with model_max_length 77 as in the hub's tokenizer_config.json
    (kohya reads it as the window). CLIP-L (SD1, SDXL's first encoder) pads with <|endoftext|>.
    OpenCLIP bigG (SDXL's second encoder) has the same vocabulary and merges; its hub tokenizer
    differs only in the pad token, "!" (id 0, as open_clip pads), and kohya sets pad_token_id = 0
    again after loading it.
    """
    write_clip_tokenizer(kohya_tokenizer_dir(cache_dir, CLIP_L), pad_token="<|endoftext|>")
    write_clip_tokenizer(kohya_tokenizer_dir(cache_dir, CLIP_BIGG), pad_token="!")
    return cache_dir


def write_bigg_tokenizer(target: Path) -> Path:
    """laion/CLIP-ViT-bigG-14-laion2B-39B-b160k's tokenizer."""
    return write_clip_tokenizer(target, pad_token="!")


def write_clip_tokenizer(target: Path, pad_token: str) -> Path:
    """vocab.json + merges.txt (what kohya's slow CLIPTokenizer reads) and the tokenizer's config:
    <|startoftext|>/<|endoftext|>, unk <|endoftext|>, `pad_token`, model_max_length 77. An existing
    complete folder is left alone."""
    from transformers import CLIPTokenizer

    from lib_training.models.clip_tokenizer import find_bpe_file, write_tokenizer_files

    if _complete(target):
        return target
    target.mkdir(parents=True, exist_ok=True)
    write_tokenizer_files(find_bpe_file(), target)
    tokenizer = CLIPTokenizer.from_pretrained(str(target), pad_token=pad_token, unk_token="<|endoftext|>",
                                              bos_token="<|startoftext|>", eos_token="<|endoftext|>",
                                              model_max_length=77)
    tokenizer.save_pretrained(str(target))  # transformers 5 writes tokenizer.json beside them
    return target


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("dataset", "kohya-tokenizer"):
        print(__doc__, file=sys.stderr)
        return 2
    what, out = argv[0], Path(argv[1])
    path = write_dataset(out) if what == "dataset" else write_kohya_tokenizer(out)
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
