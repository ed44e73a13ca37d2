"""Which folder a dataset name means: one folder inside the datasets folder, never outside it.

Its own module because both the tab's actions and the class-image generator resolve dataset names.
"""

from __future__ import annotations

import re
from pathlib import Path

from ...errors import SettingsError
from ...fileio import MAX_NAME_BYTES

_NAME_OK = re.compile(r"^[\w][\w .+\-()\[\]]*$", re.UNICODE)


def list_datasets(datasets_dir: Path) -> list[str]:
    """Names of the dataset folders (not hidden), sorted."""
    try:
        return sorted(p.name for p in Path(datasets_dir).iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return []


def check_dataset_name(name: str) -> str:
    """A dataset name usable as one folder name inside the datasets folder; raises SettingsError otherwise."""
    stripped = (name or "").strip()
    if not stripped:
        raise SettingsError("Give the dataset a name, e.g. 'my_cat'. It becomes a folder in the datasets folder.")
    if len(stripped.encode("utf-8")) > MAX_NAME_BYTES:
        raise SettingsError(f"The dataset name is {len(stripped.encode('utf-8'))} bytes long; "
                            f"use at most {MAX_NAME_BYTES}.")
    if "/" in stripped or "\\" in stripped or ".." in stripped or not _NAME_OK.match(stripped):
        raise SettingsError(f"The dataset name {stripped!r} may only use letters, digits, spaces and _ - . + ( ) [ ] "
                            "(no '/' or '..': it is a folder inside the datasets folder).")
    return stripped


def dataset_root(datasets_dir: Path, name: str) -> Path:
    return Path(datasets_dir) / check_dataset_name(name)
