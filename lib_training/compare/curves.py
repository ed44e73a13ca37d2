"""Loss curves of runs, read from `<output_dir>/lora_studio_runs/<name>/log.jsonl`, on one chart.

The training loop appends one line per optimizer step: `{"step": 12, "loss": 0.1034}` (the mean
loss of that step's micro-batches); a resumed run rewrites the log up to its resume point. Lines
that cannot be read (a line cut by a crash, a non-finite loss) are skipped and counted.

Smoothing: an exponential moving average, debiased like TensorBoard's smoothing slider:
    ema_t = w * ema_{t-1} + (1 - w) * loss_t,  ema_0 = 0,   smoothed_t = ema_t / (1 - w^t)
with w = `ema_weight` (default 0.95: about the last 20 steps; diffusion loss depends so much on
the random timestep that single steps say little). The chart is drawn with PIL only.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw

from ..errors import SettingsError
from ..train.validation_log import read_log
from .text import BACKGROUND, INK, PAD, draw_lines, line_height, put_text, text_width

RUNS_FOLDER = "lora_studio_runs"
LOG_FILE = "log.jsonl"  # = train/loop.py's LOG_FILE (a test checks); not imported, that would load torch
DEFAULT_EMA_WEIGHT = 0.95
PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]
GRID = (228, 228, 228)


@dataclass(frozen=True)
class LossSeries:
    name: str
    path: Path
    steps: tuple[int, ...]
    loss: tuple[float, ...]
    smoothed: tuple[float, ...]
    skipped_lines: int = 0
    validation: tuple[tuple[int, float], ...] = ()  # (step, validation loss) when the run computed one

    @property
    def lowest_validation(self) -> tuple[int, float] | None:
        """(step, loss) of the lowest validation loss: the epoch a validation loss would pick."""
        return min(self.validation, key=lambda sv: sv[1]) if self.validation else None

    @property
    def final_smoothed(self) -> float | None:
        return self.smoothed[-1] if self.smoothed else None


def ema(values: Sequence[float], weight: float = DEFAULT_EMA_WEIGHT) -> list[float]:
    if not 0.0 <= weight < 1.0:
        raise SettingsError(f"The smoothing weight must be in [0, 1), got {weight}.")
    out, last = [], 0.0
    for t, value in enumerate(values, start=1):
        last = weight * last + (1.0 - weight) * value
        out.append(last / (1.0 - weight ** t))
    return out


def runs_dir(output_dir: Path) -> Path:
    return Path(output_dir) / RUNS_FOLDER


def list_runs(folder: Path) -> list[str]:
    """Names of the runs in a runs folder (those with a log), sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if (p / LOG_FILE).is_file())


def read_loss_log(path: Path, name: str | None = None, ema_weight: float = DEFAULT_EMA_WEIGHT) -> LossSeries:
    """One run's series; `path` is the run folder or its log.jsonl."""
    path = Path(path)
    log = path / LOG_FILE if path.is_dir() else path
    if not log.is_file():
        raise SettingsError(f"{log} does not exist: the run has no loss log (it never finished a step, or the "
                            "folder is not a LoRA Studio run). Pick another run.")
    by_step: dict[int, float] = {}
    skipped = 0
    for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            step, loss = int(record["step"]), float(record["loss"])
        except (ValueError, KeyError, TypeError):
            skipped += 1
            continue
        if not math.isfinite(loss):
            skipped += 1
            continue
        by_step[step] = loss  # a repeated step (resumed run): the later line wins
    steps = sorted(by_step)
    losses = [by_step[s] for s in steps]
    run_name = name or (log.parent.name if log.name == LOG_FILE else log.stem)
    return LossSeries(run_name, log, tuple(steps), tuple(losses), tuple(ema(losses, ema_weight)), skipped,
                      tuple(read_log(log.parent)))


def read_runs(folder: Path, names: Sequence[str], ema_weight: float = DEFAULT_EMA_WEIGHT) -> list[LossSeries]:
    """Series of several runs of a runs folder (`<output_dir>/lora_studio_runs`)."""
    return [read_loss_log(Path(folder) / name, name, ema_weight) for name in names]


def draw_loss_chart(series: Sequence[LossSeries], size: tuple[int, int] = (800, 450),
                    title: str = "Training loss") -> Image.Image:
    """Raw loss thin and pale, smoothed loss thick, one colour per run, legend with the final EMA; a run's
    validation loss as a thin line with a dot per evaluation, in the run's colour."""
    width, height = size
    image = Image.new("RGB", size, BACKGROUND)
    draw = ImageDraw.Draw(image)
    lh = line_height()
    draw_lines(draw, [title], (0, PAD, width, PAD + lh), align="center")
    drawn = [s for s in series if s.steps]
    if not drawn:
        draw_lines(draw, ["No loss values logged yet."], (0, 0, width, height))
        return image
    x_lo = min([s.steps[0] for s in drawn] + [s.validation[0][0] for s in drawn if s.validation])
    x_hi = max(s.steps[-1] for s in drawn)
    y_lo, y_hi = _y_range(drawn)
    y_ticks = _ticks(y_lo, y_hi)
    x_ticks = [t for t in _ticks(x_lo, x_hi) if x_lo <= t <= x_hi] or [x_lo]
    left = max(text_width(_fmt(t)) for t in y_ticks) + 3 * PAD
    legend_h = len(drawn) * lh + 2 * PAD
    plot = (left, 2 * PAD + lh, width - 2 * PAD, height - 2 * lh - 2 * PAD - legend_h)
    if plot[2] - plot[0] < 20 or plot[3] - plot[1] < 20:
        raise SettingsError(f"A loss chart of {width}x{height} px has no room for {len(drawn)} runs; make it larger.")

    def to_xy(step: float, value: float) -> tuple[float, float]:
        fx = (step - x_lo) / (x_hi - x_lo) if x_hi > x_lo else 0.5
        fy = (value - y_lo) / (y_hi - y_lo) if y_hi > y_lo else 0.5
        return plot[0] + fx * (plot[2] - plot[0]), plot[3] - fy * (plot[3] - plot[1])

    layer = Image.new("RGB", (plot[2] - plot[0] + 1, plot[3] - plot[1] + 1), BACKGROUND)
    ldraw = ImageDraw.Draw(layer)  # drawn apart and pasted in: lines outside the plot are cut off

    def local(step: float, value: float) -> tuple[float, float]:
        x, y = to_xy(step, value)
        return x - plot[0], y - plot[1]

    for t in y_ticks:
        _, y = to_xy(x_lo, t)
        if plot[1] <= y <= plot[3]:
            ldraw.line((0, y - plot[1], layer.width, y - plot[1]), fill=GRID)
            put_text(draw, (PAD, int(y) - lh // 2), _fmt(t))
    for i, s in enumerate(drawn):
        colour = PALETTE[i % len(PALETTE)]
        pale = tuple(int(c + (255 - c) * 0.65) for c in colour)
        for values, fill, w in ((s.loss, pale, 1), (s.smoothed, colour, 2)):
            points = [local(step, v) for step, v in zip(s.steps, values)]
            if len(points) > 1:
                ldraw.line(points, fill=fill, width=w)
            else:
                (x, y), r = points[0], 3
                ldraw.ellipse((x - r, y - r, x + r, y + r), fill=fill)
        points = [local(step, v) for step, v in s.validation]
        if len(points) > 1:
            ldraw.line(points, fill=colour, width=1)
        for x, y in points:
            ldraw.ellipse((x - 4, y - 4, x + 4, y + 4), outline=colour, width=2)
    image.paste(layer, plot[:2])
    draw.rectangle(plot, outline=INK)
    for t in x_ticks:
        x, _ = to_xy(t, y_lo)
        draw.line((x, plot[3], x, plot[3] + PAD), fill=INK)
        label = str(int(round(t)))
        put_text(draw, (int(x) - text_width(label) // 2, plot[3] + PAD), label)
    put_text(draw, (plot[2] - text_width("step"), plot[3] + PAD + lh), "step")

    y = height - legend_h
    for i, s in enumerate(drawn):
        colour = PALETTE[i % len(PALETTE)]
        draw.rectangle((left, y + 2, left + 14, y + lh - 3), fill=colour)
        note = f"  (skipped {s.skipped_lines} unreadable lines)" if s.skipped_lines else ""
        if s.lowest_validation is not None:
            note = f", lowest validation loss {s.lowest_validation[1]:.4f} at step {s.lowest_validation[0]} (o)" + note
        put_text(draw, (left + 20, y), f"{s.name}: {len(s.steps)} steps, final smoothed loss "
                                       f"{s.final_smoothed:.4f}{note}")
        y += lh
    return image


def _y_range(series: Sequence[LossSeries]) -> tuple[float, float]:
    """Smoothed curves fully in view; raw spikes beyond the 2nd-98th percentile are cut off."""
    raw = sorted(v for s in series for v in s.loss)
    lo = min(min(s.smoothed) for s in series)
    hi = max(max(s.smoothed) for s in series)
    checked = [v for s in series for _, v in s.validation]
    lo, hi = min([lo] + checked), max([hi] + checked)
    lo = min(lo, raw[int(0.02 * (len(raw) - 1))])
    hi = max(hi, raw[int(0.98 * (len(raw) - 1))])
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5 * abs(lo or 1.0), hi + 0.5 * abs(hi or 1.0)
    pad = 0.05 * (hi - lo)
    return lo - pad, hi + pad


def _ticks(lo: float, hi: float, target: int = 6) -> list[float]:
    """Round tick values (1, 2 or 5 x 10^k apart) covering [lo, hi]."""
    span = hi - lo if hi > lo else 1.0
    raw = span / target
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    first = math.ceil(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step) + 1)]


def _fmt(value: float) -> str:
    return f"{value:.4g}"
