"""Fixture files (safetensors) with a sha256 check against fixtures/SHA256SUMS."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

FIXTURES = Path(__file__).resolve().parent / "fixtures"
SUMS = FIXTURES / "SHA256SUMS"
REBUILD = "python bench/quality/build_fixtures.py"


class FixtureError(RuntimeError):
    pass


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_fixture(name: str, tensors: dict[str, torch.Tensor], meta: dict) -> Path:
    FIXTURES.mkdir(parents=True, exist_ok=True)
    path = FIXTURES / name
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path),
              metadata={"quality_bench": json.dumps(meta, sort_keys=True)})
    _record_sum(name, sha256(path))
    return path


def _record_sum(name: str, digest: str) -> None:
    sums = read_sums()
    sums[name] = digest
    SUMS.write_text("".join(f"{d}  {n}\n" for n, d in sorted(sums.items())), encoding="utf-8")


def read_sums() -> dict[str, str]:
    if not SUMS.is_file():
        return {}
    out = {}
    for line in SUMS.read_text(encoding="utf-8").splitlines():
        if line.strip():
            digest, name = line.split(None, 1)
            out[name.strip()] = digest
    return out


def fixture_available(name: str) -> bool:
    return (FIXTURES / name).is_file()


def load_fixture(name: str) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and metadata; raises FixtureError (saying how to rebuild) when missing or changed."""
    path = FIXTURES / name
    if not path.is_file():
        raise FixtureError(f"{path} is missing. Rebuild the fixtures with: {REBUILD}")
    expected = read_sums().get(name)
    actual = sha256(path)
    if expected != actual:
        raise FixtureError(f"{path} has sha256 {actual}, but {SUMS} says {expected}. The file is damaged or "
                           f"stale; rebuild the fixtures with: {REBUILD}")
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = json.loads((f.metadata() or {}).get("quality_bench", "{}"))
    return load_file(str(path)), meta
