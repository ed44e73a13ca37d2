"""The demo's Compare step: Compare's own grid, numbers and recommendation (`lib_training/compare`), with
the toy base as the generator and the judge as the embedder; and the judge's own reading of each choice.

The judge embeds an image as what it sees — its shape, colour and background probabilities — and a prompt
as the words it names, so Compare's fidelity (similarity to the training images), alignment, drift and
diversity mean here what they mean with CLIP on a real model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from ..compare.cache import lora_hashes
from ..compare.grid import CellRequest, GridSpec, LoraFile, baseline_requests, plan_cells
from ..compare.layout import save_grid
from ..compare.metrics import MetricsReport, compute_metrics
from ..compare.recommend import Recommendation, recommend
from ..compare.run import run_grid
from ..lora.io import load_lora
from ..lora.network import LoraNetwork, NetworkShape
from . import world
from .base_model import QualityAdapter, sample
from .dataset import to_pixels, to_png
from .judge import Judge, read
from .recipe import CLASS_PROMPT, CONCEPT_COLOUR, CONCEPT_PROMPT, CONCEPT_SHAPE, SEEN_PROMPTS, TRIGGER

WEIGHTS = (0.0, 0.5, 1.0)
SEEDS = (1, 2)
STEPS = 10  # DDIM steps: half the toy's usual 20, the samples still read right (the demo's time goes to sampling)


class ToyGenerator:
    """Compare's `Generator`: one image per request, the LoRA merged at the request's weight.

    `prefetch` draws many requests in one batch per (file, weight) — the same pixels as one by one,
    since each image's noise comes from its own seed — and `generate` then hands them out.
    """

    def __init__(self, model: QualityAdapter, shape: NetworkShape):
        self.model, self.shape = model, shape
        self._networks: dict[Path, LoraNetwork] = {}
        self._ready: dict[str, Image.Image] = {}

    def prefetch(self, requests: Sequence[CellRequest]) -> None:
        groups: dict[tuple, list[CellRequest]] = {}
        for r in requests:
            lora = Path(r.lora.path) if r.lora is not None and r.weight != 0 else None
            groups.setdefault((lora, r.weight if lora else 0.0, r.steps), []).append(r)
        for (lora, weight, steps), members in groups.items():
            pixels = self.images(lora, weight, [r.user_prompt for r in members], [r.seed for r in members], steps)
            for r, image in zip(members, to_pixels(pixels)):
                self._ready[r.key] = to_png(image)

    def network(self, path: Path) -> LoraNetwork:
        if path not in self._networks:
            network = LoraNetwork.for_model(self.model, self.shape)
            network.load_kohya_state_dict(load_lora(path)[0], source=str(path))
            self._networks[path] = network.eval()
        return self._networks[path]

    def images(self, lora: Path | None, weight: float, prompts: Sequence[str], seed: int | Sequence[int],
               steps: int = STEPS) -> torch.Tensor:
        if lora is None or weight == 0:
            return sample(self.model, prompts, seed, steps)
        network = self.network(lora)
        network.set_multiplier(weight)
        with network.merged():
            return sample(self.model, prompts, seed, steps)

    def generate(self, request: CellRequest) -> Image.Image:
        if request.key in self._ready:
            return self._ready.pop(request.key)
        lora = Path(request.lora.path) if request.lora is not None else None
        pixels = self.images(lora, request.weight, [request.user_prompt], [request.seed], request.steps)
        return to_png(to_pixels(pixels)[0])


class JudgeEmbedder:
    """Compare's `Embedder`: images as the judge's probabilities, prompts as the words they name.

    One block per judge head (shape, colour, background, fill) on both sides, so the two align.
    """

    def __init__(self, judge: Judge):
        self.judge = judge

    @torch.no_grad()
    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        small = [np.asarray(i.convert("RGB").resize((world.SIZE, world.SIZE), Image.BOX)) for i in images]
        pixels = torch.from_numpy(np.stack(small)).permute(0, 3, 1, 2).float() / 127.5 - 1
        return torch.cat([logits.softmax(1) for logits in self.judge(pixels)], 1).numpy()

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        rows = []
        for text in texts:
            words = text.lower().split()
            rows.append(np.concatenate([_named(words, names) for names in
                                        (world.SHAPES, world.COLOURS, world.BACKGROUNDS, world.FILLS)]))
        return np.stack(rows)


def _named(words: list[str], names: Sequence[str]) -> np.ndarray:
    hits = np.array([1.0 if name in words else 0.0 for name in names])
    return hits if hits.any() else np.full(len(names), 1.0 / len(names))


@dataclass(frozen=True)
class JudgeScore:
    """What the judge reads in many samples of one (file, weight) choice."""

    label: str
    file: Path | None
    weight: float
    fidelity: float  # share of "a sks shape" samples drawn as a blue star
    seen: float  # share of the seen prompts' samples drawn right (shape and colour)
    belief: float  # the judge's mean probability of "blue star" in the "a sks shape" samples (moves first)


@dataclass
class CompareOutcome:
    grid: Path
    shown: list[Path]  # the files in the grid and the judge's table
    report: MetricsReport
    pick: Recommendation
    judge_scores: list[JudgeScore]
    judge_best: JudgeScore


def compare(model: QualityAdapter, judge: Judge, files: list[Path], training_images: list[Path], out: Path,
            shape: NetworkShape, judge_samples: int) -> CompareOutcome:
    generator = ToyGenerator(model, shape)
    shown = files[1::2] if len(files) > 2 else files  # every other epoch, the final one last: the time is sampling
    spec = GridSpec(files=tuple(LoraFile(f, label=_epoch_label(f)) for f in shown), weights=WEIGHTS,
                    prompts=(CONCEPT_PROMPT,), seeds=SEEDS, base_model_hash=model.info.sha256[:10],
                    samplers=("DDIM",), steps=(STEPS,), cfg_scales=(7.0,), width=64, height=64,
                    class_prompt=CLASS_PROMPT, trigger_words=(TRIGGER,), base_model_name="toy base")
    hashes = lora_hashes(out / "cache", [f.path for f in spec.files])
    cells = plan_cells(spec, {Path(p): h for p, h in hashes.items()})
    generator.prefetch([c.request for c in cells] + baseline_requests(spec, cells))
    result = run_grid(spec, generator, out / "cache")
    grid = save_grid(result, out / "grid.png")
    report = compute_metrics(result, JudgeEmbedder(judge), training_images)
    choices = [(None, 0.0)] + [(f, w) for f in shown for w in WEIGHTS if w > 0]
    scores = [judge_score(generator, judge, f, w, judge_samples) for f, w in choices]
    return CompareOutcome(grid, shown, report, recommend(report), scores, judges_pick(scores))


def judge_score(generator: ToyGenerator, judge: Judge, lora: Path | None, weight: float, n: int) -> JudgeScore:
    prompts = [p for p in SEEN_PROMPTS for _ in range(max(1, n // 2 // len(SEEN_PROMPTS)))]
    pixels = generator.images(lora, weight, [CONCEPT_PROMPT] * n + prompts, seed=101)  # one batch
    concept, seen = read(judge, pixels[:n]), read(judge, pixels[n:])
    ok = [s == CONCEPT_SHAPE and c == CONCEPT_COLOUR for s, c in zip(concept.shape, concept.colour)]
    with torch.no_grad():
        shape_logits, colour_logits, *_ = judge(pixels[:n].float().clamp(-1, 1))
    belief = (shape_logits.softmax(1)[:, world.SHAPES.index(CONCEPT_SHAPE)]
              * colour_logits.softmax(1)[:, world.COLOURS.index(CONCEPT_COLOUR)]).mean()
    right = [f"a {c} {s}" == p for p, s, c in zip(prompts, seen.shape, seen.colour)]
    label = "base model" if lora is None else f"{_epoch_label(lora)} @ {weight:g}"
    return JudgeScore(label, lora, weight, float(np.mean(ok)), float(np.mean(right)), float(belief))


def judges_pick(scores: list[JudgeScore]) -> JudgeScore:
    """Highest fidelity among the choices that keep the seen prompts within 0.1 of the base model's."""
    base = scores[0]
    fair = [s for s in scores[1:] if s.seen >= base.seen - 0.1] or scores[1:]
    return max(fair, key=lambda s: (s.fidelity, s.belief, s.seen, -s.weight))


def _epoch_label(path: Path) -> str:
    stem = Path(path).stem
    return f"epoch {int(stem.rsplit('-', 1)[1])}" if "-" in stem else "final"
