"""Numbers per cell and per (file, weight) from image/text embeddings (see `Embedder`).

Conventions (all cosines are between L2-normalised embeddings):
* fidelity  = mean cosine of the cell image to every training image.
* alignment = CLIP score as torchmetrics/`CLIPScore` computes it: 100 x max(cosine(image, text), 0),
  where the text is the cell's prompt without `<lora:...>` tags and without the trigger words
  (the trigger is a made-up token; the rest of the prompt says what should be in the picture).
* drift     = 1 - cosine between the class-prompt image with the LoRA and the one without it (same
  seed and sampler settings): 0 = the LoRA leaves the class alone.
* diversity = mean over pairs of seeds of (1 - cosine), for the same file, weight, prompt and
  sampler settings; needs at least 2 seeds.
Per (file, weight): fidelity is the mean over prompts other than the class prompt (all prompts
when there is no class prompt), alignment the mean over all cells, drift the mean over the
class-prompt cells, diversity the mean over its (prompt, sampler settings) groups. Weight 0 is
the base model: one group, `file=None`, shared by every file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Protocol, Sequence

import numpy as np
from PIL import Image

from ..errors import DatasetError, LoraStudioError
from .grid import CellRequest, GridCell, LoraFile, format_weight
from .run import GridResult

METRIC_EXPLANATIONS = {
    "fidelity": "Similarity to your training images: mean cosine of image embeddings "
                "(higher = more like the subject).",
    "alignment": "CLIP score: 100 x cosine of the image to its prompt without the trigger word, floored at 0 "
                 "(higher = follows the rest of the prompt).",
    "drift": "How much the LoRA changes the plain class prompt: 1 - cosine to the same seed without the LoRA "
             "(0 = class untouched).",
    "diversity": "Variety across seeds: mean 1 - cosine between seeds (near 0 = every seed gives the same "
                 "picture, a sign of overfitting).",
}


class Embedder(Protocol):
    """Image and text embeddings in one space (CLIP): rows of a float array [N, D]."""

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray: ...

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray: ...


# ---- the four numbers -------------------------------------------------------------------------
def normalize(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float64)
    if vectors.ndim == 1:
        vectors = vectors[None, :]
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float((normalize(a) @ normalize(b).T)[0, 0])


def fidelity_score(image: np.ndarray, training: np.ndarray) -> float:
    return float((normalize(training) @ normalize(image)[0]).mean())


def clip_score(image: np.ndarray, text: np.ndarray) -> float:
    return 100.0 * max(cosine(image, text), 0.0)


def drift_score(with_lora: np.ndarray, without_lora: np.ndarray) -> float:
    return 1.0 - cosine(with_lora, without_lora)


def diversity_score(images: np.ndarray) -> float | None:
    """Mean 1 - cosine over all pairs of rows; None for fewer than two."""
    vectors = normalize(images)
    n = len(vectors)
    if n < 2:
        return None
    sims = vectors @ vectors.T
    upper = sims[np.triu_indices(n, k=1)]
    return float((1.0 - upper).mean())


def alignment_text(prompt: str, trigger_words: Iterable[str]) -> str:
    """The prompt CLIP is scored against: no `<lora:...>`/`<lyco:...>` tags, no trigger words."""
    text = re.sub(r"<(?:lora|lyco|hypernet):[^>]*>", " ", prompt, flags=re.IGNORECASE)
    for word in sorted((w.strip() for w in trigger_words if w.strip()), key=len, reverse=True):
        text = re.sub(rf"(?<!\w){re.escape(word)}(?!\w)", " ", text, flags=re.IGNORECASE)
    text = re.sub(r"\s+", " ", text)
    text = re.sub(r"\s*,(\s*,)+", ",", text)  # ", ," left where a tag was
    return text.strip(" ,")


# ---- tables ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class CellMetrics:
    cell: GridCell
    fidelity: float
    alignment: float
    drift: float | None  # class-prompt cells with a LoRA only


@dataclass(frozen=True)
class GroupMetrics:
    """One (file, weight) choice over all its prompts, seeds and sampler settings."""

    file: LoraFile | None  # None: the base model (weight 0)
    weight: float
    fidelity: float | None
    alignment: float | None
    drift: float | None
    diversity: float | None
    cells: int

    @property
    def label(self) -> str:
        return "base model (weight 0)" if self.file is None else f"{self.file.display} @ {format_weight(self.weight)}"

    @property
    def prompt_tag(self) -> str:
        return "" if self.file is None else f"<lora:{self.file.name}:{format_weight(self.weight)}>"

    def numbers(self) -> dict[str, float | None]:
        return {"fidelity": self.fidelity, "alignment": self.alignment, "drift": self.drift,
                "diversity": self.diversity}


@dataclass(frozen=True)
class MetricsReport:
    cells: tuple[CellMetrics, ...]
    groups: tuple[GroupMetrics, ...]

    @property
    def base(self) -> GroupMetrics | None:
        return next((g for g in self.groups if g.file is None), None)

    def rows(self) -> list[dict]:
        """One dict per group, for a table in the UI."""
        return [{"choice": g.label, "file": str(g.file.path) if g.file else "", "weight": g.weight,
                 **g.numbers(), "cells": g.cells} for g in self.groups]


def compute_metrics(result: GridResult, embedder: Embedder, training_images: Sequence[Path | Image.Image],
                    batch_size: int = 16) -> MetricsReport:
    """Embed the grid's images, the prompts and the training images, then fill the tables."""
    if not training_images:
        raise DatasetError("Fidelity needs the training images, and none were given. Pick the run's dataset folder.")
    training = embed_in_batches(embedder, list(training_images), batch_size, strict=True)
    keys = [c.request.key for c in result.cells] + [b.key for b in result.baselines]
    present = [k for k in dict.fromkeys(keys) if result.images.get(k) is not None]
    embedded = embed_in_batches(embedder, [result.images[k] for k in present], batch_size)
    image_embs = dict(zip(present, embedded))
    texts = sorted({alignment_text(c.request.user_prompt, result.spec.trigger_words) for c in result.cells})
    text_embs = dict(zip(texts, _rows(embedder.embed_texts(texts), len(texts), "embed_texts")))
    return metrics_from_embeddings(result.cells, image_embs, text_embs, training,
                                   result.spec.trigger_words, result.spec.class_prompt)


def metrics_from_embeddings(cells: Sequence[GridCell], image_embs: dict[str, np.ndarray],
                            text_embs: dict[str, np.ndarray], training: np.ndarray,
                            trigger_words: Sequence[str] = (), class_prompt: str = "") -> MetricsReport:
    """The tables from embeddings already computed: `image_embs` by cache key (cells and their
    baselines), `text_embs` by `alignment_text` of the prompt. Cells without an image are skipped."""
    class_prompt = class_prompt.strip()
    per_cell = []
    for cell in cells:
        request = cell.request
        if request.key not in image_embs:
            continue
        emb = image_embs[request.key]
        drift = None
        if class_prompt and request.user_prompt == class_prompt and request.lora is not None:
            base = image_embs.get(request.baseline().key)
            drift = None if base is None else drift_score(emb, base)
        text = text_embs[alignment_text(request.user_prompt, trigger_words)]
        per_cell.append(CellMetrics(cell, fidelity_score(emb, training), clip_score(emb, text), drift))
    groups: dict[tuple, list[CellMetrics]] = {}
    for m in per_cell:
        groups.setdefault(_group_key(m.cell.request), []).append(m)
    table = [_group(members, image_embs, class_prompt) for members in groups.values()]
    return MetricsReport(tuple(per_cell), tuple(table))


def embed_in_batches(embedder: Embedder, images: Sequence[Path | Image.Image], batch_size: int = 16,
                     strict: bool = False) -> np.ndarray:
    """Embeddings [N, D] of images or image files, opening only `batch_size` files at a time.
    `strict`: decode files as the dataset loader does (clear errors for broken training images)."""
    load = _training_image if strict else _open
    parts = []
    for start in range(0, len(images), max(1, batch_size)):
        batch = [load(i) for i in images[start:start + batch_size]]
        parts.append(_rows(embedder.embed_images(batch), len(batch), "embed_images"))
    return np.concatenate(parts) if parts else np.zeros((0, 0))


def _group(members: list[CellMetrics], image_embs: dict, class_prompt: str) -> GroupMetrics:
    request = members[0].cell.request
    instance = [m for m in members if m.cell.request.user_prompt != class_prompt] or members
    drifts = [m.drift for m in members if m.drift is not None]
    by_prompt: dict[tuple, dict[int, np.ndarray]] = {}
    for m in members:
        r = m.cell.request
        by_prompt.setdefault((r.user_prompt, r.sampler, r.steps, r.cfg_scale), {})[r.seed] = image_embs[r.key]
    diversities = [diversity_score(np.stack(list(seeds.values()))) for seeds in by_prompt.values()]
    diversities = [d for d in diversities if d is not None]
    return GroupMetrics(
        file=request.lora, weight=request.weight if request.lora is not None else 0.0,
        fidelity=_mean([m.fidelity for m in instance]), alignment=_mean([m.alignment for m in members]),
        drift=_mean(drifts), diversity=_mean(diversities), cells=len({m.cell.request.key for m in members}))


def _group_key(request: CellRequest) -> tuple:
    return ("base",) if request.lora is None else (str(Path(request.lora.path)), request.weight)


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def _rows(array, expected: int, method: str) -> np.ndarray:
    array = np.asarray(array, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] != expected:
        raise LoraStudioError(f"The embedder's {method} returned shape {array.shape} for {expected} inputs; "
                              "expected [N, D]. This is a bug in the embedder.")
    return array


def _training_image(item: Path | Image.Image) -> Image.Image:
    if isinstance(item, Image.Image):
        return item.convert("RGB")
    from ..data.images import load_rgb  # strict decoding with clear DatasetErrors

    return load_rgb(Path(item))


def _open(item: Path | Image.Image) -> Image.Image:
    if isinstance(item, Image.Image):
        return item.convert("RGB")
    with Image.open(item) as img:
        return img.convert("RGB")
