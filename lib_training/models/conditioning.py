"""Per-caption rows of a batch's conditioning, so the trainer can cache them.

SD 1.x/2.x condition on one tensor; SDXL on a dict (context + pooled). The loop caches
one row per caption when the text encoders are frozen; these two functions are all it
needs to know about either shape.
"""

from __future__ import annotations

import torch

from .adapter import Conditioning


def split_rows(cond: Conditioning) -> list[Conditioning]:
    """A batch's conditioning -> one entry per sample (views, no copies)."""
    if isinstance(cond, dict):
        size = len(next(iter(cond.values())))
        return [{key: value[i] for key, value in cond.items()} for i in range(size)]
    return list(cond)


def stack_rows(rows: list[Conditioning]) -> Conditioning:
    """Inverse of `split_rows`."""
    if isinstance(rows[0], dict):
        return {key: torch.stack([row[key] for row in rows]) for key in rows[0]}
    return torch.stack(rows)
