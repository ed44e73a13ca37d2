"""Perceptual hashes (dHash + pHash, 64 bits each, PIL + numpy only) and near-duplicate pairs.

Two images count as near-duplicates when BOTH hashes are within a few bits: dHash (gradients
of a 9x8 thumbnail) and pHash (signs of the 8x8 lowest DCT frequencies of a 32x32 thumbnail)
fail differently, so requiring both keeps the false alarms of either one out. A re-saved,
resized, recompressed or lightly edited copy stays within the thresholds; a mirrored copy
does not (it is a different image to the model, and flipping is a training option anyway).
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np
from PIL import Image

DHASH_THRESHOLD = 10  # bits of 64
PHASH_THRESHOLD = 14
_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)
_DCT_SIDE = 32


class ImageHash(NamedTuple):
    dhash: int
    phash: int


def image_hash(img: Image.Image) -> ImageHash:
    """Both hashes of an image (any mode; it is reduced to a 32x32 grey thumbnail first)."""
    grey = img.convert("L") if img.mode != "L" else img
    small = grey.resize((_DCT_SIDE, _DCT_SIDE), Image.Resampling.BOX)
    return ImageHash(dhash(small), phash(small))


def dhash(grey: Image.Image) -> int:
    """Difference hash: is each pixel of a 9x8 thumbnail brighter than its right neighbour."""
    pixels = np.asarray(grey.convert("L").resize((9, 8), Image.Resampling.BILINEAR), dtype=np.int16)
    return _bits_to_int(pixels[:, 1:] > pixels[:, :-1])


def phash(grey: Image.Image) -> int:
    """DCT hash: is each of the 8x8 lowest frequencies above their median."""
    pixels = np.asarray(grey.convert("L").resize((_DCT_SIDE, _DCT_SIDE), Image.Resampling.BOX), dtype=np.float64)
    basis = _dct_matrix(_DCT_SIDE)
    low = (basis @ pixels @ basis.T)[:8, :8]
    return _bits_to_int(low > np.median(low))


def hamming(a: int, b: int) -> int:
    return bin(a ^ b).count("1")


def near_duplicate_pairs(
    hashes: Sequence[ImageHash],
    dhash_threshold: int = DHASH_THRESHOLD,
    phash_threshold: int = PHASH_THRESHOLD,
) -> list[tuple[int, int, int]]:
    """(i, j, dhash distance) for every pair i < j within both thresholds, closest first."""
    if len(hashes) < 2:
        return []
    d = _as_bytes([h.dhash for h in hashes])
    p = _as_bytes([h.phash for h in hashes])
    pairs = []
    for i in range(len(hashes) - 1):  # one row at a time: memory stays O(n) for thousands of images
        d_dist = _POPCOUNT[d[i] ^ d[i + 1:]].sum(axis=1)
        p_dist = _POPCOUNT[p[i] ^ p[i + 1:]].sum(axis=1)
        for k in np.nonzero((d_dist <= dhash_threshold) & (p_dist <= phash_threshold))[0]:
            pairs.append((i, i + 1 + int(k), int(d_dist[k])))
    return sorted(pairs, key=lambda pair: (pair[2], pair[0], pair[1]))


def _bits_to_int(bits: np.ndarray) -> int:
    return int.from_bytes(np.packbits(bits.astype(np.uint8).ravel()).tobytes(), "big")


def _as_bytes(values: list[int]) -> np.ndarray:
    return np.frombuffer(b"".join(v.to_bytes(8, "big") for v in values), dtype=np.uint8).reshape(-1, 8)


def _dct_matrix(n: int) -> np.ndarray:
    """Orthonormal DCT-II basis: row k is cos(pi * (2x + 1) * k / 2n)."""
    k = np.arange(n)[:, None]
    x = np.arange(n)[None, :]
    basis = np.cos(np.pi * (2 * x + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    basis[0] /= np.sqrt(2.0)
    return basis
