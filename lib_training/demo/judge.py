"""A small CNN that reads shape, colour and background off a 32x32 image.

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

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.features(x)
        return self.shape(h), self.colour(h), self.background(h)


@dataclass
class Reading:
    shape: list[str]
    colour: list[str]
    background: list[str]


@torch.no_grad()
def read(judge: Judge, pixels: torch.Tensor, batch: int = 256) -> Reading:
    """pixels (N, 3, 32, 32) in [-1, 1] -> the judge's labels."""
    judge.eval()
    s, c, b = [], [], []
    for i in range(0, len(pixels), batch):
        ls, lc, lb = judge(pixels[i:i + batch].float().clamp(-1, 1))
        s += ls.argmax(1).tolist()
        c += lc.argmax(1).tolist()
        b += lb.argmax(1).tolist()
    return Reading([world.SHAPES[i] for i in s], [world.COLOURS[i] for i in c], [world.BACKGROUNDS[i] for i in b])


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
    images, _, scenes = world.sample_batch(rng, n, world.SHAPES)
    unit = world.to_unit(images)
    kind_of = rng.integers(0, len(kinds), size=n)
    out = np.empty_like(unit)
    for k, kind in enumerate(kinds):
        mask = kind_of == k
        out[mask] = augment(unit[mask], rng, kind)
    ys, yc, yb = world.labels(scenes)
    return torch.from_numpy(out), torch.from_numpy(ys), torch.from_numpy(yc), torch.from_numpy(yb)


@dataclass
class JudgeReport:
    steps: int
    seconds: float
    accuracy: dict  # {kind: {"shape": acc, "colour": acc, "background": acc}}


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
        x, ys, yc, yb = make_set(rng, batch)
        ls, lc, lb = judge(x)
        loss = F.cross_entropy(ls, ys) + F.cross_entropy(lc, yc) + F.cross_entropy(lb, yb)
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
        x, ys, yc, yb = make_set(np.random.default_rng(seed), n, (kind,))
        r = read(judge, x)
        out[kind] = {
            "shape": float(np.mean([world.SHAPES.index(s) == int(y) for s, y in zip(r.shape, ys)])),
            "colour": float(np.mean([world.COLOURS.index(c) == int(y) for c, y in zip(r.colour, yc)])),
            "background": float(np.mean([world.BACKGROUNDS.index(b) == int(y) for b, y in zip(r.background, yb)])),
        }
    return out


def load_judge() -> Judge:
    from lib_training.demo.fixtures_io import load_fixture

    tensors, _ = load_fixture(JUDGE_FILE)
    judge = Judge()
    judge.load_state_dict(tensors)
    return judge.eval().requires_grad_(False)
