"""The image cache of comparisons: one PNG per cell, named by its cache key, written atomically.

`<cache_dir>/<key[:2]>/<key>.png` carries A1111's infotext in the `parameters` text chunk (so
the PNG Info tab reads it) and the full request as JSON in a `lora_studio` chunk; a file whose
JSON does not name its key, or that does not decode, counts as missing and is generated again.
LoRA file hashes are remembered in `<cache_dir>/lora_hashes.json` by path, size and mtime, so
re-opening a comparison of 150 MB files does not read them again.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Iterable

from PIL import Image, PngImagePlugin

from ..errors import CheckpointError, LoraStudioError
from ..fileio import atomic_write_bytes, atomic_write_text
from .grid import CellRequest, LoraHashes

HASHES_FILE = "lora_hashes.json"
INFO_KEY = "lora_studio"


def cell_path(cache_dir: Path, key: str) -> Path:
    return Path(cache_dir) / key[:2] / f"{key}.png"


def cached_image_path(cache_dir: Path, request: CellRequest) -> Path | None:
    """The cached PNG of `request`, or None when absent or unreadable."""
    path = cell_path(cache_dir, request.key)
    if not path.is_file():
        return None
    try:
        with Image.open(path) as img:
            info = json.loads(img.info.get(INFO_KEY, "{}"))
            if info.get("key") != request.key:
                return None
            img.verify()
    except Exception:  # a damaged or foreign file is simply generated again
        return None
    return path


def save_cell_image(cache_dir: Path, request: CellRequest, image: Image.Image) -> Path:
    """Write `image` as the cached PNG of `request` (temp file + rename) and return its path."""
    if not isinstance(image, Image.Image):
        raise LoraStudioError(f"The image generator returned {type(image).__name__} instead of an image for "
                              f"{request.prompt!r} (seed {request.seed}). This is a bug in the generator.")
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", request.infotext())
    info.add_text(INFO_KEY, json.dumps(request.to_json(), ensure_ascii=False))
    path = cell_path(cache_dir, request.key)
    save_png(path, image.convert("RGB"), info)
    return path


def save_png(path: Path, image: Image.Image, info: PngImagePlugin.PngInfo | None = None) -> Path:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    try:
        atomic_write_bytes(Path(path), buffer.getvalue())
    except OSError as error:
        raise LoraStudioError(f"Could not write {path}: {error.strerror or error}. Free disk space or choose "
                              "another folder; no partial file was left.") from error
    return Path(path)


def hash_lora_file(path: Path, chunk: int = 1 << 20) -> LoraHashes:
    """sha256 of the whole file and of its tensor data after the safetensors header (A1111's hash)."""
    full, data = hashlib.sha256(), hashlib.sha256()
    try:
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path} is empty or truncated; it is not a LoRA file. Pick another file.")
            header = f.read(int.from_bytes(head, "little"))
            full.update(head + header)
            for block in iter(lambda: f.read(chunk), b""):
                full.update(block)
                data.update(block)
    except OSError as error:
        raise CheckpointError(f"Could not read {path}: {error.strerror or error}.") from error
    return LoraHashes(full.hexdigest(), data.hexdigest())


def lora_hashes(cache_dir: Path, paths: Iterable[Path]) -> dict[Path, LoraHashes]:
    """Hashes of `paths`, read from the memo when size and mtime match, else computed and remembered."""
    memo_path = Path(cache_dir) / HASHES_FILE
    try:
        memo = json.loads(memo_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        memo = {}
    result, changed = {}, False
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"LoRA file {path} does not exist. Refresh the file list and pick again.")
        stat = path.stat()
        entry = memo.get(str(path.resolve()))
        if entry and entry.get("size") == stat.st_size and entry.get("mtime_ns") == stat.st_mtime_ns:
            result[path] = LoraHashes(entry["sha256"], entry["addnet"])
            continue
        hashes = hash_lora_file(path)
        memo[str(path.resolve())] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
                                     "sha256": hashes.sha256, "addnet": hashes.addnet}
        result[path], changed = hashes, True
    if changed:
        atomic_write_text(memo_path, json.dumps(memo, indent=1))
    return result
