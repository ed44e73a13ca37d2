"""A run's validation log, `validation.jsonl`: one line per validation, written by the training loop
and read by Compare.

Torch-free on purpose: Compare (and the WebUI's run list) read it without loading the engine.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..fileio import atomic_write_text

VALIDATION_LOG = "validation.jsonl"


def append_log(run_dir: Path, step: int, epoch: int, loss: float) -> None:
    with open(Path(run_dir) / VALIDATION_LOG, "a", encoding="utf-8") as f:
        f.write(json.dumps({"step": step, "epoch": epoch, "val_loss": loss}) + "\n")


def read_log(run_dir: Path) -> list[tuple[int, float]]:
    """(step, validation loss) of a run, sorted; the later line wins for a repeated step (a resumed
    run). Lines cut by a crash and non-finite losses are skipped; no log gives []."""
    return sorted((step, loss) for step, (loss, _) in _records(Path(run_dir) / VALIDATION_LOG).items()
                  if math.isfinite(loss))


def truncate_log(run_dir: Path, step: int) -> None:
    """Keep the lines up to `step` (a resumed run's saved point; none for a fresh run)."""
    path = Path(run_dir) / VALIDATION_LOG
    kept = [line for at, (_, line) in _records(path).items() if at <= step] if step > 0 else []
    atomic_write_text(path, "".join(kept))


def _records(path: Path) -> dict[int, tuple[float, str]]:
    """step -> (loss, its line), in file order; the later line wins."""
    if not path.is_file():
        return {}
    records: dict[int, tuple[float, str]] = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            record = json.loads(line)
            records[int(record["step"])] = (float(record["val_loss"]), line + "\n")
        except (ValueError, KeyError, TypeError):
            continue  # a line cut by a crash
    return records
