"""The streaming safetensors writer: what it writes every reader reads back exactly, and a failure
mid-file leaves nothing (the random SDXL checkpoint is written with it: 6.9 GB never held twice)."""

from __future__ import annotations

import pytest
import safetensors
import safetensors.torch
import torch

from lib_training.models.safetensors_stream import write_safetensors


def test_every_dtype_and_shape_reads_back_exactly_with_the_metadata(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {
        "b.weight": torch.randn(3, 5, generator=g).half(),
        "a.bias": torch.randn(7, generator=g),
        "scalar": torch.tensor(2.5, dtype=torch.float64),
        "bf": torch.randn(2, 2, 2, generator=g).to(torch.bfloat16),
        "ids": torch.arange(6, dtype=torch.int64).reshape(2, 3),
        "mask": torch.tensor([True, False, True]),
        "empty": torch.zeros(0, 4),
        "strided": torch.randn(4, 6, generator=g).t(),  # not contiguous
        "fp8": torch.randn(4, generator=g).to(torch.float8_e4m3fn),
    }
    path = write_safetensors(tmp_path / "m.safetensors", tensors, {"k": "v", "json": '{"a": 1}'})
    loaded = safetensors.torch.load_file(str(path))
    assert sorted(loaded) == sorted(tensors)
    for name, tensor in tensors.items():
        assert loaded[name].dtype == tensor.dtype and loaded[name].shape == tensor.shape
        assert torch.equal(loaded[name].reshape(-1).view(torch.uint8), tensor.reshape(-1).view(torch.uint8)), name
    with safetensors.safe_open(str(path), framework="pt") as f:
        assert f.metadata() == {"k": "v", "json": '{"a": 1}'}
    assert int.from_bytes(path.read_bytes()[:8], "little") % 8 == 0  # the header padded to 8 bytes, as the format asks


def test_a_failure_mid_file_leaves_no_file(tmp_path):
    tensors = {"ok": torch.ones(4), "broken": torch.empty(4, device="meta")}  # no data to write
    with pytest.raises(Exception):
        write_safetensors(tmp_path / "m.safetensors", tensors)
    assert list(tmp_path.iterdir()) == []
