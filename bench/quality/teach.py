"""Teach the held-out concept ("a sks shape" = blue star) through the engine's own `train()`, then score it.

The dataset is written in kohya layout (64x64 PNGs: the 32x32 world upscaled 2x nearest, which the
adapter's 2x box "VAE" turns back into the exact world pixels), so the run takes the same code path
as the CLI and the WebUI: folder scan, latent cache, LoRA attach, optimizer, saving.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import world
from base_model import QualityAdapter, sample
from judge import Judge
from lib_training.config import TrainConfig
from lib_training.lora.io import load_lora
from lib_training.lora.network import LoraNetwork, NetworkShape
from lib_training.train.loop import train
from metrics import fraction, seen_accuracy

CONCEPT_SHAPE, CONCEPT_COLOUR = "star", "blue"
TRIGGER, CLASS_WORD = "sks", "shape"
CONCEPT_PROMPT = f"a {TRIGGER} {CLASS_WORD}"
CLASS_PROMPT = f"a {CLASS_WORD}"
METHODS = ("lora", "lora_te", "dreambooth_lora")


@dataclass
class Method:
    """How one method trains: which parts, learning rates, prior preservation."""

    name: str
    train_text_encoder: bool
    prior: bool
    unet_lr: float = 1e-3
    text_encoder_lr: float = 1e-3
    rank: int = 8
    alpha: float = 8.0
    conv_rank: int = 0  # > 0: also the ResnetBlock2D 3x3 convs (LoCon); the UNet attention is only at 8x8
    conv_alpha: float = 8.0
    steps: int = 300
    batch_size: int = 4
    prior_loss_weight: float = 1.0
    min_snr_gamma: float = 0.0


def method(name: str, **overrides) -> Method:
    base = {"lora": Method("lora", False, False), "lora_te": Method("lora_te", True, False),
            "dreambooth_lora": Method("dreambooth_lora", True, True)}[name]
    for key, value in overrides.items():
        setattr(base, key, value)
    return base


def _save_png(pixels: np.ndarray, path: Path) -> None:
    """(32, 32, 3) uint8 -> 64x64 PNG."""
    Image.fromarray(pixels).resize((world.SIZE * 2, world.SIZE * 2), Image.NEAREST).save(path)


def write_concept_set(root: Path, n: int = 8, seed: int = 7, repeats: int = 1) -> Path:
    """n blue stars (random size/position/background) captioned 'a sks shape'."""
    rng = np.random.default_rng(seed)
    folder = root / "train" / f"{repeats}_{TRIGGER} {CLASS_WORD}"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        scene = world.random_scene(rng, (CONCEPT_SHAPE,), (CONCEPT_COLOUR,))
        _save_png(world.render(scene), folder / f"{i:03d}.png")
        (folder / f"{i:03d}.txt").write_text(CONCEPT_PROMPT, encoding="utf-8")
    return root / "train"


def write_class_set(root: Path, model: QualityAdapter, n: int = 32, seed: int = 11) -> Path:
    """Class images the base model draws for the class prompt (DreamBooth prior preservation)."""
    folder = root / "reg" / f"1_{CLASS_WORD}"
    folder.mkdir(parents=True, exist_ok=True)
    images = sample(model, [CLASS_PROMPT] * n, seed)
    pixels = ((images.permute(0, 2, 3, 1).numpy() + 1) * 127.5).round().clip(0, 255).astype(np.uint8)
    for i, p in enumerate(pixels):
        _save_png(p, folder / f"{i:03d}.png")
        (folder / f"{i:03d}.txt").write_text(CLASS_PROMPT, encoding="utf-8")
    return root / "reg"


def engine_config(m: Method, train_dir: Path, reg_dir: Path | None, out: Path, seed: int) -> TrainConfig:
    c = TrainConfig()
    c.data.train_dir, c.data.reg_dir = str(train_dir), str(reg_dir) if (m.prior and reg_dir) else ""
    c.data.prior_loss_weight = m.prior_loss_weight
    c.data.resolution, c.data.bucketing, c.data.flip = world.SIZE * 2, False, False
    c.network.rank, c.network.alpha, c.network.train_text_encoder = m.rank, m.alpha, m.train_text_encoder
    c.network.conv_rank, c.network.conv_alpha = m.conv_rank, m.conv_alpha
    c.optimizer.unet_lr, c.optimizer.text_encoder_lr = m.unet_lr, m.text_encoder_lr
    c.train.max_steps, c.train.batch_size, c.train.seed = m.steps, m.batch_size, seed
    c.train.mixed_precision, c.train.save_every_epochs = "no", 0
    c.train.min_snr_gamma = m.min_snr_gamma
    c.output.output_dir, c.output.name, c.output.save_dtype = str(out), f"{m.name}_s{seed}", "fp32"
    c.output.overwrite, c.output.runs_dir = True, str(out / "runs")
    return c


@dataclass
class Scores:
    fidelity: float  # 'a sks shape' read as a blue star
    seen_accuracy: float  # 'a <colour> <seen shape>' right in shape and colour
    leakage: float  # 'a shape' read as a star
    pixel_change: float  # mean |diff| of same-seed seen-prompt images vs the base, in [0, 1] units
    train_seconds: float = 0.0
    extra: dict = field(default_factory=dict)


@dataclass
class EvalSizes:
    per_seen_prompt: int = 4
    concept: int = 32
    leakage: int = 32
    steps: int = 20


def score(model: QualityAdapter, judge: Judge, sizes: EvalSizes, base_seen: torch.Tensor | None,
          seed: int = 1) -> tuple[Scores, torch.Tensor]:
    acc, seen_images = seen_accuracy(model, judge, sizes.per_seen_prompt, seed, sizes.steps)
    fid, _ = fraction(model, judge, CONCEPT_PROMPT, sizes.concept, seed + 1, CONCEPT_SHAPE, CONCEPT_COLOUR,
                      sizes.steps)
    leak, _ = fraction(model, judge, CLASS_PROMPT, sizes.leakage, seed + 2, CONCEPT_SHAPE, None, sizes.steps)
    change = float((seen_images - base_seen).abs().mean() / 2) if base_seen is not None else 0.0
    return Scores(fid, acc.both, leak, change), seen_images


def train_lora(model: QualityAdapter, m: Method, train_dir: Path, reg_dir: Path | None, out: Path,
               seed: int) -> tuple[Path, float]:
    started = time.monotonic()
    result = train(engine_config(m, train_dir, reg_dir, out, seed), model)
    return result.path, time.monotonic() - started


def attach_lora(model: QualityAdapter, path: Path, m: Method) -> LoraNetwork:
    """A network loaded from `path`; use `with network.attached():` to sample with it."""
    network = LoraNetwork.for_model(model, NetworkShape(m.rank, m.alpha, m.conv_rank, m.conv_alpha, m.train_text_encoder))
    tensors, _ = load_lora(path)
    network.load_kohya_state_dict(tensors, source=str(path))
    return network.eval()


def run_method(model: QualityAdapter, judge: Judge, m: Method, work: Path, seed: int, sizes: EvalSizes,
               base_seen: torch.Tensor) -> Scores:
    train_dir = work / "data" / "train"
    reg_dir = work / "data" / "reg"
    path, seconds = train_lora(model, m, train_dir, reg_dir if reg_dir.is_dir() else None, work / "out", seed)
    with attach_lora(model, path, m).attached():
        scores, _ = score(model, judge, sizes, base_seen)
    scores.train_seconds = seconds
    return scores
