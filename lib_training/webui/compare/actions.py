"""What the Compare tab does, without gradio or A1111: plain values in, plain values out.

The flow of one comparison:

    request (`form.py`) --build_spec--> GridSpec --run_grid(generator)--> images (cached)
        --draw/save--> grid PNG    --compute_metrics(embedder)--> table + recommendation
        --read_loss_log--> loss chart

`ui.py` wires this to components, `generator.py` supplies A1111's generator and
embedder; tests pass fakes. A stopped or failed generation still returns the cells made so far
(they are cached: pressing Generate again continues where it stopped).
"""

from __future__ import annotations

import html
import json
import math
import re
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Callable, Optional

from PIL import Image

from ...compare import (
    METRIC_EXPLANATIONS,
    Bounds,
    Embedder,
    Generator,
    GridGeometry,
    GridResult,
    GridSpec,
    LoraFile,
    MetricsReport,
    Recommendation,
    cell_position,
    compute_metrics,
    draw_grid,
    draw_loss_chart,
    format_weight,
    read_loss_log,
    recommend,
    run_grid,
    save_grid,
)
from ...compare.cache import cached_image_path, lora_hashes
from ...compare.grid import LoraHashes, baseline_requests, plan_cells
from ...compare.run import GridProgress
from ...compare.validation_signal import validation_note
from ...data.folders import IMAGE_EXTENSIONS, scan_dataset
from ...errors import DatasetError, LoraStudioError, SettingsError
from ...fileio import validate_output_name
from .form import (
    DEFAULT_SAMPLER,
    SOURCE_FILES,
    SOURCE_RUN,
    CompareRequest,
    files_defaults,
    find_run,
    lora_files_of,
    parse_prompts,
    parse_seeds,
    parse_weights,
)
from ..train.runs import list_runs
from ..train.actions import Folders

MAX_IMAGES = 2000  # a grid larger than this is refused (hours of generation); split it instead
MAX_TRAINING_IMAGES = 64  # fidelity compares with at most this many training images (evenly picked)
DISPLAY_CELLS = (1000, 1400)  # the cells of the grid shown in the tab fill about this much (the saved PNG is full size)
COLUMNS = ["choice", "weight", "fidelity ↑", "alignment ↑", "drift ↓", "diversity ↑", "verdict"]
COLUMN_TYPES = ["str", "number", "number", "number", "number", "number", "str"]
RECOMMENDED = "★ recommended"
CLOSEST = "★ closest, outside"

STOPPED = "Stopped."


class GenerationStopped(LoraStudioError):
    """The user pressed Interrupt: the image being made is incomplete and is not kept."""


# ---- building and counting the grid -------------------------------------------------------------
@dataclass(frozen=True)
class CompareContext:
    """What the WebUI supplies: folders, the loaded checkpoint's identity, settings that change images."""

    folders: Folders
    cache_dir: Path
    output_dir: Path  # where saved grids go
    base_model_hash: str
    base_model_name: str = ""
    extra: tuple[tuple[str, str], ...] = ()


def build_spec(request: CompareRequest, context: CompareContext) -> GridSpec:
    files = lora_files_of(request, context.folders)
    prompts = parse_prompts(request.prompts)
    if not prompts:
        raise SettingsError("Write at least one prompt (one per line), e.g. 'a photo of sks woman'.")
    width, height, steps = int(request.width), int(request.height), int(request.steps)
    if width % 8 or height % 8:
        raise SettingsError(f"Width and height must be multiples of 8 (got {width}x{height}).")
    triggers = tuple(t for t in _split_triggers(request.trigger_words))
    spec = GridSpec(files=tuple(files), weights=parse_weights(request.weights), prompts=prompts,
                    seeds=parse_seeds(request.seeds), base_model_hash=context.base_model_hash,
                    samplers=((request.sampler or DEFAULT_SAMPLER).strip(),), steps=(steps,),
                    cfg_scales=(float(request.cfg_scale),), negative_prompt=(request.negative_prompt or "").strip(),
                    width=width, height=height, class_prompt=(request.class_prompt or "").strip(),
                    trigger_words=triggers, base_model_name=context.base_model_name, extra=context.extra)
    spec.validate()
    count = count_images(spec)
    if count > MAX_IMAGES:
        raise SettingsError(f"This comparison needs {count} images; the limit is {MAX_IMAGES}. Use fewer files, "
                            "weights, prompts or seeds (e.g. every other epoch) and compare in two passes.")
    return spec


def _split_triggers(text: str) -> list[str]:
    return [t.strip() for t in str(text or "").split(",") if t.strip()]


def count_images(spec: GridSpec) -> int:
    """Distinct images the grid needs (weight 0 is one image per prompt/seed, shared by every file)."""
    fake = {Path(f.path): LoraHashes(f"file{i}", f"file{i}") for i, f in enumerate(spec.files)}
    cells = plan_cells(spec, fake)
    keys = {c.request.key for c in cells} | {b.key for b in baseline_requests(spec, cells)}
    return len(keys)


def pending_images(spec: GridSpec, cache_dir: Path) -> tuple[int, int]:
    """(to generate, total): how many of the grid's distinct images are not in the cache yet."""
    hashes = lora_hashes(cache_dir, [f.path for f in spec.files])
    cells = plan_cells(spec, {Path(p): h for p, h in hashes.items()})
    unique = {c.request.key: c.request for c in cells}
    for b in baseline_requests(spec, cells):
        unique.setdefault(b.key, b)
    missing = sum(1 for r in unique.values() if cached_image_path(cache_dir, r) is None)
    return missing, len(unique)


def plan_text(request: CompareRequest, folders: Folders) -> str:
    """One line under the inputs: what Generate will make (no hashing, no generation)."""
    try:
        files = lora_files_of(request, folders)
        weights, seeds = parse_weights(request.weights), parse_seeds(request.seeds)
        prompts = parse_prompts(request.prompts)
        if not prompts:
            return "Write at least one prompt."
        spec = GridSpec(files=tuple(files), weights=weights, prompts=prompts, seeds=seeds, base_model_hash="plan",
                        width=int(request.width), height=int(request.height),
                        class_prompt=(request.class_prompt or "").strip())
        count = count_images(spec)
    except (LoraStudioError, ValueError, TypeError) as error:
        return f"⚠ {html.escape(str(error))}"
    n_prompts = len(spec.all_prompts)
    text = (f"{len(files)} file(s) × {len(weights)} weight(s) × {n_prompts} prompt(s) × {len(seeds)} seed(s) → "
            f"{count} images at {spec.width}x{spec.height}")
    notes = []
    if 0 in weights:
        notes.append("weight 0 is the base model, made once and shared by every file")
    if len(seeds) < 2:
        notes.append("one seed: diversity is not measured")
    if not spec.class_prompt:
        notes.append("no class prompt: drift is not measured")
    text += (" (" + "; ".join(notes) + ")") if notes else ""
    if count > MAX_IMAGES:
        text = f"⚠ {text}: more than {MAX_IMAGES}, too many"
    return text + ". Images already made are taken from the cache."


# ---- running it --------------------------------------------------------------------------------
@dataclass(frozen=True)
class CellChoice:
    """One cell, as "send to txt2img" needs it."""

    label: str
    prompt: str  # the user prompt + `<lora:name:w>`
    negative_prompt: str
    seed: int
    sampler: str
    steps: int
    cfg_scale: float
    width: int
    height: int
    lora_name: str = ""
    weight: float = 0.0

    def describe(self) -> str:
        steps = f"{self.steps} step" + ("s" if self.steps != 1 else "")
        return (f"{self.label}, seed {self.seed} ({self.sampler}, {steps}, CFG {format_weight(self.cfg_scale)}, "
                f"{self.width}x{self.height})")


@dataclass
class CompareOutcome:
    spec: Optional[GridSpec] = None
    result: Optional[GridResult] = None
    grid_path: Optional[Path] = None  # the full-size labelled grid, saved
    display: Optional[Image.Image] = None  # the grid scaled for the tab
    geometry: Optional[GridGeometry] = None  # of `display`, to find the clicked cell
    cells: list[dict] = field(default_factory=list)  # row, column, CellChoice fields
    report: Optional[MetricsReport] = None
    recommendation: Optional[Recommendation] = None
    table: list[list] = field(default_factory=list)
    recommendation_md: str = ""
    curves: Optional[Image.Image] = None
    status_md: str = ""
    selected: Optional[CellChoice] = None  # the recommended cell (or the first), ready to send
    seconds: float = 0.0
    generated: int = 0
    from_cache: int = 0
    complete: bool = False
    error: str = ""

    def state(self) -> dict:
        """What the tab keeps between clicks (JSON-able): where each cell is on the shown grid."""
        g = self.geometry
        groups = {group.label: group.prompt_tag for group in self.report.groups} if self.report else {}
        return {"geometry": asdict(g) if g else None, "cells": self.cells, "groups": groups}


def run_compare(request: CompareRequest, context: CompareContext, generator: Generator,
                embedder: Optional[Callable[[], Embedder]] = None, cancel=None,
                on_progress: Optional[Callable[[GridProgress], None]] = None,
                on_plan: Optional[Callable[[int, int], None]] = None, bounds: Bounds = Bounds(),
                clock: Callable[[], float] = time.monotonic) -> CompareOutcome:
    """Build the spec, generate (cached), draw, measure, recommend, chart. Raises SettingsError for a bad
    form before anything is generated; problems after that are reported in the outcome."""
    started = clock()
    spec = build_spec(request, context)
    outcome = CompareOutcome(spec=spec)
    if on_plan is not None:
        on_plan(*pending_images(spec, context.cache_dir))
    counts = {"generated": 0, "cached": 0}

    def progress(event: GridProgress) -> None:
        counts["cached" if event.from_cache else "generated"] += 1
        if on_progress is not None:
            on_progress(event)

    try:
        result = run_grid(spec, generator, context.cache_dir, progress, cancel)
    except GenerationStopped:
        result, outcome.error = _partial(spec, context.cache_dir), STOPPED
    except LoraStudioError as error:
        result, outcome.error = _partial(spec, context.cache_dir), str(error)
    except Exception as error:  # A1111's own errors (NaNs, out of memory): keep what was made
        result, outcome.error = _partial(spec, context.cache_dir), f"{type(error).__name__}: {error}"
    if not result.complete and not outcome.error:
        outcome.error = STOPPED  # the cancel token stopped it between two images
    if result.complete and outcome.error == STOPPED:
        outcome.error = ""  # stopped after the last image: nothing is missing
    outcome.result, outcome.complete = result, result.complete and not outcome.error
    outcome.generated, outcome.from_cache = counts["generated"], counts["cached"]

    _draw(outcome, context)
    notes = []
    if outcome.complete and request.metrics:
        notes += _measure(outcome, request, context, embedder, bounds)
    elif not outcome.complete:
        notes.append("The numbers and the recommendation need every cell of the grid: press Generate again to "
                     "finish it (the images made so far are kept).")
    else:
        notes.append("Metrics are off.")
    outcome.recommendation_md = _recommendation_md(outcome, notes)
    outcome.curves, curve_note = _curves(request, context.folders)
    if curve_note:
        outcome.recommendation_md += f"\n\n<small>{html.escape(curve_note)}</small>"
    outcome.seconds = clock() - started
    outcome.status_md = _status(outcome)
    return outcome


class _AlwaysCancelled:
    cancelled = True


class _NoGenerator:
    def generate(self, cell):  # pragma: no cover - never called: the run is cancelled before it would
        raise GenerationStopped(STOPPED)


def _partial(spec: GridSpec, cache_dir: Path) -> GridResult:
    """The cells that are in the cache, nothing generated (what a stopped run leaves)."""
    return run_grid(spec, _NoGenerator(), cache_dir, cancel=_AlwaysCancelled())


def _draw(outcome: CompareOutcome, context: CompareContext) -> None:
    result, spec = outcome.result, outcome.spec
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    label = _file_label(spec)
    path = Path(context.output_dir) / f"{stamp}-{label}.png"
    outcome.grid_path = save_grid(result, path)
    picture = draw_grid(result, display_cell_size(spec))
    outcome.display, outcome.geometry = picture.image, picture.geometry
    for cell in result.cells:
        row, column = cell_position(spec, cell)
        r = cell.request
        choice = _choice(spec, r)
        outcome.cells.append({"row": row, "column": column, "done": result.path(r) is not None, **asdict(choice)})
    outcome.selected = _first_choice(outcome)


def display_cell_size(spec: GridSpec) -> tuple[int, int]:
    """Cells of the grid shown in the tab: the cells fill about DISPLAY_CELLS (width, height) in all,
    each 96-384 px wide and at most 4x the generated size (the saved PNG keeps the full size)."""
    from ...compare.layout import drawn_axes

    rows, columns = drawn_axes(spec)
    values = spec.axis_values()
    n_rows = math.prod(len(values[a]) for a in rows)
    n_columns = math.prod(len(values[a]) for a in columns)
    aspect = spec.height / spec.width
    width = min(DISPLAY_CELLS[0] // max(1, n_columns), int(DISPLAY_CELLS[1] / max(1, n_rows) / aspect), 384,
                spec.width * 4)
    width = max(96, width)
    return width, max(1, round(width * aspect))


def _file_label(spec: GridSpec) -> str:
    names = [f.name for f in spec.files]
    stem = names[0] if len(names) == 1 else _common_prefix(names) or "files"
    stem = re.sub(r"[^\w.-]+", "_", stem).strip("._-") or "grid"
    try:
        return validate_output_name(stem[:60])
    except LoraStudioError:
        return "grid"


def _common_prefix(names: list[str]) -> str:
    prefix = names[0]
    for name in names[1:]:
        while not name.startswith(prefix):
            prefix = prefix[:-1]
    return prefix.rstrip("-_")


def _choice(spec: GridSpec, request) -> CellChoice:
    if request.lora is None:
        label = "base model (weight 0)"
    else:
        label = f"{request.lora.display} @ {format_weight(request.weight)}"
    return CellChoice(label=label, prompt=request.prompt, negative_prompt=request.negative_prompt,
                      seed=request.seed, sampler=request.sampler, steps=request.steps, cfg_scale=request.cfg_scale,
                      width=request.width, height=request.height,
                      lora_name=request.lora.name if request.lora else "", weight=request.weight)


def _first_choice(outcome: CompareOutcome) -> Optional[CellChoice]:
    """The first cell with a LoRA on a subject prompt (not the class prompt), else the first cell."""
    class_prompt = outcome.spec.class_prompt.strip()
    for cell in outcome.result.cells:
        r = cell.request
        if r.lora is not None and r.user_prompt != class_prompt:
            return _choice(outcome.spec, r)
    return _choice(outcome.spec, outcome.result.cells[0].request) if outcome.result.cells else None


def _measure(outcome: CompareOutcome, request: CompareRequest, context: CompareContext,
             embedder: Optional[Callable[[], Embedder]], bounds: Bounds) -> list[str]:
    if embedder is None:
        return ["No image-text model for the numbers; see Settings → LoRA Studio → CLIP model."]
    training_dir = (request.training_dir or "").strip() or _run_training_dir(request, context.folders)
    if not training_dir:
        return ["Fidelity needs the training images: fill in 'Training images' with the dataset folder."]
    try:
        training = training_images(training_dir)
        model = embedder()
        outcome.report = compute_metrics(outcome.result, model, training)
    except LoraStudioError as error:
        return [f"No numbers: {error}"]
    outcome.table = metrics_table(outcome.report)
    try:
        outcome.recommendation = recommend(outcome.report, bounds)
    except LoraStudioError as error:
        return [str(error)]
    outcome.table = metrics_table(outcome.report, outcome.recommendation)
    best = outcome.recommendation.choice
    picked = _cell_of_group(outcome, best.file, best.weight)
    if picked is not None:
        outcome.selected = picked
    return []


def _run_training_dir(request: CompareRequest, folders: Folders) -> str:
    """The dataset of the compared run (or of the run the chosen files come from)."""
    if request.source == SOURCE_FILES:
        return files_defaults(request.files, folders).training_dir
    try:
        return find_run(request.run, folders).config.data.train_dir
    except SettingsError:
        return ""


def training_images(folder: str) -> list[Path]:
    """The training images of a dataset folder (kohya layout or plain), at most MAX_TRAINING_IMAGES."""
    root = Path(folder)
    try:
        paths = [i.path for i in scan_dataset(root).train_items]
    except DatasetError:
        if not root.is_dir():
            raise DatasetError(f"The training images folder {root} does not exist. Check the path.") from None
        paths = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        if not paths:
            raise
    if len(paths) > MAX_TRAINING_IMAGES:
        step = len(paths) / MAX_TRAINING_IMAGES
        paths = [paths[int(i * step)] for i in range(MAX_TRAINING_IMAGES)]
    return paths


def _cell_of_group(outcome: CompareOutcome, lora: Optional[LoraFile], weight: float) -> Optional[CellChoice]:
    class_prompt = outcome.spec.class_prompt.strip()
    matching = [c.request for c in outcome.result.cells
                if (c.request.lora is None if lora is None else
                    (c.request.lora is not None and Path(c.request.lora.path) == Path(lora.path)
                     and c.request.weight == weight))]
    subject = [r for r in matching if r.user_prompt != class_prompt] or matching
    return _choice(outcome.spec, subject[0]) if subject else None


def metrics_table(report: MetricsReport, recommendation: Optional[Recommendation] = None) -> list[list]:
    """Rows in COLUMNS order: one per (file, weight), the base model first."""
    groups = sorted(report.groups, key=lambda g: g.file is not None)
    rows = []
    for g in groups:
        if g.file is None:
            verdict = "baseline"
        elif recommendation is not None and g is recommendation.choice:
            verdict = RECOMMENDED if recommendation.within_bounds else \
                f"{CLOSEST}: " + ", ".join(recommendation.violations)
        elif recommendation is not None:
            problems = _violations(g, recommendation.bounds)
            verdict = "outside: " + ", ".join(problems) if problems else "within bounds"
        else:
            verdict = ""
        rows.append([g.label, g.weight, _round(g.fidelity, 3), _round(g.alignment, 1), _round(g.drift, 3),
                     _round(g.diversity, 3), verdict])
    return rows


def _violations(group, bounds: Bounds) -> list[str]:
    from ...compare.recommend import _violations as engine_violations

    return engine_violations(group, bounds)


def _round(value: Optional[float], digits: int) -> Optional[float]:
    return None if value is None else round(float(value), digits)


def _recommendation_md(outcome: CompareOutcome, notes: list[str]) -> str:
    rec = outcome.recommendation
    parts = []
    if rec is not None:
        choice = rec.choice
        where = choice.file.display if choice.file else "base model"
        if rec.within_bounds:
            parts.append(f"### Recommended: {html.escape(where)} at weight {format_weight(choice.weight)}")
        else:
            parts.append(f"### No choice within bounds — closest: {html.escape(where)} at weight "
                         f"{format_weight(choice.weight)}")
        parts.append(f"`{choice.prompt_tag}` — {html.escape(rec.reason)}")
        note = base_model_note(outcome.report, rec.bounds)
        if note:
            parts.append(f"*{html.escape(note)}*")
        validation = validation_note(outcome.spec.files)
        if validation:
            parts.append(html.escape(validation))
        parts.append("<details><summary>What the numbers mean</summary>\n\n" + "\n".join(
            f"* **{name}**: {html.escape(text)}" for name, text in METRIC_EXPLANATIONS.items())
            + f"\n* **bounds**: {html.escape(rec.bounds.describe())}.\n\n</details>")
    else:
        parts.append("### No recommendation")
    parts.extend(html.escape(n) for n in notes)
    return "\n\n".join(parts)


def base_model_note(report: Optional[MetricsReport], bounds: Bounds) -> str:
    """A hint when the base model itself breaks a bound: then that bound says little about the LoRA."""
    base = report.base if report is not None else None
    if base is None or base.diversity is None or bounds.min_diversity is None:
        return ""
    if base.diversity < bounds.min_diversity:
        return (f"The base model alone has diversity {base.diversity:.3f} < {bounds.min_diversity:.2f} here: with "
                "these settings (few steps, a small size, or a CLIP model that sees little) every seed looks alike "
                "even without a LoRA, so low diversity is not a sign of overfitting in this grid.")
    return ""


def _curves(request: CompareRequest, folders: Folders) -> tuple[Optional[Image.Image], str]:
    names = list(request.curve_runs)
    if not names and request.source == SOURCE_RUN and request.run:
        try:
            names = [find_run(request.run, folders).name]
        except SettingsError:
            names = []
    if not names:
        return None, ""
    records = {r.name: r for r in list_runs(folders.run_roots)}
    series, missing = [], []
    for name in names:
        record = records.get(name) or next((r for r in records.values()
                                            if r.config is not None and r.config.output.name == name), None)
        if record is None:
            missing.append(name)
            continue
        try:
            series.append(read_loss_log(record.folder, record.name))
        except LoraStudioError:
            missing.append(name)
    note = f"No loss log for: {', '.join(missing)}." if missing else ""
    if not series:
        return None, note
    return draw_loss_chart(series, size=(800, 360), title="Training loss (smoothed: thick)"), note


def _status(outcome: CompareOutcome) -> str:
    spec = outcome.spec
    made = (f"{outcome.generated} image(s) generated, {outcome.from_cache} from the cache, in "
            f"{_duration(outcome.seconds)}")
    where = f"Saved the full-size grid as {outcome.grid_path.name}." if outcome.grid_path else ""
    if outcome.error == STOPPED:
        head = "⏹ Stopped: the grey cells were not generated. Press Generate to continue."
    elif outcome.error:
        head = f"⚠ Generation failed: {outcome.error} The grey cells were not generated."
    else:
        head = f"✔ Grid of {len(spec.files)} file(s) × {len(spec.axis_values()['weight'])} weight(s) done."
    return " ".join(html.escape(p) for p in (head, made + ".", where) if p)


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(int(round(seconds)), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{rest:02d}" if minutes >= 60 else f"{minutes}:{rest:02d} min"


# ---- clicks ---------------------------------------------------------------------------------------
def cell_at(state: Optional[dict], x: float, y: float) -> Optional[CellChoice]:
    """The cell under pixel (x, y) of the shown grid, or None (a label, the margin, no grid yet)."""
    if not state or not state.get("geometry"):
        return None
    g = state["geometry"]
    for cell in state.get("cells", []):
        left = g["left"] + cell["column"] * (g["cell_width"] + g["gap"])
        top = g["top"] + cell["row"] * (g["cell_height"] + g["gap"])
        if left <= x < left + g["cell_width"] and top <= y < top + g["cell_height"]:
            return choice_from_dict(cell)
    return None


def cell_of_row(state: Optional[dict], choice_label: str) -> Optional[CellChoice]:
    """The first subject-prompt cell of a table row (by its "choice" label)."""
    if not state:
        return None
    tag = (state.get("groups") or {}).get(choice_label)
    if tag is None:
        return None
    for cell in state.get("cells", []):
        same = (cell["lora_name"] == "" if not tag else
                f"<lora:{cell['lora_name']}:{format_weight(cell['weight'])}>" == tag)
        if same and cell.get("done", True):
            return choice_from_dict(cell)
    return None


def choice_from_dict(values: dict) -> CellChoice:
    return CellChoice(**{k: values[k] for k in CellChoice.__dataclass_fields__})


def send_values(choice: Optional[CellChoice]) -> tuple[str, str, str, int, str]:
    """(description, prompt, negative prompt, seed, settings JSON) for the "send to txt2img" boxes."""
    if choice is None:
        return "", "", "", -1, "{}"
    settings = {"steps": choice.steps, "cfg_scale": choice.cfg_scale, "width": choice.width,
                "height": choice.height, "sampler": choice.sampler}
    return choice.describe(), choice.prompt, choice.negative_prompt, choice.seed, json.dumps(settings)


# ---- JSON (the API) ---------------------------------------------------------------------------
def outcome_to_json(outcome: CompareOutcome, images: bool = True) -> dict:
    """The outcome for POST /lora-studio/v1/compare: cells with row/column (and base64 PNGs)."""
    import base64

    cells = []
    result = outcome.result
    for cell, values in zip(result.cells if result else [], outcome.cells):
        entry = dict(values)
        path = result.path(cell.request)
        entry["cache_key"] = cell.request.key
        if images and path is not None:
            entry["image"] = base64.b64encode(Path(path).read_bytes()).decode()
        cells.append(entry)
    rec = outcome.recommendation
    return {
        "complete": outcome.complete, "error": outcome.error, "seconds": round(outcome.seconds, 3),
        "generated": outcome.generated, "from_cache": outcome.from_cache,
        "grid_path": str(outcome.grid_path) if outcome.grid_path else None,
        "grid": (base64.b64encode(outcome.grid_path.read_bytes()).decode()
                 if images and outcome.grid_path else None),
        "cells": cells,
        "table": {"columns": COLUMNS, "rows": outcome.table},
        "recommendation": None if rec is None else {
            "label": rec.choice.label, "file": rec.choice.file.name if rec.choice.file else None,
            "weight": rec.choice.weight, "within_bounds": rec.within_bounds, "reason": rec.reason,
            "prompt_tag": rec.choice.prompt_tag, "numbers": rec.numbers},
        "recommendation_text": outcome.recommendation_md,
        "selected": asdict(outcome.selected) if outcome.selected else None,
        "status": outcome.status_md,
    }
