"""Pre-flight: one scan of the dataset before any model is touched, deciding per file keep / leave out.

People train on folders copied from phones, chats and the web. A run must not stop once per bad
file (each stop after a multi-gigabyte model load): the health check's own code (health.py, which
reads folders with folders.py's grammar) looks at every file once, the files that cannot be
trained on are left out and listed together, and the run starts on what is good. It refuses only
when nothing usable is left, or when the user asked for `strict` and something would be left out —
once, with the whole list. The CLI, the WebUI's Train tab and the API all call `preflight`.

Left out: files health.py reports as errors (undecodable, empty, not an image, decompression bombs,
too small to learn from), unsupported formats, badly named subfolders, loose images beside
subfolders and links leaving the dataset (folders.py skips those). Everything else is kept; what the
health check only warns about (near-duplicates, captions) stays in, as in kohya.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import DatasetError
from ..fileio import atomic_write_text
from .folders import DatasetSpec, Subset
from .health import ERROR, SKIPPED_CODES, HealthReport, approximate_token_count, check_dataset

LEFT_OUT_CODES = ("unsupported_format",) + SKIPPED_CODES  # besides every error of the health report
REPORT_FILE = "preflight.json"  # in the run folder: the run's own record of what it left out
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class LeftOut:
    path: Path
    code: str  # the health report's issue code ("broken", "too_large", "folder_name", ...)
    reason: str  # for the user: what is wrong with it


@dataclass
class PreflightReport:
    """The dataset a run trains on (only kept images) and what was left out, with why."""

    spec: DatasetSpec
    left_out: list[LeftOut]
    sizes: dict[Path, tuple[int, int]]  # upright (width, height) of every kept image, read once
    health: HealthReport = field(repr=False)

    @property
    def kept(self) -> int:
        return self.spec.num_train_images + self.spec.num_reg_images

    def summary(self) -> str:
        """One line: what the run trains on and how much it left out."""
        line = f"Pre-flight: training on {self.spec.num_train_images} image(s)"
        if self.spec.num_reg_images:
            line += f" and {self.spec.num_reg_images} class image(s)"
        return line + (f"; left out {len(self.left_out)} file(s)." if self.left_out else "; nothing left out.")

    def format_text(self) -> str:
        """The one listing of what was left out, for the CLI, the run's log and the tab."""
        return "\n".join([self.summary()] + [f"  - {item.path}: {item.reason}" for item in self.left_out])

    def to_dict(self) -> dict:
        return {"train_images": self.spec.num_train_images, "class_images": self.spec.num_reg_images,
                "left_out": [{"path": str(i.path), "code": i.code, "reason": i.reason} for i in self.left_out]}

    def write(self, folder: Path) -> Path:
        """`<run folder>/preflight.json`: the run's record of what it trained on and left out."""
        path = Path(folder) / REPORT_FILE
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2))
        return path


def preflight(train_dir: Path, reg_dir: Path | None = None, caption_extensions: tuple[str, ...] = (".txt", ".caption"),
              strict: bool = False, on_progress: Progress | None = None) -> PreflightReport:
    """Scan once, decide per file; raise DatasetError (with the whole list) only when nothing usable is
    left, or with `strict` when anything would be left out."""
    report = decide(train_dir, reg_dir, caption_extensions, on_progress)
    _refuse_if_needed(report, Path(train_dir), strict)
    return report


def decide(train_dir: Path, reg_dir: Path | None = None, caption_extensions: tuple[str, ...] = (".txt", ".caption"),
           on_progress: Progress | None = None) -> PreflightReport:
    """Scan once and decide per file, refusing nothing (preprocess writes what is kept, lists the rest)."""
    health = check_dataset(Path(train_dir), resolution=0, count_tokens=approximate_token_count,
                           on_progress=on_progress, reg_dir=Path(reg_dir) if reg_dir else None,
                           caption_extensions=caption_extensions)
    left_out = _left_out(health)
    excluded = {item.path for item in left_out}
    spec = _kept_spec(health.spec, excluded)
    sizes = {f.path: (f.width, f.height) for f in health.images if f.error is None and f.path not in excluded}
    return PreflightReport(spec, left_out, sizes, health)


def _left_out(health: HealthReport) -> list[LeftOut]:
    result: dict[Path, LeftOut] = {}
    for issue in health.issues:
        if issue.severity == ERROR or issue.code in LEFT_OUT_CODES:
            for affected in issue.files:
                reason = _reason(issue.code, affected.detail)
                result.setdefault(affected.path, LeftOut(affected.path, issue.code, reason))
    return sorted(result.values(), key=lambda item: str(item.path))


def _reason(code: str, detail: str) -> str:
    """The health report's detail, with what it means when the detail is only a size or an extension."""
    label = {"too_small_to_train": "too small to learn from", "unsupported_format": "unsupported format"}.get(code)
    return f"{label} ({detail})" if label else (detail or code)


def _kept_spec(spec: DatasetSpec, excluded: set[Path]) -> DatasetSpec:
    """The scanned dataset without the excluded files; subsets left empty disappear."""
    subsets = []
    for subset in spec.subsets:
        items = [item for item in subset.items if item.path not in excluded]
        if items:
            subsets.append(Subset(subset.path, subset.repeats, subset.tokens, subset.is_reg, items))
    return DatasetSpec(subsets=subsets, skipped=spec.skipped)


def _refuse_if_needed(report: PreflightReport, train_dir: Path, strict: bool) -> None:
    listing = "\n".join(f"  - {item.path}: {item.reason}" for item in report.left_out)
    if not report.spec.train_items:
        what = (f"all {len(report.left_out)} file(s) found were left out:\n{listing}" if report.left_out
                else "it holds class images only.")
        raise DatasetError(f"Nothing to train on in '{train_dir}': {what}\nFix or replace these files (the "
                           "health check, `python -m lib_training dataset check`, says what to do for each).")
    if strict and report.left_out:
        raise DatasetError(f"Strict mode: {len(report.left_out)} file(s) in '{train_dir}' would be left out:\n"
                           f"{listing}\nFix or remove them, or train without --strict to leave them out.")
