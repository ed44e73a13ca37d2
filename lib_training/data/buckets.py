"""Aspect-ratio buckets (kohya's): train each image at a size close to its own shape, not a square crop.

Pure functions: the same inputs always give the same buckets and assignments.
"""

from __future__ import annotations

import math
from typing import Sequence

from lib_training.errors import SettingsError

Bucket = tuple[int, int]  # (width, height) in pixels


def make_buckets(
    resolution: int,
    min_size: int = 256,
    max_size: int = 1024,
    step: int = 64,
    enabled: bool = True,
) -> list[Bucket]:
    """Sorted (w, h) buckets: multiples of `step`, w*h <= resolution**2, sides within [min_size, max_size].

    As kohya does, each width gets the tallest height that fits the area (and its transpose), so no
    bucket is a needlessly small copy of a larger one with the same shape. For resolution 512 this
    gives (512, 512), (576, 448), (448, 576), (640, 384), ... (256, 1024), (1024, 256).
    `min_size` is lowered for small resolutions (to resolution/2) and `max_size` raised to at least
    the resolution — to twice it from 1024 up (SDXL: 832x1216, 768x1344 ... as kohya's SDXL setups
    with max_bucket_reso 2048; the area stays 1024²), so tiny test resolutions such as 64 (with step 8) still get several shapes.
    With `enabled=False` there is the single square bucket (resolution, resolution).
    """
    _check_grid(resolution, step)
    if not enabled:
        return [(resolution, resolution)]
    low, high = _size_limits(resolution, min_size, max_size, step)
    area = resolution * resolution
    buckets = {(resolution, resolution)}
    for width in range(low, high + 1, step):
        height = min(high, (area // width) // step * step)
        if height >= low:
            buckets.add((width, height))
            buckets.add((height, width))
    return sorted(buckets)


def assign_bucket(width: int, height: int, buckets: Sequence[Bucket]) -> Bucket:
    """The bucket whose aspect ratio is nearest the image's (log-ratio distance); ties -> larger area."""
    if width <= 0 or height <= 0:
        raise ValueError(f"Image size must be positive, got {width}x{height}.")
    if not buckets:
        raise ValueError("No buckets to choose from; build them with make_buckets().")
    target = math.log(width / height)
    distances = [abs(math.log(w / h) - target) for w, h in buckets]
    nearest = min(distances)
    # Log distances of equal shapes can differ in the last bits; treat those as ties.
    tied = [b for b, d in zip(buckets, distances) if d <= nearest + 1e-9]
    # Larger area keeps more detail; the remaining order (wider first) only makes the choice stable.
    return max(tied, key=lambda b: (b[0] * b[1], b[0]))


def _check_grid(resolution: int, step: int) -> None:
    if step <= 0 or step % 8:
        raise SettingsError(
            f"Bucket step {step} is not a positive multiple of 8; the VAE needs sides divisible by 8. "
            "Use 64 (default) or 8/16/32 for small resolutions."
        )
    if resolution <= 0 or resolution % step:
        raise SettingsError(
            f"Resolution {resolution} is not a multiple of the bucket step {step}. "
            f"Use e.g. {max(step, resolution // step * step)} or a smaller step."
        )


def _size_limits(resolution: int, min_size: int, max_size: int, step: int) -> tuple[int, int]:
    """Side limits snapped to the step grid and made consistent with the resolution."""
    half = max(step, (resolution // 2) // step * step)
    low = min(_round_up(max(min_size, step), step), half)
    high = max(max_size // step * step, resolution if resolution < 1024 else 2 * resolution)
    return low, high


def _round_up(value: int, step: int) -> int:
    return -(-value // step) * step
