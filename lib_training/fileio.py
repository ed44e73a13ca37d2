"""Atomic file writes and safe output names.

Every file is written to a temporary name in the same folder and renamed into place,
so the WebUI's Lora list never shows a half-written file and a full disk leaves
nothing behind.
"""

from __future__ import annotations

import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Iterator

from .errors import SettingsError

_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)), *(f"lpt{i}" for i in range(1, 10))}
MAX_NAME_BYTES = 200  # + "-000001.safetensors" and a temp prefix stays under the usual 255-byte limit
_NAME_OK = re.compile(r"^[\w][\w .+\-()\[\]]*$", re.UNICODE)


@contextmanager
def atomic_writer(path: Path) -> Iterator[BinaryIO]:
    """A file to write `path` through: a temporary name beside it, renamed into place on success,
    removed on any error. For data too big to hold in memory twice (checkpoints)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file normal permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_writer(path) as f:
        f.write(data)


def remove_temp_files(folder: Path, pattern: str) -> list[Path]:
    """Delete the temp files (`.<name>.<random>.tmp`, see atomic_write_bytes) matching `pattern` that a
    killed process left behind; returns them."""
    folder = Path(folder)
    found = [p for p in folder.glob(pattern) if p.name.startswith(".") and p.name.endswith(".tmp") and p.is_file()]
    for path in found:
        path.unlink(missing_ok=True)
    return found


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def validate_output_name(name: str) -> str:
    """A LoRA name usable as a file name and in `<lora:name:1>`; raises SettingsError otherwise."""
    stripped = name.strip()
    if not stripped:
        raise SettingsError("The output name is empty. Give the LoRA a name, e.g. 'my_subject_v1'.")
    if "/" in stripped or "\\" in stripped or ".." in stripped:
        raise SettingsError(f"The output name {name!r} contains a path ('/', '\\' or '..'). Use a plain name; "
                            "the file always goes into the LoRA folder.")
    if ":" in stripped or "<" in stripped or ">" in stripped:
        raise SettingsError(f"The output name {name!r} contains ':', '<' or '>', which break `<lora:name:weight>`.")
    if len(stripped.encode("utf-8")) > MAX_NAME_BYTES:
        raise SettingsError(f"The output name is {len(stripped.encode('utf-8'))} bytes long; use at most "
                            f"{MAX_NAME_BYTES} (file systems allow 255 for <name>-000001.safetensors).")
    if stripped.split(".")[0].lower() in _RESERVED:
        raise SettingsError(f"The output name {name!r} is reserved on Windows. Choose another name.")
    if not _NAME_OK.match(stripped):
        raise SettingsError(f"The output name {name!r} may only use letters, digits, spaces and _ - . + ( ) [ ].")
    if stripped.lower().endswith(".safetensors"):
        stripped = stripped[: -len(".safetensors")]
    return stripped


def path_inside(folder: Path, file_name: str) -> Path:
    """`folder/file_name`, refusing anything that would land outside `folder`."""
    folder = Path(folder).resolve()
    target = (folder / file_name).resolve()
    if target.parent != folder:
        raise SettingsError(f"{file_name!r} would be written outside {folder}.")
    return target


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
