"""Scores of a model's samples, read by the judge."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

import world
from base_model import CFG, QualityAdapter, sample
from judge import Judge, read


def seen_prompts() -> list[tuple[str, str, str]]:
    """(prompt, shape, colour) for every seen shape x colour."""
    return [(f"a {c} {s}", s, c) for s in world.SEEN_SHAPES for c in world.COLOURS]


@dataclass
class SeenAccuracy:
    both: float  # shape and colour right
    shape: float
    colour: float
    n: int


def seen_accuracy(model: QualityAdapter, judge: Judge, per_prompt: int = 8, seed: int = 1,
                  steps: int = 20, cfg: float = CFG) -> tuple[SeenAccuracy, torch.Tensor]:
    """Accuracy on 'a <colour> <shape>' for the seen shapes; also returns the images (same-seed comparisons)."""
    items = [p for p in seen_prompts() for _ in range(per_prompt)]
    images = sample(model, [p for p, _, _ in items], seed, steps, cfg)
    r = read(judge, images)
    shape_ok = np.array([a == s for a, (_, s, _) in zip(r.shape, items)])
    colour_ok = np.array([a == c for a, (_, _, c) in zip(r.colour, items)])
    return SeenAccuracy(float((shape_ok & colour_ok).mean()), float(shape_ok.mean()), float(colour_ok.mean()),
                        len(items)), images


def fraction(model: QualityAdapter, judge: Judge, prompt: str, n: int, seed: int, shape: str,
             colour: str | None = None, steps: int = 20, cfg: float = CFG) -> tuple[float, torch.Tensor]:
    """Share of `n` samples of `prompt` the judge reads as `shape` (and `colour`, when given)."""
    images = sample(model, [prompt] * n, seed, steps, cfg)
    r = read(judge, images)
    ok = [s == shape and (colour is None or c == colour) for s, c in zip(r.shape, r.colour)]
    return float(np.mean(ok)), images
