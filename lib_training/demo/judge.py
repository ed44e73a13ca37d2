"""A small CNN that reads shape, colour, background and fill (solid / outline) off a 32x32 image.

Trained on clean, noisy and tinted-background renders so that it also reads generated
images (trained on clean renders only it under-reports them).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from lib_training.demo import world

JUDGE_FILE = "judge.safetensors"


class Judge(nn.Module):
    def __init__(self, width: int = 32):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1), nn.ReLU(), nn.Conv2d(w, w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(2 * w * 16, 128), nn.ReLU())
        self.shape = nn.Linear(128, len(world.SHAPES))
        self.colour = nn.Linear(128, len(world.COLOURS))
        self.background = nn.Linear(128, len(world.BACKGROUNDS))
        self.fill = nn.Linear(128, len(world.FILLS))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Logits of (shape, colour, background, fill)."""
        h = self.features(x)
        return self.shape(h), self.colour(h), self.background(h), self.fill(h)

    @torch.no_grad()
    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        """The penultimate features (128-d): an image embedding that fits the toy world, for Compare."""
        return self.features(pixels.float().clamp(-1, 1))


@dataclass
class Reading:
    shape: list[str]
    colour: list[str]
    background: list[str]
    fill: list[str]


HEADS = (("shape", world.SHAPES), ("colour", world.COLOURS), ("background", world.BACKGROUNDS), ("fill", world.FILLS))


@torch.no_grad()
def read(judge: Judge, pixels: torch.Tensor, batch: int = 256) -> Reading:
    """pixels (N, 3, 32, 32) in [-1, 1] -> the judge's labels."""
    judge.eval()
    picks: list[list[int]] = [[] for _ in HEADS]
    for i in range(0, len(pixels), batch):
        for head, logits in zip(picks, judge(pixels[i:i + batch].float().clamp(-1, 1))):
            head += logits.argmax(1).tolist()
    return Reading(*[[names[i] for i in head] for head, (_, names) in zip(picks, HEADS)])


def augment(images: np.ndarray, rng: np.random.Generator, kind: str) -> np.ndarray:
    """float32 [-1, 1] (N,3,H,W): 'clean', 'noisy' (gaussian + blur-ish), or 'tinted' (shifted background)."""
    if kind == "clean":
        return images
    if kind == "noisy":
        sigma = rng.uniform(0.02, 0.25, size=(len(images), 1, 1, 1)).astype(np.float32)
        return np.clip(images + rng.normal(size=images.shape).astype(np.float32) * sigma, -1, 1)
    if kind == "tinted":
        # Shift every pixel by a random colour cast and contrast: generated images drift in both.
        tint = rng.uniform(-0.25, 0.25, size=(len(images), 3, 1, 1)).astype(np.float32)
        scale = rng.uniform(0.75, 1.1, size=(len(images), 1, 1, 1)).astype(np.float32)
        return np.clip(images * scale + tint, -1, 1)
    raise ValueError(kind)


def make_set(rng: np.random.Generator, n: int, kinds: tuple[str, ...] = ("clean", "noisy", "tinted")):
    """(images, shape, colour, background, fill labels): every shape, solid or outlined."""
    images, _, scenes = world.sample_batch(rng, n, world.SHAPES, fills=world.FILLS)
    unit = world.to_unit(images)
    kind_of = rng.integers(0, len(kinds), size=n)
    out = np.empty_like(unit)
    for k, kind in enumerate(kinds):
        mask = kind_of == k
        out[mask] = augment(unit[mask], rng, kind)
    return (torch.from_numpy(out), *[torch.from_numpy(y) for y in world.labels(scenes)])


@dataclass
class JudgeReport:
    steps: int
    seconds: float
    accuracy: dict  # {kind: {"shape": acc, "colour": acc, "background": acc, "fill": acc}}


def train_judge(seed: int = 0, steps: int = 1200, batch: int = 64, lr: float = 2e-3,
                log=print) -> tuple[Judge, JudgeReport]:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    judge = Judge()
    opt = torch.optim.AdamW(judge.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    started = time.monotonic()
    judge.train()
    for step in range(steps):
        x, *ys = make_set(rng, batch)
        loss = sum(F.cross_entropy(logits, y) for logits, y in zip(judge(x), ys))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 200 == 0 or step == steps - 1:
            log(f"judge step {step}/{steps} loss {loss.item():.4f}")
    seconds = time.monotonic() - started
    judge.eval()
    return judge, JudgeReport(steps, seconds, evaluate(judge, seed + 1000))


def evaluate(judge: Judge, seed: int, n: int = 1000) -> dict:
    """Accuracy on fresh clean / noisy / tinted images of every shape."""
    out = {}
    for kind in ("clean", "noisy", "tinted"):
        x, *ys = make_set(np.random.default_rng(seed), n, (kind,))
        r = read(judge, x)
        out[kind] = {name: float(np.mean([names.index(a) == int(y) for a, y in zip(getattr(r, name), truth)]))
                     for (name, names), truth in zip(HEADS, ys)}
    return out


def load_judge() -> Judge:
    from lib_training.demo.fixtures_io import load_fixture

    tensors, _ = load_fixture(JUDGE_FILE)
    judge = Judge()
    judge.load_state_dict(tensors)
    return judge.eval().requires_grad_(False)
