"""The training run's validation loss as a signal beside Compare's image numbers.

Each LoRA file trained with a validation loss carries the value at its step in its metadata
(`lora_studio.validation_loss`, written by the training loop). It says which epoch fits held-out images
best; it says nothing about the weight, and on the toy world's benchmark it is compared with the judge's
truth (bench/quality/README.md). The header is read as JSON, so Compare needs no tensor library here.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Sequence

from .grid import LoraFile

VALIDATION_LOSS_KEY = "lora_studio.validation_loss"  # = lora/metadata.py's (a test checks); not imported: torch


def header_metadata(path: Path) -> dict[str, str]:
    """The `__metadata__` of a safetensors file ({} when it has none or cannot be read)."""
    try:
        with open(path, "rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            if size > 100_000_000:
                return {}
            header = json.loads(f.read(size))
    except (OSError, ValueError, struct.error):
        return {}
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    return meta if isinstance(meta, dict) else {}


def validation_losses(files: Sequence[LoraFile]) -> dict[LoraFile, float]:
    """The files that carry a validation loss, with it."""
    out = {}
    for f in files:
        value = header_metadata(Path(f.path)).get(VALIDATION_LOSS_KEY)
        try:
            out[f] = float(value)
        except (TypeError, ValueError):
            continue
    return out


def validation_note(files: Sequence[LoraFile]) -> str:
    """One line for the recommendation: the file with the lowest validation loss, or "" when none has one."""
    losses = validation_losses(files)
    if not losses:
        return ""
    best = min(losses, key=losses.get)
    return (f"Validation loss (held-out images, fixed noise; lower fits them better, says nothing about the weight): "
            f"lowest {losses[best]:.5f} for {best.display}, of {len(losses)} file(s) that have one.")
