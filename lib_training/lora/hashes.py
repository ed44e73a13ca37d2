"""Model hashes as kohya and the WebUI compute them."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Mapping

import safetensors.torch
import torch


def _hash_tensor_data(blob: bytes) -> str:
    """sha256 of a safetensors blob after its header (sd-webui-additional-networks' 'new' hash)."""
    header_len = int.from_bytes(blob[:8], "little")
    return hashlib.sha256(blob[8 + header_len:]).hexdigest()


def _hash_legacy(blob: bytes) -> str:
    """8 hex digits of sha256 over 64 KiB at offset 1 MiB (the old WebUI hash)."""
    return hashlib.sha256(blob[0x100000:0x110000]).hexdigest()[:8]


def lora_hashes(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> tuple[str, str]:
    """(sshs_model_hash, sshs_legacy_hash) computed as kohya's precalculate_safetensors_hashes.

    Only the `ss_*` training metadata takes part, so that editing user metadata later
    does not change the hash.
    """
    training_only = {k: v for k, v in metadata.items() if k.startswith("ss_")}
    blob = safetensors.torch.save(dict(tensors), training_only)
    return _hash_tensor_data(blob), _hash_legacy(blob)


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def webui_legacy_hash(path: Path) -> str:
    """A1111's old checkpoint hash (sd_models.model_hash): sha256 of 64 KiB at 1 MiB, 8 hex."""
    with open(path, "rb") as f:
        f.seek(0x100000)
        return hashlib.sha256(f.read(0x10000)).hexdigest()[:8]
