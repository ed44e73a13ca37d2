"""From a scanned dataset to batches of latents: buckets, flips, latent cache, epoch order."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import safetensors
import safetensors.torch
import torch

from ..fileio import atomic_write_bytes
from ..models.adapter import SizeConditioning
from ..seeding import derived_seed
from .buckets import assign_bucket, make_buckets
from .folders import ImageItem
from .images import load_rgb, resize_and_crop, to_tensor

Encoder = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Sample:
    item: ImageItem
    bucket: tuple[int, int]  # (width, height)
    original_size: tuple[int, int] = (0, 0)  # (width, height) of the file; (0, 0) = unknown, use the bucket


def plan_samples(items: Sequence[ImageItem], resolution: int, bucketing: bool, step: int,
                 sizes: Mapping[Path, tuple[int, int]] | None = None) -> list[Sample]:
    """Pick each image's bucket from its upright size: the pre-flight's (read once) when given, else
    decoded here (a broken file fails here, before any training)."""
    buckets = make_buckets(resolution, step=step) if bucketing else [(resolution, resolution)]
    samples = []
    for item in items:
        known = (sizes or {}).get(item.path)
        width, height = known if known else load_rgb(item.path).size
        samples.append(Sample(item, assign_bucket(width, height, buckets), (width, height)))
    return samples


def size_conditioning(sample: Sample, flipped: bool) -> SizeConditioning:
    """SDXL's size/crop conditioning of a sample, exactly as kohya's `get_crop_ltrb` and
    `train_util` compute it: the crop box of the image *fitted inside* the bucket (Stability's
    preprocessing), its left edge mirrored for a flipped sample."""
    bucket_w, bucket_h = sample.bucket
    width, height = sample.original_size if all(sample.original_size) else sample.bucket
    image_ar = width / height
    if bucket_w / bucket_h > image_ar:
        resized_w, resized_h = bucket_h * image_ar, bucket_h
    else:
        resized_w, resized_h = bucket_w, bucket_w / image_ar
    left, top = (bucket_w - resized_w) // 2, (bucket_h - resized_h) // 2
    if flipped:
        left = bucket_w - (left + resized_w)
    return SizeConditioning((height, width), (int(top), int(left)), (bucket_h, bucket_w))


def load_pixels(sample: Sample, flipped: bool) -> torch.Tensor:
    image = resize_and_crop(load_rgb(sample.item.path), *sample.bucket)
    pixels = to_tensor(image)
    return pixels.flip(-1) if flipped else pixels


def epoch_batches(samples: Sequence[Sample], batch_size: int, seed: int, epoch: int,
                  use_repeats: bool = True) -> list[list[int]]:
    """Indices of each batch of an epoch: repeats expanded, shuffled, grouped by bucket.

    A pure function of (seed, epoch), so a resumed run sees the same order.
    """
    rng = random.Random(f"{seed}-epoch-{epoch}")
    by_bucket: dict[tuple[int, int], list[int]] = {}
    for index, sample in enumerate(samples):
        count = sample.item.repeats if use_repeats else 1
        by_bucket.setdefault(sample.bucket, []).extend([index] * count)
    batches: list[list[int]] = []
    for bucket in sorted(by_bucket):
        indices = by_bucket[bucket]
        rng.shuffle(indices)
        batches += [indices[i:i + batch_size] for i in range(0, len(indices), batch_size)]
    rng.shuffle(batches)
    return batches


class LatentCache:
    """Latents of each (sample, flipped) computed once and reused every epoch.

    In memory always; on disk beside the image when asked (`<stem>.<w>x<h>.lslatent.safetensors`),
    tagged with the model so a cache from another checkpoint is never reused.
    """

    def __init__(self, samples: Sequence[Sample], encode: Encoder, model_tag: str, seed: int,
                 to_disk: bool = False, keep_in_memory: bool = True):
        self.samples = samples
        self.keep_in_memory = keep_in_memory
        self.encode = encode
        self.model_tag = model_tag
        self.to_disk = to_disk
        self.seed = seed
        self._memory: dict[tuple[int, bool], torch.Tensor] = {}

    def fill(self, flips: bool, progress: Callable[[int, int], None] | None = None,
             should_stop: Callable[[], bool] | None = None) -> bool:
        """Encode every sample now; False when `should_stop` said so between two images (a cancel
        during caching takes effect at once, not after the whole dataset is encoded)."""
        variants = (False, True) if flips else (False,)
        for index in range(len(self.samples)):
            if should_stop is not None and should_stop():
                return False
            for flipped in variants:
                self.get(index, flipped)
            if progress:
                progress(index + 1, len(self.samples))
        return True

    def get(self, index: int, flipped: bool) -> torch.Tensor:
        key = (index, flipped)
        if key in self._memory:
            return self._memory[key]
        latent = self._load_or_encode(index, flipped)
        if self.keep_in_memory:
            self._memory[key] = latent
        return latent

    def put(self, index: int, flipped: bool, latent: torch.Tensor) -> None:
        """A latent encoded elsewhere (another rank of a multi-GPU run)."""
        self._memory[(index, flipped)] = latent

    def _disk_path(self, sample: Sample, flipped: bool) -> Path:
        w, h = sample.bucket
        suffix = "-flip" if flipped else ""
        return sample.item.path.with_name(f"{sample.item.path.stem}.{w}x{h}{suffix}.lslatent.safetensors")

    def _load_or_encode(self, index: int, flipped: bool) -> torch.Tensor:
        sample = self.samples[index]
        path = self._disk_path(sample, flipped)
        if self.to_disk and path.is_file():
            cached = self._read(path)
            if cached is not None:
                return cached
        # The VAE samples its posterior: seed it per image so caches are reproducible,
        # without disturbing the caller's global RNG.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(derived_seed(self.seed, sample.item.path, flipped))
            latent = self.encode(load_pixels(sample, flipped).unsqueeze(0))[0]
        if self.to_disk:
            blob = safetensors.torch.save({"latent": latent.detach().cpu().contiguous()}, {"model": self.model_tag})
            atomic_write_bytes(path, blob)
        return latent

    def _read(self, path: Path) -> torch.Tensor | None:
        try:
            with safetensors.safe_open(str(path), framework="pt") as f:
                if (f.metadata() or {}).get("model") != self.model_tag:
                    return None
                return f.get_tensor("latent")
        except (OSError, safetensors.SafetensorError):
            return None  # a damaged cache file is simply recomputed
