"""Bench inputs that need our environment (torch, Pillow, scikit-image, transformers).

Run by run_bench.py with our Python:

    python bench/prepare.py dataset <dir>           # kohya folder <dir>/1_sks photo/*.png + .txt
    python bench/prepare.py kohya-tokenizer <dir>   # <dir>/openai_clip-vit-large-patch14 for --tokenizer_cache_dir

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


def write_kohya_tokenizer(cache_dir: Path) -> Path:
    """CLIP's tokenizer where kohya's --tokenizer_cache_dir looks for openai/clip-vit-large-patch14.

    Built offline from open_clip's BPE file by our clip_tokenizer (the same vocabulary);
    model_max_length 77 as in the hub's tokenizer_config.json (kohya reads it as the window).
    """
    from lib_training.models.clip_tokenizer import load_clip_tokenizer

    target = cache_dir / "openai_clip-vit-large-patch14"
    if (target / "vocab.json").is_file() and (target / "tokenizer_config.json").is_file():
        return target
    tokenizer = load_clip_tokenizer()
    tokenizer.model_max_length = 77
    tokenizer.save_pretrained(str(target))
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
