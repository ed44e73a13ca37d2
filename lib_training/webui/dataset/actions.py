"""What the Dataset tab's buttons do, without gradio: plain values in, plain values out.

A dataset is a folder under the datasets folder (Settings > LoRA Studio), in kohya_ss's project
layout (data/importer.py): `<name>/img/<repeats>_<trigger> <class>/` + `<name>/reg/<repeats>_<class>/`.
`ui.py` wires these functions to components; A1111 (interrogators, processing, progress)
is passed in as plain callables/objects, so everything here runs in tests with the WebUI faked.
Messages are plain text for the user; `Outcome.ok` says whether it is a success or a problem.
"""

from __future__ import annotations

import html
import re
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

from ...config import OutputSettings
from ...data.caption_tools import (caption_path, find_replace, prefix_captions, read_caption_text, scan_folder,
                                  tag_frequency_table, write_caption)
from ...data.captioner import caption_folder
from ...data.health import ERROR, NOTE, SKIPPED_CODES, WARNING, HealthReport, TokenCounter, check_dataset
from ...data.importer import REG_DIRNAME, ImportResult, dataset_dirs, import_files, import_folder
from ...data.preprocess import CROP_MODES, PreprocessOptions, preprocess_dataset
from ...errors import LoraStudioError, SettingsError
from .names import dataset_root
from .class_images import Generate, generate_class_images, settings_from_mapping
from ..train.dataset_summary import summarize_dataset
from ..train.form import METHOD_DREAMBOOTH, METHOD_LORA
from ..job_progress import JobStopped
from .thumbnails import placeholder_thumbnail, thumbnail

Progress = Callable[..., None]  # (done, total[, text])
MAX_PROBLEM_THUMBNAILS = 60
MAX_TAGS_SHOWN = 60
MAX_NAMES_PER_ISSUE = 6
MAX_CLASS_IMAGES_SHOWN = 48
SEVERITY_MARK = {ERROR: "⛔", WARNING: "⚠", NOTE: "ℹ"}
ISSUE_LABELS = {
    "broken": "broken file", "too_large": "too large", "near_duplicate": "near-duplicate",
    "too_small": "smaller than the resolution", "missing_caption": "no caption", "empty_caption": "empty caption",
    "trigger_missing": "trigger word missing", "caption_too_long": "caption over 75 tokens",
    "caption_not_utf8": "caption not UTF-8", "grayscale": "grayscale", "cmyk": "CMYK", "high_bit_depth": "16-bit",
    "transparency": "transparent", "exif_rotation": "EXIF-rotated", "unsupported_format": "ignored format",
}
CROP_LABELS = {
    "Centre crop": "center",
    "Focal crop (faces, else the most detailed region)": "focal",
    "Auto (faces, else centre)": "auto",
    "Keep aspect ratio (for buckets)": "keep_aspect",
}
assert set(CROP_LABELS.values()) == set(CROP_MODES)


@dataclass
class Outcome:
    message: str
    ok: bool = True
    dataset: str = ""  # the dataset to select afterwards ("" = keep the current one)

    def html(self) -> str:
        css = "lora-studio-ds-ok" if self.ok else "error"
        return f"<div class='{css}'>{html.escape(self.message)}</div>"


def _problem(error: BaseException) -> Outcome:
    return Outcome(f"⚠ {error}", ok=False)


# ---- picking and creating -----------------------------------------------------------------------

@dataclass(frozen=True)
class DatasetInfo:
    name: str
    root: Path
    train_dir: Path
    reg_dir: Optional[Path]
    trigger: str = ""
    class_word: str = ""
    line: str = ""  # the one-line summary (images, captions, repeats, trigger)
    num_images: int = 0
    num_reg_images: int = 0
    error: str = ""


def open_dataset(datasets_dir: Path, name: str) -> DatasetInfo:
    """What the tab shows for a picked dataset: folders, trigger and class words from the folder names, summary."""
    root = dataset_root(datasets_dir, name)
    dirs = dataset_dirs(root)
    reg_dir = dirs.reg_dir if dirs.reg_dir is not None else None
    summary = summarize_dataset(str(dirs.train_dir), str(reg_dir) if reg_dir else "")
    if summary.error:
        return DatasetInfo(name, root, dirs.train_dir, reg_dir, line=summary.error, error=summary.error)
    class_word = summary.class_words[0] if summary.class_words else _reg_class(root)
    return DatasetInfo(name, root, dirs.train_dir, reg_dir, summary.trigger_word, class_word, summary.line,
                       summary.images, summary.reg_images)


def _reg_class(root: Path) -> str:
    """The class word of the first class-image folder (`reg/1_cat` -> "cat"), "" when there is none."""
    try:
        return next((s.tokens for s in scan_folder(root).reg_subsets if s.tokens), "")
    except LoraStudioError:
        return ""


def create_dataset(datasets_dir: Path, name: str, source_folder: str = "", uploads: Sequence[str] = (),
                   trigger: str = "", class_word: str = "", repeats=10,
                   on_progress: Optional[Progress] = None) -> Outcome:
    """Copy a folder and/or uploaded files into `<datasets>/<name>` (a new dataset, or more images for one)."""
    try:
        root = dataset_root(datasets_dir, name)
        repeats_value = _whole_number("Repeats", repeats)
        source = (source_folder or "").strip()
        files = [Path(f) for f in uploads or () if f]
        if not source and not files:
            raise SettingsError("Give a folder of photos (its path on the WebUI's machine) or upload image files.")
        existed = root.is_dir()
        results: list[ImportResult] = []
        if source:
            results.append(import_folder(Path(source).expanduser(), root, trigger, class_word, repeats_value,
                                         on_progress=on_progress))
        if files:
            results.append(import_files(files, root, trigger, class_word, repeats_value, on_progress=on_progress))
    except LoraStudioError as error:
        return _problem(error)
    return Outcome(_import_message(root, results, existed), dataset=root.name)


def _import_message(root: Path, results: list[ImportResult], existed: bool) -> str:
    images = sum(len(r.images) for r in results)
    captions = sum(len(r.captions) for r in results)
    present = sum(len(r.already_present) for r in results)
    folders = sorted({str(s.relative_to(root)) for r in results for s in r.subsets})
    verb = "Added" if existed else f"Created dataset '{root.name}':"
    parts = [f"{verb} {images} image(s) and {captions} caption(s) into {', '.join(folders)}"]
    if any(r.kohya_layout for r in results):
        parts.append("(a kohya folder: copied with its own folder names)")
    if present:
        parts.append(f"; {present} were already there")
    skipped = [s for r in results for s in r.skipped]
    text = " ".join(parts[:2]) + "".join(parts[2:]) + "."
    if skipped:
        shown = "; ".join(f"{s.path.name}: {s.reason}" for s in skipped[:5])
        more = f" (and {len(skipped) - 5} more)" if len(skipped) > 5 else ""
        text += f" Skipped {len(skipped)} file(s): {shown}{more}"
    return text


# ---- health report ------------------------------------------------------------------------------

@dataclass(frozen=True)
class ProblemImage:
    path: Path
    thumbnail: Path
    caption: str  # "name — issue: detail; issue: detail"
    severity: str


@dataclass
class HealthView:
    markdown: str
    problems: list[ProblemImage] = field(default_factory=list)
    report: Optional[HealthReport] = None
    ok: bool = True


def health_report(root: Path, resolution=512, trigger: str = "", thumbnails_dir: Optional[Path] = None,
                  count_tokens: Optional[TokenCounter] = None) -> HealthView:
    """The health report as a Markdown summary and the problem images (thumbnail + what is wrong) for a gallery."""
    try:
        resolution_value = _whole_number("Resolution", resolution)
        report = check_dataset(Path(root), resolution=resolution_value, trigger=trigger or "",
                               count_tokens=count_tokens)
    except LoraStudioError as error:
        return HealthView(f"⚠ {html.escape(str(error))}", ok=False)
    return HealthView(health_markdown(report), problem_images(report, thumbnails_dir), report)


def health_markdown(report: HealthReport) -> str:
    trigger = f", trigger word `{html.escape(report.trigger)}`" if report.trigger else ""
    verdict = "✔ Ready to train" if report.ok else "⛔ Not ready: fix the errors below"
    if report.ok and report.issues:
        verdict += " (see the warnings and notes)"
    lines = [f"**{verdict}.** {report.num_images} images ({report.num_train_images} training, "
             f"{report.num_reg_images} class) checked at {report.resolution} px{trigger} in {report.seconds:.1f} s.",
             "",
             "Shorter side: " + " · ".join(f"{b.label} px: **{b.count}**" for b in report.size_histogram if b.count)]
    if report.issues:
        lines.append("")
    for issue in report.issues:
        label = ISSUE_LABELS.get(issue.code, issue.code)
        names = ", ".join(html.escape(f.path.name) for f in issue.files[:MAX_NAMES_PER_ISSUE])
        more = f" and {len(issue.files) - MAX_NAMES_PER_ISSUE} more" if len(issue.files) > MAX_NAMES_PER_ISSUE else ""
        lines.append(f"- {SEVERITY_MARK.get(issue.severity, '')} **{label}: {len(issue.files)}** ({names}{more}) — "
                     f"{html.escape(issue.message)}")
    if not report.issues:
        lines += ["", "No problems found."]
    if report.duplicates:
        pairs = ", ".join(f"{html.escape(d.first.name)} ≈ {html.escape(d.second.name)}" for d in report.duplicates[:8])
        lines += ["", f"Near-duplicate pairs: {pairs}"]
    return "\n".join(lines)


def problem_images(report: HealthReport, thumbnails_dir: Optional[Path] = None,
                   limit: int = MAX_PROBLEM_THUMBNAILS) -> list[ProblemImage]:
    """One entry per affected file, errors first, with everything wrong with it in the caption."""
    order = {ERROR: 0, WARNING: 1, NOTE: 2}
    by_file: dict[Path, list[tuple[int, str]]] = {}
    not_read = {f.path for issue in report.issues if issue.code in SKIPPED_CODES for f in issue.files}
    for issue in report.issues:
        for affected in issue.files:
            text = ISSUE_LABELS.get(issue.code, issue.code) + (f": {affected.detail}" if affected.detail else "")
            by_file.setdefault(affected.path, []).append((order.get(issue.severity, 3), text))
    ranked = sorted(by_file.items(), key=lambda kv: (min(s for s, _ in kv[1]), str(kv[0])))
    severity = {v: k for k, v in order.items()}
    result = []
    for path, problems in ranked[:limit]:
        problems.sort()
        caption = f"{path.name} — " + "; ".join(_shorten(text, 90) for _, text in problems)
        # Skipped folders and links (maybe leaving the dataset) are never opened, not even for a thumbnail.
        image = placeholder_thumbnail("skipped", thumbnails_dir) if path in not_read else thumbnail(path, thumbnails_dir)
        result.append(ProblemImage(path, image, caption, severity[problems[0][0]]))
    return result


# ---- preprocess ---------------------------------------------------------------------------------

def default_preprocessed_name(name: str, resolution) -> str:
    try:
        return f"{name}-{_whole_number('Resolution', resolution)}" if name else ""
    except SettingsError:
        return f"{name}-processed" if name else ""


def preprocess(datasets_dir: Path, name: str, new_name: str, resolution=512, crop: str = "center",
               flip: bool = False, on_progress: Optional[Progress] = None, face_detector=None) -> Outcome:
    """Preprocess dataset `name` into the new dataset `new_name` (originals untouched); select it after."""
    try:
        source = dataset_root(datasets_dir, name)
        output = dataset_root(datasets_dir, new_name or default_preprocessed_name(name, resolution))
        options = PreprocessOptions(resolution=_whole_number("Resolution", resolution),
                                    crop=CROP_LABELS.get(crop, crop), flip=bool(flip))
        result = preprocess_dataset(source, output, options, on_progress=on_progress, face_detector=face_detector)
    except JobStopped:
        return Outcome("Preprocessing stopped; nothing was written (the new folder is made only when all images "
                       "are done).", ok=False)
    except LoraStudioError as error:
        return _problem(error)
    flipped = sum(1 for i in result.images if i.flipped)
    text = (f"Wrote {len(result.images) - flipped} images" + (f" + {flipped} mirrored copies" if flipped else "")
            + f" at {options.resolution} px into the new dataset '{output.name}' (now selected; the original "
            f"'{source.name}' is unchanged).")
    if options.crop in ("focal", "auto"):
        text += " Faces: " + ("OpenCV's face detector." if result.face_detector != "none"
                              else "no face detector available (OpenCV missing), so " +
                              ("the most detailed region." if options.crop == "focal" else "centre crops."))
    if result.skipped:
        text += f" Left out {len(result.skipped)} file(s) that cannot be trained on: " + "; ".join(
            f"{s.path.name}" for s in result.skipped[:8]) + "."
    return Outcome(text, dataset=output.name)


# ---- captions -----------------------------------------------------------------------------------

def caption_dataset(root: Path, captioner: AbstractContextManager, trigger: str = "", class_word: str = "",
                    overwrite: bool = False, on_progress: Optional[Progress] = None) -> Outcome:
    """Caption the training images with `captioner` (a context manager giving a Captioner), prefixing the
    trigger (and class) word; existing captions are kept unless `overwrite`."""
    done = {"n": 0, "total": 0}

    def progress(n: int, total: int, image: Path) -> None:
        done["n"], done["total"] = n, total
        if on_progress is not None:
            on_progress(n, total, image.name)

    try:
        with captioner as active:
            result = caption_folder(Path(root), active, trigger=trigger or "", overwrite=bool(overwrite),
                                    on_progress=progress, class_word=class_word or "")
    except JobStopped:
        return Outcome(f"Captioning stopped after {done['n']} of {done['total']} images; the captions written so far "
                       "are saved. Press Caption again to do the rest (existing captions are kept).", ok=False)
    except LoraStudioError as error:
        return _problem(error)
    text = f"Wrote {len(result.written)} caption(s)"
    if result.kept:
        text += f", kept {len(result.kept)} existing (tick 'Replace existing captions' to redo them)"
    prefix = " ".join(w for w in (trigger.strip(), class_word.strip()) if w)
    text += (f"; each starts with '{prefix}'." if prefix else ".")
    if result.failed:
        text += f" {len(result.failed)} image(s) could not be read: " + "; ".join(
            p.name for p, _ in result.failed[:8]) + "."
    return Outcome(text, ok=not result.failed)


def add_trigger(root: Path, trigger: str, class_word: str = "") -> Outcome:
    try:
        result = prefix_captions(Path(root), trigger or "", class_word or "")
    except LoraStudioError as error:
        return _problem(error)
    words = " ".join(w for w in ((trigger or "").strip(), (class_word or "").strip()) if w)
    return Outcome(f"Added '{words}' to the start of {len(result.changed)} caption(s); {result.unchanged} already "
                   "had it.")


def replace_in_captions(root: Path, find: str, replace: str, regex: bool = False, ignore_case: bool = False) -> Outcome:
    try:
        result = find_replace(Path(root), find or "", replace or "", regex=bool(regex), ignore_case=bool(ignore_case))
    except LoraStudioError as error:
        return _problem(error)
    if not result.replacements:
        return Outcome(f"'{find}' was not found in any caption; nothing changed.")
    return Outcome(f"Replaced {result.replacements} occurrence(s) in {len(result.changed)} caption(s).")


def tag_table_html(root: Path, limit: int = MAX_TAGS_SHOWN) -> str:
    """Tags over the training and class captions, most frequent first (the data of ss_tag_frequency)."""
    try:
        spec = scan_folder(Path(root))
        tags = tag_frequency_table(spec)
    except LoraStudioError as error:
        return f"<div class='error'>{html.escape(str(error))}</div>"
    if not tags:
        return "<div>No caption tags yet.</div>"
    images = max(spec.num_train_images + spec.num_reg_images, 1)
    rows = "".join(f"<tr><td>{html.escape(t.tag)}</td><td>{t.count}</td><td>{100 * t.count / images:.0f}%</td></tr>"
                   for t in tags[:limit])
    more = f"<div>… and {len(tags) - limit} more tags.</div>" if len(tags) > limit else ""
    return ("<table class='lora-studio-tags'><thead><tr><th>tag</th><th>images</th><th>share</th></tr></thead>"
            f"<tbody>{rows}</tbody></table>{more}")


# ---- the caption editor -------------------------------------------------------------------------

@dataclass(frozen=True)
class EditorItem:
    image: Path
    thumbnail: Path
    label: str  # file name, for the gallery


def editor_items(root: Path, thumbnails_dir: Optional[Path] = None) -> list[EditorItem]:
    """The training images of the dataset, in training order, with thumbnails."""
    spec = scan_folder(Path(root))
    return [EditorItem(item.path, thumbnail(item.path, thumbnails_dir), item.path.name) for item in spec.train_items]


def read_caption(root: Path, image: str) -> tuple[str, str]:
    """(caption text, where it is) for an image of the dataset."""
    path = _inside(root, image)
    target = caption_path(path)
    state = "" if target.exists() else " (no caption file yet: Save creates it)"
    return read_caption_text(target).strip(), f"{path.name} → {target.name}{state}"


def save_caption(root: Path, image: str, text: str) -> Outcome:
    """Write the caption of one image (its existing .txt/.caption, else <stem>.txt), atomically, as UTF-8."""
    try:
        path = _inside(root, image)
        if not path.is_file():
            raise SettingsError(f"'{path.name}' is no longer in the dataset; pick the dataset again.")
        target = write_caption(caption_path(path), text or "")
    except LoraStudioError as error:
        return _problem(error)
    empty = " It is empty, so training uses the folder name as caption." if not (text or "").strip() else ""
    return Outcome(f"Saved {target.name}.{empty}")


def _inside(root: Path, image: str) -> Path:
    if not image:
        raise SettingsError("Click an image in the gallery first.")
    if "\x00" in image:
        raise SettingsError(f"{image!r} is not an image of the dataset '{Path(root).name}'.")
    path = Path(image).resolve()
    base = Path(root).resolve()
    if base not in path.parents:
        raise SettingsError(f"'{image}' is not an image of the dataset '{Path(root).name}'.")
    return path


# ---- class images -------------------------------------------------------------------------------

def make_class_images(root: Path, values: dict, generate: Generate, on_progress: Optional[Progress] = None,
                      should_stop: Optional[Callable[[], bool]] = None) -> tuple[Outcome, list[Path]]:
    """Generate the missing class images into `<root>/reg/1_<class>/`; (outcome, the images of that folder)."""
    try:
        settings = settings_from_mapping(values)
        result = generate_class_images(Path(root), settings, generate, on_progress=on_progress,
                                       should_stop=should_stop)
    except LoraStudioError as error:
        return _problem(error), []
    shown = sorted(result.folder.glob("*.png"))[:MAX_CLASS_IMAGES_SHOWN] if result.folder.is_dir() else []
    return Outcome(result.message(), ok=not (result.error or result.stopped)), shown


# ---- hand-off to the Train tab ------------------------------------------------------------------

@dataclass(frozen=True)
class TrainValues:
    train_dir: str
    reg_dir: str
    trigger: str
    method: str
    name: str
    message: str


def use_in_train(root: Path, trigger: str = "", current_name: str = "") -> TrainValues:
    """What to put in the Train tab: the image folder, the class-image folder (DreamBooth when there is one),
    the trigger word, and the dataset's name as LoRA name when the Train tab has none yet (or the default)."""
    root = Path(root)
    dirs = dataset_dirs(root)
    reg = root / REG_DIRNAME
    reg_images = _count_reg_images(reg)
    current = (current_name or "").strip()
    name = current if current and current != OutputSettings().name else _lora_name(root.name)
    method = METHOD_DREAMBOOTH if reg_images else METHOD_LORA
    text = f"Train tab filled: {dirs.train_dir}"
    text += f", {reg_images} class images (DreamBooth-LoRA)" if reg_images else " (LoRA, no class images)"
    if trigger:
        text += f", trigger word '{trigger.strip()}'"
    return TrainValues(str(dirs.train_dir), str(reg) if reg_images else "", (trigger or "").strip(), method, name,
                       text + ".")


def _count_reg_images(reg: Path) -> int:
    if not reg.is_dir():
        return 0
    try:
        return scan_folder(reg).num_train_images  # a reg folder scanned on its own lists as "training"
    except LoraStudioError:
        return 0


def _lora_name(dataset_name: str) -> str:
    cleaned = re.sub(r"[^\w .+\-()\[\]]", "_", dataset_name).strip() or "my_lora"
    return cleaned if cleaned[0].isalnum() or cleaned[0] == "_" else "_" + cleaned


# ---- helpers ------------------------------------------------------------------------------------

def _whole_number(name: str, value) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise SettingsError(f"{name} must be a whole number, got {value!r}.") from None
    if number != int(number) or number < 1:
        raise SettingsError(f"{name} must be a whole number of 1 or more, got {value!r}.")
    return int(number)


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"

