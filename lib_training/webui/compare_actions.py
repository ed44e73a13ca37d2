"""What the Compare tab does, without gradio or A1111: plain values in, plain values out.

The flow of one comparison:

    request (the form) --build_spec--> GridSpec --run_grid(generator)--> images (cached)
        --draw/save--> grid PNG    --compute_metrics(embedder)--> table + recommendation
        --read_loss_log--> loss chart

`ui_compare.py` wires this to components, `compare_generator.py` supplies A1111's generator and
embedder; tests pass fakes. A stopped or failed generation still returns the cells made so far
(they are cached: pressing Generate again continues where it stopped).
"""

from __future__ import annotations

import html
import json
import math
import re
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

from PIL import Image

from ..compare import (
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
    run_files,
    run_grid,
    save_grid,
)
from ..compare.cache import cached_image_path, lora_hashes
from ..compare.grid import LoraHashes, baseline_requests, plan_cells
from ..compare.run import GridProgress
from ..data.folders import IMAGE_EXTENSIONS, scan_dataset
from ..errors import DatasetError, LoraStudioError, SettingsError
from ..fileio import validate_output_name
from .dataset_summary import summarize_dataset
from .outputs import read_safetensors_metadata, user_metadata_path
from .runs import RunRecord, list_runs
from .train_actions import Folders

SOURCE_RUN = "A training run (all its epoch files)"
SOURCE_FILES = "Files from the Lora folder"
SOURCES = (SOURCE_RUN, SOURCE_FILES)
DEFAULT_WEIGHTS = "0, 0.25, 0.5, 0.75, 1"
DEFAULT_SEEDS = "1, 2"
DEFAULT_SAMPLER = "Euler a"
DEFAULT_STEPS = 20
DEFAULT_CFG = 7.0
DEFAULT_SIZE = 512
MAX_IMAGES = 2000  # a grid larger than this is refused (hours of generation); split it instead
MAX_TRAINING_IMAGES = 64  # fidelity compares with at most this many training images (evenly picked)
DISPLAY_CELLS = (1000, 1400)  # the cells of the grid shown in the tab fill about this much (the saved PNG is full size)
RUNS_FOLDER_NAME = "lora_studio_runs"
COLUMNS = ["choice", "weight", "fidelity ↑", "alignment ↑", "drift ↓", "diversity ↑", "verdict"]
COLUMN_TYPES = ["str", "number", "number", "number", "number", "number", "str"]
RECOMMENDED = "★ recommended"
CLOSEST = "★ closest, outside"


STOPPED = "Stopped."


class GenerationStopped(LoraStudioError):
    """The user pressed Interrupt: the image being made is incomplete and is not kept."""


# ---- the form ---------------------------------------------------------------------------------
@dataclass
class CompareRequest:
    """The Compare tab's inputs (also the body of POST /lora-studio/v1/compare)."""

    source: str = SOURCE_RUN
    run: str = ""  # run name (source = run)
    files: tuple[str, ...] = ()  # paths relative to the Lora folder (source = files)
    weights: str = DEFAULT_WEIGHTS
    prompts: str = ""  # one per line
    class_prompt: str = ""  # the class without the trigger word: what drift is measured on
    trigger_words: str = ""  # comma separated; removed from prompts for the CLIP score
    seeds: str = DEFAULT_SEEDS
    negative_prompt: str = ""
    sampler: str = DEFAULT_SAMPLER
    steps: int = DEFAULT_STEPS
    cfg_scale: float = DEFAULT_CFG
    width: int = DEFAULT_SIZE
    height: int = DEFAULT_SIZE
    training_dir: str = ""  # training images for fidelity (empty: the run's dataset)
    metrics: bool = True
    curve_runs: tuple[str, ...] = ()  # runs whose loss curves are drawn (empty: the compared run)

    @classmethod
    def from_json(cls, body: dict) -> CompareRequest:
        """From an API body: lists or strings for weights/prompts/seeds; `run` or `files` picks the source."""
        if not isinstance(body, dict):
            raise SettingsError("The body must be a JSON object, e.g. {\"run\": \"my_lora\"}.")
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(body) - known)
        if unknown:
            raise SettingsError(f"Unknown field(s) {', '.join(unknown)}. Known: {', '.join(sorted(known))}.")
        values = dict(body)
        for key, sep in (("weights", ", "), ("seeds", ", "), ("prompts", "\n"), ("trigger_words", ", ")):
            if isinstance(values.get(key), (list, tuple)):
                values[key] = sep.join(str(v) for v in values[key])
        for key in ("files", "curve_runs"):
            if isinstance(values.get(key), str):
                values[key] = (values[key],)
            if key in values:
                values[key] = tuple(str(v) for v in values[key] or ())
        if "source" not in values:
            values["source"] = SOURCE_FILES if values.get("files") and not values.get("run") else SOURCE_RUN
        elif values["source"] in ("run", "files"):
            values["source"] = SOURCE_RUN if values["source"] == "run" else SOURCE_FILES
        return cls(**values)


def request_from_form(source, run, files, weights, prompts, class_prompt, trigger, seeds, negative, sampler, steps,
                      cfg, width, height, training_dir, metrics, curve_runs) -> CompareRequest:
    """The tab's values (in ui_compare's `form` order) as a request; empty numbers get the defaults."""
    return CompareRequest(
        source=source or SOURCE_RUN, run=run or "", files=tuple(files or ()), weights=weights or "",
        prompts=prompts or "", class_prompt=class_prompt or "", trigger_words=trigger or "", seeds=seeds or "",
        negative_prompt=negative or "", sampler=sampler or DEFAULT_SAMPLER, steps=int(steps or DEFAULT_STEPS),
        cfg_scale=float(cfg if cfg not in (None, "") else DEFAULT_CFG), width=int(width or DEFAULT_SIZE),
        height=int(height or DEFAULT_SIZE), training_dir=training_dir or "", metrics=bool(metrics),
        curve_runs=tuple(curve_runs or ()))


def parse_weights(text: str) -> tuple[float, ...]:
    values = []
    for part in _split_list(text):
        try:
            value = float(part)
        except ValueError:
            raise SettingsError(f"Weight {part!r} is not a number. Write weights like 0, 0.5, 1.") from None
        if not math.isfinite(value):
            raise SettingsError(f"Weight {part!r} is not a finite number.")
        values.append(round(value, 6) + 0.0)
    if not values:
        raise SettingsError("Give at least one weight, e.g. 0, 0.5, 1 (0 is the base model without the LoRA).")
    return tuple(dict.fromkeys(values))


def parse_seeds(text: str) -> tuple[int, ...]:
    values = []
    for part in _split_list(text):
        try:
            value = int(part)
        except ValueError:
            raise SettingsError(f"Seed {part!r} is not a whole number. Write seeds like 1, 2, 3.") from None
        if value < 0:
            raise SettingsError(f"Seed {value} is random (-1): a random seed cannot be compared or cached. "
                                "Use fixed seeds such as 1, 2, 3.")
        values.append(value)
    if not values:
        raise SettingsError("Give at least one seed, e.g. 1, 2 (two or more also measure diversity).")
    return tuple(dict.fromkeys(values))


def parse_prompts(text: str) -> tuple[str, ...]:
    return tuple(dict.fromkeys(line.strip() for line in (text or "").splitlines() if line.strip()))


def _split_list(text: str) -> list[str]:
    return [p for p in re.split(r"[,\s;]+", str(text or "").strip()) if p]


# ---- choices: runs and files -------------------------------------------------------------------
def compare_runs(folders: Folders) -> list[RunRecord]:
    """Runs with a readable config (newest first): those whose files can be found."""
    return [r for r in list_runs(folders.run_roots) if r.config is not None]


def run_names(folders: Folders) -> list[str]:
    return list(dict.fromkeys(r.config.output.name for r in compare_runs(folders)))


def curve_run_names(folders: Folders) -> list[str]:
    """Runs with a loss log, by folder name."""
    return list(dict.fromkeys(r.name for r in list_runs(folders.run_roots) if r.losses))


def find_run(name: str, folders: Folders) -> RunRecord:
    name = (name or "").strip()
    if not name:
        raise SettingsError("Choose a run to compare (or switch to files from the Lora folder).")
    for record in compare_runs(folders):
        if record.config.output.name == name or record.name == name:
            return record
    raise SettingsError(f"No run named {name!r} in {', '.join(str(p) for p in folders.run_roots)}. "
                        "Refresh the list and choose again.")


def lora_file_choices(lora_dir: Path) -> list[str]:
    """Every .safetensors in the Lora folder and its subfolders (not the runs folder), relative, sorted."""
    root = Path(lora_dir)
    if not root.is_dir():
        return []
    found = []
    for path in root.rglob("*.safetensors"):
        relative = path.relative_to(root)
        if RUNS_FOLDER_NAME in relative.parts[:-1] or any(p.startswith(".") for p in relative.parts):
            continue
        if path.is_file():
            found.append(relative.as_posix())
    return sorted(found, key=str.lower)


def run_lora_files(record: RunRecord, folders: Folders) -> list[LoraFile]:
    """The run's epoch files and final file; they must be where A1111 finds LoRAs."""
    name = record.config.output.name
    candidates = [Path(record.config.output.output_dir)] if record.config.output.output_dir else []
    candidates.append(Path(folders.lora_dir))
    folder = next((c for c in candidates if c.is_dir() and _has_run_files(c, name)), None)
    if folder is None:
        raise SettingsError(f"The run {name!r} has no LoRA files yet ({name}-000001.safetensors ... or "
                            f"{name}.safetensors) in {Path(folders.lora_dir)}. Train at least one epoch with "
                            "'save every N epochs' set, or pick files one by one.")
    files = run_files(folder, name)
    for lora in files:
        _require_in_lora_dir(Path(lora.path), folders.lora_dir)
    return files


def chosen_files(names: Iterable[str], folders: Folders) -> list[LoraFile]:
    root = Path(folders.lora_dir)
    files = []
    for name in names:
        path = (root / str(name)).resolve()
        _require_in_lora_dir(path, root)
        if path.suffix.lower() != ".safetensors" or not path.is_file():
            raise SettingsError(f"{name} is not a .safetensors file in the Lora folder. Refresh the list.")
        files.append(LoraFile(path, path.stem))
    if not files:
        raise SettingsError("Choose at least one LoRA file to compare.")
    stems = [f.name for f in files]
    doubled = sorted({s for s in stems if stems.count(s) > 1})
    if doubled:
        raise SettingsError(f"Two chosen files are both called {doubled[0]!r}: A1111 tells LoRAs apart by file "
                            "name only (`<lora:name:w>`), so compare them one at a time or rename one.")
    return files


def _has_run_files(folder: Path, name: str) -> bool:
    return (folder / f"{name}.safetensors").is_file() or any(folder.glob(f"{_glob_escape(name)}-[0-9]*.safetensors"))


def _glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


def _require_in_lora_dir(path: Path, lora_dir: Path) -> None:
    root = Path(lora_dir).resolve()
    try:
        Path(path).resolve().relative_to(root)
    except ValueError:
        raise SettingsError(f"{path} is outside the WebUI's Lora folder {root}; A1111 applies LoRAs from that "
                            "folder only (as <lora:name:weight>). Copy the file there first.") from None


# ---- defaults from a run or from files ---------------------------------------------------------
@dataclass
class Defaults:
    """What choosing a run (or files) fills in."""

    prompts: str = ""
    class_prompt: str = ""
    trigger_words: str = ""
    training_dir: str = ""
    size: int = DEFAULT_SIZE
    files: list[str] = field(default_factory=list)  # labels of the files that will be compared
    curve_runs: list[str] = field(default_factory=list)
    message: str = ""


def run_defaults(name: str, folders: Folders) -> Defaults:
    """Prompts from the run's trigger word and class, its dataset and resolution, its files."""
    record = find_run(name, folders)
    config = record.config
    summary = summarize_dataset(config.data.train_dir, "", config.data.caption_extension)
    trigger = config.output.trigger_word.strip() or summary.trigger_word
    class_word = summary.class_words[0] if summary.class_words else ""
    prompts, class_prompt = default_prompts(trigger, class_word, first_caption(config.data.train_dir))
    defaults = Defaults(prompts=prompts, class_prompt=class_prompt, trigger_words=trigger,
                        training_dir=config.data.train_dir, size=int(config.data.resolution or DEFAULT_SIZE),
                        curve_runs=[record.name] if record.losses else [])
    try:
        files = run_lora_files(record, folders)
        defaults.files = [f.display for f in files]
        defaults.message = f"{len(files)} file(s) of {config.output.name}: " + ", ".join(defaults.files)
    except SettingsError as error:
        defaults.message = f"⚠ {error}"
    return defaults


def files_defaults(names: Sequence[str], folders: Folders) -> Defaults:
    """For files picked one by one: trigger words from their cards (`<name>.json`) or metadata, and the
    dataset of the run they came from when its folder is there."""
    try:
        files = chosen_files(names, folders)
    except SettingsError as error:
        return Defaults(message=f"⚠ {error}")
    triggers = list(dict.fromkeys(t for f in files if (t := trigger_of_file(Path(f.path)))))
    runs = {r.config.output.name: r for r in compare_runs(folders)}
    origin = next((runs[n] for f in files if (n := _run_name_of(f.name)) in runs), None)
    train_dir = origin.config.data.train_dir if origin else ""
    summary = summarize_dataset(train_dir) if train_dir else None
    class_word = summary.class_words[0] if summary and summary.class_words else ""
    prompts, class_prompt = default_prompts(triggers[0] if triggers else "", class_word, first_caption(train_dir))
    size = int(origin.config.data.resolution) if origin else DEFAULT_SIZE
    curves = list(dict.fromkeys(r.name for f in files if (r := runs.get(_run_name_of(f.name))) and r.losses))
    return Defaults(prompts=prompts, class_prompt=class_prompt, trigger_words=", ".join(triggers),
                    training_dir=train_dir, size=size, files=[f.display for f in files], curve_runs=curves,
                    message=f"{len(files)} file(s): " + ", ".join(f.display for f in files))


def default_prompts(trigger: str, class_word: str, caption: str = "") -> tuple[str, str]:
    """("a photo of sks cat", "a photo of a cat"): the subject prompt and the class prompt for drift."""
    trigger, class_word = trigger.strip(), class_word.strip()
    if trigger or class_word:
        subject = " ".join(p for p in (trigger, class_word) if p)
        prompt = f"a photo of {subject}"
    else:
        prompt = caption.strip() or "a photo"
    class_prompt = f"a photo of {_article(class_word)} {class_word}" if class_word else ""
    return prompt, class_prompt


def first_caption(train_dir: str) -> str:
    if not (train_dir or "").strip():
        return ""
    try:
        items = scan_dataset(Path(train_dir)).train_items
    except DatasetError:
        return ""
    return next((i.caption for i in items if i.caption.strip()), "")


def trigger_of_file(path: Path) -> str:
    """The activation text of A1111's card, else the modelspec trigger phrase of the file."""
    card = user_metadata_path(path)
    if card.is_file():
        try:
            text = json.loads(card.read_text(encoding="utf-8")).get("activation text", "")
            if isinstance(text, str) and text.strip():
                return text.strip()
        except (OSError, ValueError, AttributeError):
            pass
    return str(read_safetensors_metadata(path).get("modelspec.trigger_phrase") or "").strip()


def _run_name_of(stem: str) -> str:
    match = re.match(r"^(.*)-\d{6}$", stem)
    return match.group(1) if match else stem


def _article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


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


def lora_files_of(request: CompareRequest, folders: Folders) -> list[LoraFile]:
    if request.source == SOURCE_FILES:
        return chosen_files(request.files, folders)
    return run_lora_files(find_run(request.run, folders), folders)


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
    from ..compare.layout import drawn_axes

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
    from ..compare.recommend import _violations as engine_violations

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


def with_defaults(request: CompareRequest, folders: Folders, given: Optional[Iterable[str]] = None) -> CompareRequest:
    """Prompts, class prompt, trigger words, training images and size filled from the run (or the files'
    run and cards), as choosing a run in the tab does. `given`: the fields the caller set (an API body's
    keys), which are kept even when empty; without it, empty fields are filled."""
    defaults = files_defaults(request.files, folders) if request.source == SOURCE_FILES else \
        run_defaults(request.run, folders)
    given = set(given) if given is not None else None
    values = {}
    for key, default in (("prompts", defaults.prompts), ("class_prompt", defaults.class_prompt),
                         ("trigger_words", defaults.trigger_words), ("training_dir", defaults.training_dir),
                         ("width", defaults.size), ("height", defaults.size)):
        keep = key in given if given is not None else bool(str(getattr(request, key)).strip())
        if not keep:
            values[key] = default
    return replace(request, **values)
