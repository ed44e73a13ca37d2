"""Write a `.safetensors` file tensor by tensor, never holding the whole file in memory.

`safetensors.torch.save` builds the file as one bytes object, so writing a model costs its size
twice over: 14 GB of RAM for a 6.9 GB SDXL checkpoint. Here the header is computed from shapes
and dtypes, then each tensor's bytes go straight to the (atomic) file. The layout is the format's
own: 8-byte little-endian header length, JSON header padded with spaces to 8 bytes, raw data.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Mapping

import torch

from ..fileio import atomic_writer

_DTYPE_NAMES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
                torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
                torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2"}


def _header(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None) -> bytes:
    entries: dict = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for name, tensor in tensors.items():
        size = tensor.numel() * tensor.element_size()
        entries[name] = {"dtype": _DTYPE_NAMES[tensor.dtype], "shape": list(tensor.shape),
                         "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(entries, separators=(",", ":")).encode("utf-8")
    return blob + b" " * (-len(blob) % 8)


def write_safetensors(path: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> Path:
    """`tensors` (CPU) as `path`, written atomically; readable by every safetensors reader."""
    header = _header(tensors, metadata)
    with atomic_writer(Path(path)) as f:
        f.write(struct.pack("<Q", len(header)))
        f.write(header)
        for tensor in tensors.values():
            flat = tensor.detach().cpu().contiguous().reshape(-1)
            f.write(memoryview(flat.view(torch.uint8).numpy()))
    return Path(path)
