"""Seeds derived from a run seed and a label, identical in every process (unlike hash())."""

from __future__ import annotations

import hashlib

import torch


def derived_seed(*parts: object) -> int:
    text = "|".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little") % 2**63


def generator(*parts: object) -> torch.Generator:
    """A CPU generator; tensors drawn from it are moved to the device, so runs match across devices."""
    return torch.Generator().manual_seed(derived_seed(*parts))
