"""Shared fixtures: tiny random SD-shaped models and a photo dataset, built offline."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from lib_training.config import TrainConfig  # noqa: E402
from lib_training.models.tiny import tiny_adapter  # noqa: E402

torch.set_num_threads(2)
PHOTOS = ("chelsea", "astronaut", "coffee", "rocket")


@pytest.fixture(scope="session")
def sd1_model():
    """One tiny SD1-shaped model for the session: training must leave it as found."""
    return tiny_adapter("sd1", seed=0)


def write_photos(folder: Path, names=PHOTOS[:2], size: int = 96, captions: dict | None = None) -> Path:
    """scikit-image sample photos, downscaled, with optional captions."""
    from PIL import Image
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        image = Image.fromarray(getattr(data, name)()).convert("RGB")
        image.thumbnail((size, size))
        image.save(folder / f"{name}.png")
        if captions and name in captions:
            (folder / f"{name}.txt").write_text(captions[name], encoding="utf-8")
    return folder


@pytest.fixture
def photo_dataset(tmp_path) -> Path:
    root = tmp_path / "dataset"
    write_photos(root / "2_sks cat", captions={"chelsea": "sks cat, sitting", "astronaut": "sks cat, astronaut"})
    return root


def small_config(train_dir: Path, output_dir: Path, **overrides) -> TrainConfig:
    """Settings sized for a tiny model on CPU: 64 px, rank 4, a few steps."""
    config = TrainConfig()
    config.data.train_dir = str(train_dir)
    config.data.resolution = 64
    config.data.bucketing = False
    config.network.rank = 4
    config.network.alpha = 4.0
    config.optimizer.unet_lr = 1e-3
    config.optimizer.text_encoder_lr = 1e-4
    config.train.max_steps = 6
    config.output.output_dir = str(output_dir)
    config.output.name = "test_lora"
    config.output.save_dtype = "fp32"
    for dotted, value in overrides.items():
        section, key = dotted.split("__")
        setattr(getattr(config, section), key, value)
    return config
