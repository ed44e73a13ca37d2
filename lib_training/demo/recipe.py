"""What `lora-studio demo` teaches and how: the toy world's held-out concept, the Train tab's
DreamBooth-LoRA recipe (the Object preset + class images) at the toy model's scale.

The toy scale is the quality benchmark's (bench/quality/methods.py, found by its sweep): the preset's
learning rates x 8 for its 400 steps (x 16 for the test's 100-step `--fast` run), rank 8 with 3x3 conv LoRA (the toy UNet attends only at 8x8), batch 4; the rest —
alpha/rank, text-encoder lr ratio, min-SNR 5, prior-loss weight 1, cosine with 3 restarts — as the preset.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..config import TrainConfig
from ..train.presets import find_preset
from . import world

CONCEPT_SHAPE, CONCEPT_COLOUR = "star", "blue"  # never seen in the base model's pre-training
TRIGGER, CLASS_WORD = "sks", "shape"
CONCEPT_PROMPT = f"a {TRIGGER} {CLASS_WORD}"
CLASS_PROMPT = f"a {CLASS_WORD}"
SEEN_PROMPTS = ("a red circle", "a yellow square")  # drift: the base draws these right
PRESET = "object"
RANK = 8
BATCH = 4


@dataclass(frozen=True)
class DemoSize:
    """How much the demo does; `--fast` is the test's shortened run. The toy needs ~400 steps at the benchmark's
    learning rate before its samples show whole stars (bench/quality/README.md: <= 0.19 at 100 steps, 0.54 at 400;
    the demo at 200 steps and twice the rate drew none in 8)."""

    images: int = 8  # concept images
    class_per_image: int = 2
    repeats: int = 25  # 8 images x 25 = 200 samples: 50 steps an epoch at batch 4
    epochs: int = 8  # 400 steps
    judge_samples: int = 8  # "a sks shape" samples per (file, weight) the judge reads (+ half as many seen)
    lr_factor: float = 8.0  # the preset's learning rates x this (the benchmark's scale)


FULL = DemoSize()
FAST = DemoSize(class_per_image=1, epochs=2, lr_factor=16.0)  # 100 steps at twice the rate, as the CI smoke test


def steps_per_epoch(size: DemoSize) -> int:
    return size.images * size.repeats // BATCH


def train_config(dataset: Path, out: Path, seed: int, size: DemoSize) -> TrainConfig:
    """The preset's values on the toy scale, reading the demo's kohya project folder."""
    preset = find_preset(PRESET).values
    c = TrainConfig()
    for key, value in preset.items():
        section, field = key.split(".")
        setattr(getattr(c, section), field, value)
    c.data.train_dir, c.data.reg_dir = str(dataset / "img"), str(dataset / "reg")
    c.data.resolution, c.data.bucketing, c.data.flip = world.SIZE * 2, False, False
    c.data.shuffle_captions = False  # the toy captions are 4-8 words, not tag lists
    c.network.rank, c.network.alpha = RANK, RANK * preset["network.alpha"] / preset["network.rank"]
    c.network.conv_rank, c.network.conv_alpha = RANK, c.network.alpha
    c.optimizer.unet_lr = preset["optimizer.unet_lr"] * size.lr_factor
    c.optimizer.text_encoder_lr = preset["optimizer.text_encoder_lr"] * size.lr_factor
    c.train.batch_size, c.train.epochs, c.train.seed = BATCH, size.epochs, seed
    c.train.mixed_precision, c.train.save_every_epochs = "no", 1
    c.output.output_dir, c.output.name, c.output.trigger_word = str(out), "demo_star", TRIGGER
    c.output.runs_dir = str(out / "runs")
    return c
