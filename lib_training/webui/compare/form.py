"""The Compare tab's form, without gradio or A1111: the request, its parsers, the runs and files it
can compare, and what choosing a run (or files) fills in. `actions.py` runs the comparison.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable, Optional, Sequence

from ...compare import LoraFile, run_files
from ...data.folders import scan_dataset
from ...errors import DatasetError, SettingsError
from ..train.dataset_summary import summarize_dataset
from ..backend.outputs import read_safetensors_metadata, user_metadata_path
from ..train.runs import RunRecord, list_runs
from ..train.actions import Folders

SOURCE_RUN = "A training run (all its epoch files)"
SOURCE_FILES = "Files from the Lora folder"
SOURCES = (SOURCE_RUN, SOURCE_FILES)
DEFAULT_WEIGHTS = "0, 0.25, 0.5, 0.75, 1"
FULL_RUN_WEIGHTS = "0, 1"  # a full fine-tune's checkpoint has no weight: 0 = the loaded model, 1 = the checkpoint
DEFAULT_SEEDS = "1, 2"
DEFAULT_SAMPLER = "Euler a"
DEFAULT_STEPS = 20
DEFAULT_CFG = 7.0
DEFAULT_SIZE = 512
RUNS_FOLDER_NAME = "lora_studio_runs"


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
    """The tab's values (in ui.py's `form` order) as a request; empty numbers get the defaults."""
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


def is_full_run(record: RunRecord) -> bool:
    return record.config.network.method == "full"


def run_checkpoint_files(record: RunRecord, folders: Folders) -> list[LoraFile]:
    """A full fine-tune's epoch checkpoints and final one; they must be where A1111 finds checkpoints."""
    name, root = record.config.output.name, folders.checkpoint_dir
    candidates = [Path(p) for p in (record.config.output.output_dir, root) if p]
    folder = next((c for c in candidates if c.is_dir() and _has_run_files(c, name)), None)
    if folder is None or root is None:
        raise SettingsError(f"The full fine-tune {name!r} has no checkpoints yet ({name}-000001.safetensors ... "
                            f"or {name}.safetensors) in the WebUI's checkpoint folder. Train at least one epoch "
                            "with 'save every N epochs' set.")
    files = run_files(folder, name, checkpoints=True)
    for checkpoint in files:
        _require_inside(Path(checkpoint.path), root, "checkpoint", "checkpoints")
    return files


def run_lora_files(record: RunRecord, folders: Folders) -> list[LoraFile]:
    """The run's epoch files and final file; they must be where A1111 finds LoRAs (or checkpoints)."""
    if is_full_run(record):
        return run_checkpoint_files(record, folders)
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
        if "\x00" in str(name):
            raise SettingsError(f"{str(name)!r} is not a file name (it holds a NUL byte). Choose a file from the list.")
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
    _require_inside(path, lora_dir, "Lora", "LoRAs (as <lora:name:weight>)")


def _require_inside(path: Path, folder: Path, what: str, loads: str) -> None:
    root = Path(folder).resolve()
    try:
        Path(path).resolve().relative_to(root)
    except ValueError:
        raise SettingsError(f"{path} is outside the WebUI's {what} folder {root}; A1111 loads {loads} from that "
                            "folder only. Copy the file there first.") from None


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
    weights: str = ""  # "0, 1" for a full fine-tune's checkpoints (the loaded model, the checkpoint); "" = keep


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
                        curve_runs=[record.name] if record.losses else [],
                        weights=FULL_RUN_WEIGHTS if is_full_run(record) else "")
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


def lora_files_of(request: CompareRequest, folders: Folders) -> list[LoraFile]:
    if request.source == SOURCE_FILES:
        return chosen_files(request.files, folders)
    return run_lora_files(find_run(request.run, folders), folders)


def with_defaults(request: CompareRequest, folders: Folders, given: Optional[Iterable[str]] = None) -> CompareRequest:
    """Prompts, class prompt, trigger words, training images and size filled from the run (or the files'
    run and cards), as choosing a run in the tab does. `given`: the fields the caller set (an API body's
    keys), which are kept even when empty; without it, empty fields are filled."""
    defaults = files_defaults(request.files, folders) if request.source == SOURCE_FILES else \
        run_defaults(request.run, folders)
    given = set(given) if given is not None else None
    values = {}
    if defaults.weights and ("weights" not in given if given is not None else request.weights == DEFAULT_WEIGHTS):
        values["weights"] = defaults.weights
    for key, default in (("prompts", defaults.prompts), ("class_prompt", defaults.class_prompt),
                         ("trigger_words", defaults.trigger_words), ("training_dir", defaults.training_dir),
                         ("width", defaults.size), ("height", defaults.size)):
        keep = key in given if given is not None else bool(str(getattr(request, key)).strip())
        if not keep:
            values[key] = default
    return replace(request, **values)
