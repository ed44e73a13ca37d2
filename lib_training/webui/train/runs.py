"""Runs on disk, started from the tab, the API or the CLI: `<runs_dir>/<name>/config.toml` + `log.jsonl`.

Read-only and tolerant: a run folder with a damaged config or log is listed with what went wrong,
never hidden and never an exception.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

from ...compare import curves
from ...config import TrainConfig
from ...errors import SettingsError
from ...train.state import STATE_FILE

CONFIG_FILE = "config.toml"
LOG_FILE = curves.LOG_FILE


@dataclass
class RunRecord:
    name: str
    folder: Path
    config: Optional[TrainConfig] = None
    problem: str = ""  # why the config or log could not be read ("" when fine)
    losses: list = field(default_factory=list)  # [(step, loss), ...]
    resumable: bool = False
    modified: float = 0.0

    @property
    def last_step(self) -> int:
        return self.losses[-1][0] if self.losses else 0

    @property
    def last_loss(self) -> Optional[float]:
        return self.losses[-1][1] if self.losses else None

    @property
    def total_steps_hint(self) -> str:
        """Epochs or max steps as configured (the exact count needs the dataset)."""
        if self.config is None:
            return ""
        t = self.config.train
        return f"{t.max_steps} steps" if t.max_steps > 0 else f"{t.epochs} epochs"

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "folder": str(self.folder),
            "problem": self.problem,
            "last_step": self.last_step,
            "last_loss": self.last_loss,
            "resumable": self.resumable,
            "modified": self.modified,
            "planned": self.total_steps_hint,
            "output_name": self.config.output.name if self.config else "",
            "trigger_word": self.config.output.trigger_word if self.config else "",
            "settings": self.config.to_dict() if self.config else None,
        }


def read_run(folder: Path) -> RunRecord:
    folder = Path(folder)
    record = RunRecord(name=folder.name, folder=folder, resumable=(folder / STATE_FILE).is_file())
    problems = []
    config_path = folder / CONFIG_FILE
    if config_path.is_file():
        try:
            record.config = TrainConfig.from_toml(config_path)
        except SettingsError as error:
            problems.append(str(error))
    else:
        problems.append(f"{CONFIG_FILE} is missing")
    losses, bad_lines = read_loss_log(folder / LOG_FILE)
    record.losses = losses
    if bad_lines:
        problems.append(f"{bad_lines} unreadable line(s) in {LOG_FILE}")
    record.problem = "; ".join(problems)
    record.modified = max((p.stat().st_mtime for p in folder.iterdir() if p.is_file()), default=0.0)
    return record


def read_loss_log(path: Path) -> tuple[list, int]:
    """[(step, loss)] from a log.jsonl, and how many lines could not be used (none if it is missing)."""
    if not path.is_file():
        return [], 0
    series = curves.read_loss_log(path)
    return list(zip(series.steps, series.loss)), series.skipped_lines


def is_run_folder(folder: Path) -> bool:
    return folder.is_dir() and any((folder / f).is_file() for f in (CONFIG_FILE, LOG_FILE, STATE_FILE))


def list_runs(runs_dirs: Iterable[Path]) -> list[RunRecord]:
    """Every run under the given folders, newest first; each folder once even if listed twice."""
    seen: set[Path] = set()
    records = []
    for root in runs_dirs:
        root = Path(root)
        if not root.is_dir():
            continue
        for folder in sorted(root.iterdir()):
            resolved = folder.resolve()
            if resolved in seen or not is_run_folder(folder):
                continue
            seen.add(resolved)
            records.append(read_run(folder))
    records.sort(key=lambda r: r.modified, reverse=True)
    return records


def runs_table_html(records: list[RunRecord]) -> str:
    """A small HTML table for the tab; every value escaped."""
    if not records:
        return "<p class='lora-studio-empty'>No runs yet. Runs started here or with the CLI appear here.</p>"
    rows = []
    for r in records:
        loss = f"{r.last_loss:.4f}" if r.last_loss is not None else "–"
        state = "resumable" if r.resumable else ("" if not r.problem else "⚠")
        title = html.escape(r.problem or str(r.folder), quote=True)
        rows.append(
            f"<tr title='{title}'><td>{html.escape(r.name)}</td><td>{r.last_step}</td><td>{loss}</td>"
            f"<td>{html.escape(r.total_steps_hint)}</td><td>{state}</td></tr>")
    return ("<table class='lora-studio-runs'><thead><tr><th>Run</th><th>Last step</th><th>Last loss</th>"
            "<th>Planned</th><th></th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>")
