"""The validation loss: the same diffusion loss on images the run does not train on, at fixed noise and
fixed timesteps, so that it is deterministic and comparable between epochs (as kohya's `--validation_split`).

Why fixed: the training loss of one step depends more on its random timesteps than on the LoRA, so its
curve says little about which epoch is best. Here every evaluation sees the same held-out images with the
same noise at the same timesteps (spread evenly over the schedule), and only the LoRA differs.

The loss is the plain mean squared error against the target (noise, or v), without min-SNR weights, so
that runs with different training weights stay comparable. Computing it uses no global random state:
the noise comes from generators seeded by the run's seed, and the caller's RNG is forked around it, so a
run trains the same with and without validation.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from ..config import TrainConfig, ValidationSettings
from ..data.dataset import LatentCache, Sample, size_conditioning
from ..data.folders import ImageItem, scan_dataset
from ..errors import DatasetError
from ..models.adapter import ModelAdapter
from ..seeding import derived_seed, generator
from .loss import add_noise, per_sample_mse, target_for


# (noisy latents, timesteps, captions, size conditioning) -> the model's prediction (the trainer's own path)
Predict = Callable[[torch.Tensor, torch.Tensor, list, list], torch.Tensor]


def split_items(items: Sequence[ImageItem], share: float, seed: int) -> tuple[list[ImageItem], list[ImageItem]]:
    """(training, held-out) items: round(share x images) held out, at least 1 and never all, picked with
    a seed of their own so the split does not depend on anything but the run's seed and the file names."""
    if share <= 0:
        return list(items), []
    if len(items) < 2:
        raise DatasetError(f"validation.split needs at least 2 training images to hold one out; the dataset has "
                           f"{len(items)}. Add images, give a validation folder, or set validation.split = 0.")
    count = min(len(items) - 1, max(1, round(share * len(items))))
    order = sorted(range(len(items)), key=lambda i: str(items[i].path))
    random.Random(derived_seed(seed, "validation-split")).shuffle(order)
    held = set(order[:count])
    return [it for i, it in enumerate(items) if i not in held], [it for i, it in enumerate(items) if i in held]


def validation_items(config: TrainConfig, items: Sequence[ImageItem],
                     caption_extensions: tuple[str, ...]) -> tuple[list[ImageItem], list[ImageItem]]:
    """(training, validation) items: the user's folder when given (training keeps every image), else a
    held-out share of the training images, else none."""
    v = config.validation
    if v.folder:
        return list(items), folder_items(v, caption_extensions)
    return split_items(items, v.split, config.train.seed)


def folder_items(settings: ValidationSettings, caption_extensions: tuple[str, ...]) -> list[ImageItem]:
    """The images of the user's validation folder (kohya layout, as data.train_dir; repeats are ignored)."""
    spec = scan_dataset(Path(settings.folder), None, caption_extensions=caption_extensions)
    if not spec.train_items:
        raise DatasetError(f"The validation folder {settings.folder} has no images. Put images (and captions) in "
                           "<repeats>_<name>/ subfolders as in the training folder, or leave validation.folder empty.")
    return spec.train_items


def fixed_timesteps(count: int, num_timesteps: int) -> list[int]:
    """`count` timesteps spread evenly over the schedule, centred in their slices (4 of 1000: 125 ... 875)."""
    return [int((k + 0.5) * num_timesteps / count) for k in range(count)]


@dataclass
class _Prepared:
    noisy: torch.Tensor
    timesteps: torch.Tensor
    target: torch.Tensor
    captions: list[str]
    sizes: list


class Validator:
    """Computes the validation loss of the model as it is now (LoRA attached) on the held-out samples."""

    def __init__(self, config: TrainConfig, samples: list[Sample], cache: LatentCache, alphas_cumprod: torch.Tensor,
                 prediction_type: str, device: torch.device, batch_size: int):
        self.settings, self.seed = config.validation, config.train.seed
        self.samples, self.cache = samples, cache
        self.alphas, self.prediction_type, self.device = alphas_cumprod, prediction_type, device
        self.batch_size = max(1, batch_size)
        self._prepared: list[_Prepared] | None = None

    def due(self, step: int, epoch_ended: bool, epoch: int, last_step: bool) -> bool:
        """Whether this step is one the settings ask for (each N steps, after each N epochs, and the last)."""
        s = self.settings
        return (bool(s.every_steps) and step % s.every_steps == 0) or \
            (epoch_ended and bool(s.every_epochs) and epoch % s.every_epochs == 0) or last_step

    @torch.no_grad()
    def loss(self, predict: Predict) -> float:
        """The mean loss over held-out images x fixed timesteps; leaves every random state as it was."""
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            total, count = 0.0, 0
            for batch in self._batches():
                prediction = predict(batch.noisy, batch.timesteps, batch.captions, batch.sizes)
                total += float(per_sample_mse(prediction, batch.target).sum())
                count += len(batch.timesteps)
        return total / count

    def _batches(self) -> list[_Prepared]:
        """Noised inputs made once (the same noise every time), batched by latent size (buckets)."""
        if self._prepared is None:
            rows = [(i, t) for i in range(len(self.samples))
                    for t in fixed_timesteps(self.settings.timesteps, len(self.alphas))]
            by_size: dict[tuple, list[tuple[int, int]]] = {}
            for row in rows:
                by_size.setdefault(tuple(self.cache.get(row[0], False).shape), []).append(row)
            self._prepared = [self._prepare(group[k:k + self.batch_size]) for group in by_size.values()
                              for k in range(0, len(group), self.batch_size)]
        return self._prepared

    def _prepare(self, rows: list[tuple[int, int]]) -> _Prepared:
        latents = torch.stack([self.cache.get(i, False) for i, _ in rows]).to(self.device)
        noise = torch.stack([torch.randn(latents.shape[1:], generator=generator(self.seed, "validation", i, t))
                             for i, t in rows]).to(latents)
        timesteps = torch.tensor([t for _, t in rows], device=self.device)
        target = target_for(self.prediction_type, latents, noise, timesteps, self.alphas)
        return _Prepared(add_noise(latents, noise, timesteps, self.alphas), timesteps, target,
                         [self.samples[i].item.caption for i, _ in rows],
                         [size_conditioning(self.samples[i], False) for i, _ in rows])


def make_validator(config: TrainConfig, samples: list[Sample], model: ModelAdapter) -> Validator | None:
    """A Validator when the settings ask for one and there are held-out samples (latents cached as the
    training images' are, tagged with the model)."""
    if not config.validation.enabled or not samples:
        return None
    tag = f"{model.info.name}:{model.info.sha256 or model.info.legacy_hash}"
    cache = LatentCache(samples, model.encode_images, tag, config.train.seed,
                        to_disk=config.data.cache_latents_to_disk)
    return Validator(config, samples, cache, model.alphas_cumprod, model.info.prediction_type, model.device,
                     config.train.batch_size)
