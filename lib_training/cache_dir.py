"""The one folder LoRA Studio caches things in: `$XDG_CACHE_HOME/lora_studio` (default ~/.cache)."""

from __future__ import annotations

import os
from pathlib import Path


def user_cache_dir(*parts: str) -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base, "lora_studio", *parts)
