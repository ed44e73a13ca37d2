"""The one-line dataset summary under the folder box: images, captions, repeats, trigger words.

Lists files and reads captions only (scan_dataset); no image is decoded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ...data.folders import DatasetSpec, scan_dataset
from ...errors import DatasetError
from .presets import TARGET_SAMPLES_PER_EPOCH, suggested_repeats


@dataclass(frozen=True)
class SubsetLine:
    name: str
    repeats: int
    images: int
    captioned: int


@dataclass
class DatasetSummary:
    folder: str
    subsets: list[SubsetLine] = field(default_factory=list)
    reg_images: int = 0
    trigger_words: list[str] = field(default_factory=list)
    class_words: list[str] = field(default_factory=list)
    error: str = ""

    @property
    def images(self) -> int:
        return sum(s.images for s in self.subsets)

    @property
    def captioned(self) -> int:
        return sum(s.captioned for s in self.subsets)

    @property
    def samples_per_epoch(self) -> int:
        return sum(s.images * s.repeats for s in self.subsets)

    @property
    def trigger_word(self) -> str:
        """The trigger word to suggest: the first folder's, when there is one."""
        return self.trigger_words[0] if self.trigger_words else ""

    @property
    def line(self) -> str:
        if self.error:
            return self.error
        repeats = sorted({s.repeats for s in self.subsets})
        repeats_text = f"{repeats[0]} repeats" if len(repeats) == 1 else f"repeats {repeats[0]}–{repeats[-1]}"
        folders = f" in {len(self.subsets)} folders" if len(self.subsets) > 1 else ""
        parts = [f"{self.images} images{folders} ({self.captioned} with caption files)",
                 f"{repeats_text} → {self.samples_per_epoch} per epoch"]
        if self.trigger_words:
            classes = f" (class: {', '.join(self.class_words)})" if self.class_words else ""
            parts.append(f"trigger: {', '.join(self.trigger_words)}{classes}")
        else:
            parts.append("no trigger word in the folder names")
        if self.reg_images:
            parts.append(f"{self.reg_images} class images")
        return " · ".join(parts) + self.repeats_hint

    @property
    def repeats_hint(self) -> str:
        low, high = TARGET_SAMPLES_PER_EPOCH
        if not self.subsets or low <= self.samples_per_epoch <= high:
            return ""
        repeats = suggested_repeats(self.images)
        return (f". The presets expect {low}–{high} images × repeats per epoch: with {self.images} images use "
                f"{repeats} repeats (folder name '{repeats}_…'), or change the epochs.")


def summarize_dataset(train_dir: str, reg_dir: str = "", caption_extension: str = ".txt") -> DatasetSummary:
    """Summary of a kohya-layout folder; a DatasetError becomes the summary's `error` line."""
    folder = (train_dir or "").strip()
    if not folder:
        return DatasetSummary(folder="", error="Choose a dataset folder.")
    extensions = _caption_extensions(caption_extension)
    try:
        spec = scan_dataset(Path(folder), Path(reg_dir) if (reg_dir or "").strip() else None,
                            caption_extensions=extensions)
    except DatasetError as error:
        return DatasetSummary(folder=folder, error=str(error))
    return _summary(folder, spec, extensions)


def _summary(folder: str, spec: DatasetSpec, extensions: Sequence[str]) -> DatasetSummary:
    subsets = [SubsetLine(s.name, s.repeats, len(s.items),
                          sum(1 for item in s.items if _has_caption_file(item.path, extensions)))
               for s in spec.train_subsets]
    triggers: list[str] = []
    classes: list[str] = []
    # The folder seen most per epoch names the main subject: its trigger word comes first.
    by_weight = sorted(spec.train_subsets, key=lambda s: len(s.items) * s.repeats, reverse=True)
    for subset in by_weight:
        words = subset.tokens.split()
        if words and words[0] not in triggers:
            triggers.append(words[0])
        rest = " ".join(words[1:])
        if rest and rest not in classes:
            classes.append(rest)
    return DatasetSummary(folder=folder, subsets=subsets, reg_images=spec.num_reg_images,
                          trigger_words=triggers, class_words=classes)


def _caption_extensions(first: str) -> tuple[str, ...]:
    first = (first or ".txt").strip()
    return tuple(dict.fromkeys((first, ".txt", ".caption")))


def _has_caption_file(image: Path, extensions: Sequence[str]) -> bool:
    return any(image.with_suffix(ext).is_file() or image.with_suffix(ext.upper()).is_file() for ext in extensions)


def list_dataset_folders(datasets_dir: Path) -> list[str]:
    """Folders directly under `datasets_dir` (for the dropdown), sorted; [] when it does not exist."""
    root = Path(datasets_dir)
    try:
        return sorted(str(p) for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError:
        return []
