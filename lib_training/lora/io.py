"""Save and load LoRA files: kohya keys, safetensors only, written atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import safetensors
import safetensors.torch
import torch

from ..errors import CheckpointError
from ..fileio import atomic_write_bytes
from .hashes import lora_hashes


def save_lora(path: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> Path:
    """Write `tensors` + `metadata` (+ kohya's sshs_* hashes) to `path` via temp file and rename."""
    path = Path(path)
    if path.suffix != ".safetensors":
        raise CheckpointError(f"{path}: LoRA files are always written as .safetensors.")
    metadata = {str(k): str(v) for k, v in metadata.items()}
    model_hash, legacy_hash = lora_hashes(tensors, metadata)
    metadata["sshs_model_hash"] = model_hash
    metadata["sshs_legacy_hash"] = legacy_hash
    blob = safetensors.torch.save(dict(tensors), metadata)
    try:
        atomic_write_bytes(path, blob)
    except OSError as error:
        raise CheckpointError(
            f"Could not write {path}: {error.strerror or error}. Free disk space or choose another folder; "
            "no partial file was left."
        ) from error
    return path


def load_lora(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a .safetensors LoRA. Pickle formats are refused (they can run code)."""
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise CheckpointError(
            f"{path.name} is not a .safetensors file. Only safetensors is loaded: .pt/.ckpt files can run "
            "arbitrary code. Convert it with a tool you trust first."
        )
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist.")
    try:
        with safetensors.safe_open(str(path), framework="pt") as f:
            metadata = dict(f.metadata() or {})
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except Exception as error:  # safetensors raises several types for a damaged file
        raise CheckpointError(f"{path} is not a readable safetensors file ({error}). It may be truncated.") from error
    return tensors, metadata
