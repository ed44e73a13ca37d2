"""Scores of a model's samples, read by the judge: the concept, the seen prompts, the class prompt; and of
a LoRA file, whole or with one part switched off."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from lib_training.demo import world
from lib_training.demo.base_model import CFG, QualityAdapter, sample
from lib_training.demo.judge import Judge, read
from concepts import Concept
from lib_training.lora.network import LoraNetwork, NetworkShape
from methods import Method


def seen_prompts() -> list[tuple[str, str, str]]:
    """(prompt, shape, colour) for every seen shape x colour."""
    return [(f"a {c} {s}", s, c) for s in world.SEEN_SHAPES for c in world.COLOURS]


@dataclass
class SeenAccuracy:
    both: float  # shape and colour right, drawn solid (as the base always draws)
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
    solid = np.array([f == "solid" for f in r.fill])
    return SeenAccuracy(float((shape_ok & colour_ok & solid).mean()), float(shape_ok.mean()), float(colour_ok.mean()),
                        len(items)), images


def fraction(model: QualityAdapter, judge: Judge, prompt: str, n: int, seed: int, check,
             steps: int = 20, cfg: float = CFG) -> tuple[float, torch.Tensor]:
    """Share of `n` samples of `prompt` for which `check(reading, index)` holds (a Concept's is_concept / is_leak)."""
    images = sample(model, [prompt] * n, seed, steps, cfg)
    r = read(judge, images)
    return float(np.mean([check(r, i) for i in range(n)])), images


@dataclass
class Scores:
    fidelity: float  # the concept's prompt read as the concept (all of shape, colour, fill)
    seen_accuracy: float  # 'a <colour> <seen shape>' right in shape and colour, solid
    leakage: float  # the class prompt read with the concept's mark (hollow / a star)
    pixel_change: float  # mean |diff| of same-seed seen-prompt images vs the base, in [0, 1] units
    train_seconds: float = 0.0
    extra: dict = field(default_factory=dict)


@dataclass
class EvalSizes:
    per_seen_prompt: int = 4  # 0: no seen-prompt samples (accuracy and pixel change read 0)
    concept: int = 32
    leakage: int = 32
    steps: int = 20


def score(model: QualityAdapter, judge: Judge, sizes: EvalSizes, base_seen: torch.Tensor | None, concept: Concept,
          seed: int = 1) -> tuple[Scores, torch.Tensor | None]:
    if sizes.per_seen_prompt:
        acc, seen_images = seen_accuracy(model, judge, sizes.per_seen_prompt, seed, sizes.steps)
    else:
        acc, seen_images = SeenAccuracy(0.0, 0.0, 0.0, 0), None
    fid, _ = fraction(model, judge, concept.prompt, sizes.concept, seed + 1, concept.is_concept, sizes.steps)
    leak, _ = fraction(model, judge, concept.class_prompt, sizes.leakage, seed + 2, concept.is_leak, sizes.steps)
    change = float((seen_images - base_seen).abs().mean() / 2) if seen_images is not None and base_seen is not None \
        else 0.0
    return Scores(fid, acc.both, leak, change), seen_images


def lora_network(model: QualityAdapter, tensors: dict[str, torch.Tensor], m: Method, source: str) -> LoraNetwork:
    """A network holding the kohya `tensors` (read from `source`); sample with it through `score_network`."""
    shape = NetworkShape(m.rank, m.alpha, m.conv_rank, m.conv_alpha, m.train_text_encoder)
    network = LoraNetwork.for_model(model, shape)
    network.load_kohya_state_dict(tensors, source=source)
    return network.eval()


def score_network(model: QualityAdapter, judge: Judge, network: LoraNetwork, sizes: EvalSizes,
                  base_seen: torch.Tensor | None, concept: Concept) -> Scores:
    with network.merged():  # sampling: merged weights are a third faster than hooks
        scores, _ = score(model, judge, sizes, base_seen, concept)
    return scores


# The parts of a kohya file, by key: the ablation scores a file with one of them switched off
# (its lora_up zeroed) to tell which part teaches the concept and which one makes the model drift.
PARTS = {
    "text encoder": lambda key: key.startswith("lora_te"),
    "UNet attention": lambda key: key.startswith("lora_unet_") and "_attentions_" in key,
    "UNet convs": lambda key: key.startswith("lora_unet_") and "_attentions_" not in key,
}


def without_part(tensors: dict[str, torch.Tensor], part: str) -> dict[str, torch.Tensor]:
    """The LoRA `tensors` with `part` (a PARTS key) switched off."""
    chosen = PARTS[part]
    return {k: torch.zeros_like(v) if chosen(k) and k.endswith("lora_up.weight") else v for k, v in tensors.items()}


def score_parts(model: QualityAdapter, judge: Judge, network: LoraNetwork, tensors: dict[str, torch.Tensor],
                sizes: EvalSizes, base_seen: torch.Tensor | None, concept: Concept) -> dict[str, dict]:
    """Scores of the file (`tensors`, loaded in `network`) with each part it has switched off in turn:
    {"without <part>": scores}. Leaves `network` holding the last of them."""
    out = {}
    for part, chosen in PARTS.items():
        if any(chosen(k) for k in tensors):
            network.load_kohya_state_dict(without_part(tensors, part))
            s = score_network(model, judge, network, sizes, base_seen, concept)
            out[f"without {part}"] = {"fidelity": s.fidelity, "seen_accuracy": s.seen_accuracy, "leakage": s.leakage}
    return out
