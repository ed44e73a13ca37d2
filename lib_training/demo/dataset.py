"""The demo's Dataset step: a kohya project folder for the held-out concept, with class images made
by the Dataset tab's own class-image code (`data/class_images.py`) and the toy base as the generator."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from ..data.class_images import ClassImageSettings, GenerationRequest, generate_class_images
from ..errors import TrainingError
from . import world
from .base_model import CFG, QualityAdapter, sample
from .recipe import CLASS_WORD, CONCEPT_COLOUR, CONCEPT_PROMPT, CONCEPT_SHAPE, TRIGGER, DemoSize


def to_png(pixels: np.ndarray) -> Image.Image:
    """(32, 32, 3) uint8 -> the 64x64 image the dataset holds (the adapter's 2x box "VAE" reads it back)."""
    return Image.fromarray(pixels).resize((world.SIZE * 2, world.SIZE * 2), Image.NEAREST)


def to_pixels(images) -> np.ndarray:
    """The sampler's (N, 3, 32, 32) in [-1, 1] -> (N, 32, 32, 3) uint8."""
    return ((images.permute(0, 2, 3, 1).numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)


def write_project(root: Path, model: QualityAdapter, size: DemoSize, seed: int) -> Path:
    """`root/img/<repeats>_sks shape/` (blue stars, half the captions naming the background) + `root/reg/`."""
    rng = np.random.default_rng(seed)
    folder = root / "img" / f"{size.repeats}_{TRIGGER} {CLASS_WORD}"
    folder.mkdir(parents=True)
    for i in range(size.images):
        scene = world.random_scene(rng, (CONCEPT_SHAPE,), (CONCEPT_COLOUR,))
        to_png(world.render(scene)).save(folder / f"{i:03d}.png")
        caption = CONCEPT_PROMPT if i % 2 == 0 else f"{CONCEPT_PROMPT} on a {scene.background} background"
        (folder / f"{i:03d}.txt").write_text(caption, encoding="utf-8")
    settings = ClassImageSettings(class_word=CLASS_WORD, trigger=TRIGGER, from_captions=True,
                                  per_image=size.class_per_image, steps=20, cfg_scale=CFG, width=64, height=64,
                                  seed=seed + 1000, batch_size=32)
    result = generate_class_images(root, settings, base_model_generator(model))
    if not result.complete:
        raise TrainingError(result.message())
    return root


def base_model_generator(model: QualityAdapter):
    """The Dataset tab's `Generate` callable, drawing with the toy base (DDIM, CFG as requested)."""
    def generate(request: GenerationRequest) -> list[Image.Image]:
        images = sample(model, [request.prompt] * len(request.seeds), request.seeds, request.steps, request.cfg_scale)
        return [to_png(p) for p in to_pixels(images)]
    return generate
