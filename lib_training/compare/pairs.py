""""Dataset vs generated": each training image beside the image its caption gives with the LoRA.

Seed policy: the grid's, a fixed seed — every caption is generated with `PairSpec.seed`, so two
LoRA files (or weights) are compared on identical noise. Images go through the same cache as the
grid cells. Fidelity of a pair is the cosine between the two images' embeddings (1 = same
picture to CLIP); the picture lays pairs out `columns` per row, training image left, generated
right, caption and fidelity below.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw

from ..errors import DatasetError
from .cache import lora_hashes
from .grid import CellRequest, Generator, LoraFile
from .metrics import Embedder, cosine, embed_in_batches
from .run import Cancel, ProgressSink, generate_cached
from .text import BACKGROUND, PAD, draw_lines, line_height, wrap


@dataclass(frozen=True)
class PairSpec:
    lora: LoraFile
    weight: float
    base_model_hash: str
    seed: int = 1
    sampler: str = "Euler a"
    steps: int = 20
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    negative_prompt: str = ""
    base_model_name: str = ""
    extra: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class DatasetPair:
    training_image: Path
    caption: str
    request: CellRequest
    generated: Path | None  # None when cancelled before it was made
    fidelity: float | None


@dataclass(frozen=True)
class DatasetComparison:
    pairs: tuple[DatasetPair, ...]
    image: Image.Image
    complete: bool

    @property
    def mean_fidelity(self) -> float | None:
        values = [p.fidelity for p in self.pairs if p.fidelity is not None]
        return sum(values) / len(values) if values else None


def dataset_vs_generated(items: Sequence[tuple[Path, str]], spec: PairSpec, generator: Generator,
                         embedder: Embedder, cache_dir: Path, on_progress: ProgressSink | None = None,
                         cancel: Cancel | None = None, thumb: int = 256, columns: int = 2) -> DatasetComparison:
    """`items`: (training image, caption) — e.g. `[(i.path, i.caption) for i in dataset.train_items]`."""
    if not items:
        raise DatasetError("There are no training images to compare with. Pick the run's dataset folder.")
    if not spec.base_model_hash.strip():
        raise DatasetError("Dataset vs generated needs the base model hash, so cached images of different "
                           "checkpoints are never mixed up.")
    hashes = lora_hashes(cache_dir, [spec.lora.path])[Path(spec.lora.path)]
    weight = float(spec.weight)
    requests = [CellRequest(
        lora=spec.lora if weight != 0 else None, lora_sha256=hashes.sha256 if weight != 0 else "",
        lora_addnet_hash=hashes.addnet if weight != 0 else "", weight=weight if weight != 0 else 0.0,
        user_prompt=caption.strip(), negative_prompt=spec.negative_prompt, seed=int(spec.seed),
        sampler=spec.sampler, steps=int(spec.steps), cfg_scale=float(spec.cfg_scale), width=spec.width,
        height=spec.height, base_model_hash=spec.base_model_hash.strip(), base_model_name=spec.base_model_name,
        extra=tuple(spec.extra)) for _, caption in items]
    images, _, _, complete = generate_cached(requests, generator, cache_dir, on_progress, cancel)
    done = [i for i, r in enumerate(requests) if r.key in images]
    training = embed_in_batches(embedder, [Path(items[i][0]) for i in done], strict=True)
    generated = embed_in_batches(embedder, [images[requests[i].key] for i in done])
    fidelity = {i: cosine(t, g) for i, t, g in zip(done, training, generated)}
    pairs = tuple(DatasetPair(Path(path), caption, r, images.get(r.key), fidelity.get(i))
                  for i, ((path, caption), r) in enumerate(zip(items, requests)))
    return DatasetComparison(pairs, draw_pairs(pairs, thumb, columns), complete)


def draw_pairs(pairs: Sequence[DatasetPair], thumb: int = 256, columns: int = 2) -> Image.Image:
    from ..data.images import load_rgb

    columns = max(1, min(columns, len(pairs)))
    pair_w, caption_h = 2 * thumb + PAD, 3 * line_height() + 2 * PAD
    cell_w, cell_h = pair_w + 4 * PAD, thumb + caption_h + 2 * PAD
    rows = math.ceil(len(pairs) / columns)
    canvas = Image.new("RGB", (columns * cell_w, rows * cell_h), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for n, pair in enumerate(pairs):
        x, y = (n % columns) * cell_w + 2 * PAD, (n // columns) * cell_h + PAD
        canvas.paste(_fit(load_rgb(pair.training_image), thumb), (x, y))
        if pair.generated is not None:
            with Image.open(pair.generated) as img:
                canvas.paste(_fit(img.convert("RGB"), thumb), (x + thumb + PAD, y))
        else:
            draw.rectangle((x + thumb + PAD, y, x + 2 * thumb + PAD - 1, y + thumb - 1), fill=(200, 200, 200))
        score = f"fidelity {pair.fidelity:.3f}" if pair.fidelity is not None else "not generated"
        lines = wrap(f"{pair.training_image.name}: {score}", pair_w, 1) + wrap(pair.caption, pair_w, 2)
        draw_lines(draw, lines, (x, y + thumb, x + pair_w, y + thumb + caption_h), align="left")
    return canvas


def _fit(image: Image.Image, size: int) -> Image.Image:
    """`image` scaled to fit a size x size square, centred on white."""
    image = image.copy()
    image.thumbnail((size, size), Image.LANCZOS)
    square = Image.new("RGB", (size, size), BACKGROUND)
    square.paste(image, ((size - image.width) // 2, (size - image.height) // 2))
    return square
