"""Class (regularisation) images for DreamBooth prior preservation, made by any text-to-image generator.

For every training (instance) image, `per_image` images are generated from
  * the class prompt (default: the class word, e.g. "cat"), or
  * that image's caption with the trigger word replaced by the class word (or removed when the
    caption already names the class): "sks cat, sitting on a couch" -> "cat, sitting on a couch";
and written as a kohya regularisation folder:

    <dataset>/reg/1_<class>/00000.png + 00000.txt (the prompt)   <- seed = base seed + 0
                            00001.png + 00001.txt                <- seed = base seed + 1 ...

Image `i` always has seed `base + i`, so a run stopped half-way (Interrupt, an error, a restart)
continues where it stopped: images already on disk are skipped, and the result is the same as an
uninterrupted run. Each file is written atomically (caption first, then the image), so an image
on disk is complete and has its caption. The settings of the last run are kept in
`.lora_studio_class_images.json` in that folder; a run with other settings says that the
existing images were made differently.

The generation itself is a `Generate` callable (prompt + seeds -> images): the Dataset tab passes
A1111's processing on the loaded model (`webui/dataset/class_images.py`), `lora-studio demo` the toy
base model, tests a fake. Engine code: nothing here knows the WebUI.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

from PIL import Image
from PIL.PngImagePlugin import PngInfo

from ..errors import LoraStudioError, SettingsError
from ..fileio import atomic_write_bytes
from .caption_tools import contains_word, scan_folder, tidy_caption, write_caption
from .importer import REG_DIRNAME, subset_folder_name

MANIFEST = ".lora_studio_class_images.json"
DEFAULT_SAMPLER = "DPM++ 2M"
DEFAULT_SCHEDULER = "Automatic"
MAX_PER_IMAGE = 200
MAX_BATCH = 64


class ClassImagesStopped(Exception):
    """Interrupt was pressed while an image was being made: that batch is not saved."""


@dataclass(frozen=True)
class ClassImageSettings:
    class_word: str
    prompt: str = ""  # "" = the class word
    from_captions: bool = False  # each instance caption, trigger word -> class word
    trigger: str = ""
    per_image: int = 10
    negative_prompt: str = ""
    sampler: str = DEFAULT_SAMPLER
    scheduler: str = DEFAULT_SCHEDULER
    steps: int = 20
    cfg_scale: float = 7.0
    width: int = 512
    height: int = 512
    seed: int = 1234
    batch_size: int = 1
    repeats: int = 1

    def validate(self) -> None:
        if not " ".join(self.class_word.split()):
            raise SettingsError("Give the class word (what the subject is: 'cat', 'woman', 'building'): the class "
                                "images show that class, and the folder is named '1_<class>'.")
        _whole("Images per instance image", self.per_image, 1, MAX_PER_IMAGE)
        _whole("Sampling steps", self.steps, 1, 150)
        _whole("Batch size", self.batch_size, 1, MAX_BATCH)
        _whole("Repeats", self.repeats, 1, 10_000)
        _whole("Seed", self.seed, 0, 2**32 - 1)
        for name, side in (("Width", self.width), ("Height", self.height)):
            _whole(name, side, 64, 4096)
            if side % 8:
                low = side // 8 * 8
                raise SettingsError(f"{name} {side} is not a multiple of 8; use {low} or {low + 8}.")
        if not 0 < float(self.cfg_scale) <= 30:
            raise SettingsError(f"CFG scale must be above 0 and at most 30, got {self.cfg_scale}.")
        if self.from_captions and not self.trigger.strip():
            raise SettingsError("Give the trigger word: it is replaced by the class word in each caption.")

    @property
    def class_prompt(self) -> str:
        return " ".join(self.prompt.split()) or " ".join(self.class_word.split())

    def generation_key(self) -> dict:
        """What decides the images (not the batch size, which only groups them)."""
        data = asdict(self)
        data.pop("batch_size")
        return data


@dataclass(frozen=True)
class ClassImageJob:
    index: int
    seed: int
    prompt: str
    image: Path  # destination PNG
    caption: Path  # destination .txt (the prompt)
    instance: Path  # the training image it belongs to


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str
    negative_prompt: str
    seeds: tuple[int, ...]  # consecutive; one image per seed
    sampler: str
    scheduler: str
    steps: int
    cfg_scale: float
    width: int
    height: int


Generate = Callable[[GenerationRequest], Sequence[Image.Image]]
Progress = Callable[[int, int, str], None]  # (batches done, batches in all, text)


@dataclass
class ClassImagesResult:
    folder: Path
    planned: int = 0  # images the settings ask for
    existing: int = 0  # already on disk (an earlier run): kept, not made again
    written: list[Path] = field(default_factory=list)
    stopped: bool = False
    error: str = ""
    note: str = ""  # e.g. the settings differ from the run that made the existing images

    @property
    def complete(self) -> bool:
        return self.existing + len(self.written) >= self.planned

    def message(self) -> str:
        made = f"Made {len(self.written)} class image(s)"
        kept = f", kept {self.existing} already there" if self.existing else ""
        where = f" in {self.folder}"
        total = f" ({self.existing + len(self.written)}/{self.planned})"
        if self.error:
            status = f" — stopped by an error: {self.error} Generate again to continue from here."
        elif self.stopped:
            status = " — stopped. Generate again with the same settings to continue where it stopped."
        elif self.complete:
            status = " — done."
        else:
            status = " — some images were skipped; generate again to make them."
        note = f" {self.note}" if self.note else ""
        return made + kept + where + total + status + note


def class_folder(root: Path, settings: ClassImageSettings) -> Path:
    """`<root>/reg/<repeats>_<class>`."""
    return Path(root) / REG_DIRNAME / subset_folder_name(settings.repeats, "", settings.class_word)


def class_prompt_from_caption(caption: str, trigger: str, class_word: str) -> str:
    """The caption with the trigger word replaced by the class word, or removed if the class is named already."""
    trigger_words = trigger.split()
    class_word = " ".join(class_word.split())
    if not trigger_words:
        return tidy_caption(caption) or class_word
    pattern = re.compile(r"(?<!\w)" + r"\s+".join(re.escape(w) for w in trigger_words) + r"(?!\w)", re.IGNORECASE)
    without = pattern.sub("", caption)
    if contains_word(without, class_word):
        result = without
    else:
        result = pattern.sub(class_word, caption, count=1)
        result = pattern.sub("", result)
    result = tidy_caption(result)
    return result or class_word


def plan_class_images(root: Path, settings: ClassImageSettings) -> list[ClassImageJob]:
    """Every class image the settings ask for, in order (index i has seed base + i)."""
    settings.validate()
    folder = class_folder(root, settings)
    instances = scan_folder(Path(root)).train_items
    jobs = []
    width = max(5, len(str(len(instances) * settings.per_image)))
    for n, item in enumerate(instances):
        prompt = (class_prompt_from_caption(item.caption, settings.trigger, settings.class_word)
                  if settings.from_captions else settings.class_prompt)
        for k in range(settings.per_image):
            index = n * settings.per_image + k
            stem = f"{index:0{width}d}"
            jobs.append(ClassImageJob(index, settings.seed + index, prompt, folder / f"{stem}.png",
                                      folder / f"{stem}.txt", item.path))
    return jobs


def generate_class_images(
    root: Path,
    settings: ClassImageSettings,
    generate: Generate,
    on_progress: Optional[Progress] = None,
    should_stop: Optional[Callable[[], bool]] = None,
) -> ClassImagesResult:
    """Make the missing class images of `plan_class_images` (see the module docstring)."""
    jobs = plan_class_images(root, settings)
    folder = class_folder(root, settings)
    result = ClassImagesResult(folder=folder, planned=len(jobs))
    missing = []
    for job in jobs:
        if job.image.is_file():
            result.existing += 1
            if not job.caption.is_file():
                write_caption(job.caption, job.prompt)
        else:
            missing.append(job)
    result.note = _check_manifest(folder, settings, result.existing)
    batches = _batches(missing, settings.batch_size)
    if on_progress is not None:
        on_progress(0, len(batches), f"{result.existing}/{len(jobs)} on disk")
    for number, batch in enumerate(batches, start=1):
        if should_stop is not None and should_stop():
            result.stopped = True
            break
        request = GenerationRequest(batch[0].prompt, settings.negative_prompt, tuple(j.seed for j in batch),
                                    settings.sampler, settings.scheduler, int(settings.steps),
                                    float(settings.cfg_scale), int(settings.width), int(settings.height))
        try:
            images = list(generate(request))
        except ClassImagesStopped:
            result.stopped = True
            break
        except LoraStudioError as error:
            result.error = str(error)
            break
        except Exception as error:  # NaNs, out of memory, a script's error: keep what is done, say why
            result.error = f"{type(error).__name__}: {error}"
            break
        if should_stop is not None and should_stop():  # interrupted mid-image: the image is unfinished
            result.stopped = True
            break
        for job, image in zip(batch, images):
            write_caption(job.caption, job.prompt)
            atomic_write_bytes(job.image, _png_bytes(image))
            result.written.append(job.image)
        if on_progress is not None:
            done = result.existing + len(result.written)
            on_progress(number, len(batches), f"{done}/{len(jobs)} made, seed {batch[-1].seed}")
    return result


def settings_from_mapping(values: Mapping[str, Any]) -> ClassImageSettings:
    """Settings from a JSON body or form values: known keys only, numbers checked."""
    known = {f for f in ClassImageSettings.__dataclass_fields__}
    unknown = sorted(set(values) - known)
    if unknown:
        raise SettingsError(f"Unknown class-image setting(s): {', '.join(unknown)}. Known: {', '.join(sorted(known))}.")
    kinds = {"per_image": int, "steps": int, "width": int, "height": int, "seed": int, "batch_size": int,
             "repeats": int, "cfg_scale": float, "from_captions": bool}
    clean: dict[str, Any] = {}
    for key, value in values.items():
        kind = kinds.get(key, str)
        if value is None:
            continue
        if kind is int:
            clean[key] = _as_int(key, value)
        elif kind is float:
            try:
                clean[key] = float(value)
            except (TypeError, ValueError):
                raise SettingsError(f"{key} must be a number, got {value!r}.") from None
        elif kind is bool:
            clean[key] = bool(value)
        else:
            clean[key] = str(value)
    settings = ClassImageSettings(**clean)
    settings.validate()
    return settings


def _batches(jobs: list[ClassImageJob], size: int) -> list[list[ClassImageJob]]:
    """Consecutive jobs with one prompt and consecutive seeds, `size` at most (A1111 seeds a batch s, s+1, ...)."""
    batches: list[list[ClassImageJob]] = []
    for job in jobs:
        last = batches[-1] if batches else None
        if (last is not None and len(last) < size and last[-1].prompt == job.prompt
                and last[-1].seed + 1 == job.seed):
            last.append(job)
        else:
            batches.append([job])
    return batches


def _check_manifest(folder: Path, settings: ClassImageSettings, existing: int) -> str:
    """Write this run's settings; say so when the images already there were made with others."""
    path = folder / MANIFEST
    note = ""
    if existing and path.is_file():
        try:
            before = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            before = None
        if isinstance(before, dict) and before != settings.generation_key():
            changed = sorted(k for k in settings.generation_key() if before.get(k) != settings.generation_key()[k])
            note = (f"The {existing} images already there were made with other settings ({', '.join(changed)}); "
                    "delete the folder to make all of them with the new ones.")
    if not note:
        atomic_write_bytes(path, json.dumps(settings.generation_key(), indent=1).encode("utf-8"))
    return note


def _png_bytes(image: Image.Image) -> bytes:
    """PNG with the generation parameters A1111 put in `image.info` (so PNG Info reads them)."""
    info = PngInfo()
    for key, value in (getattr(image, "info", None) or {}).items():
        if isinstance(key, str) and isinstance(value, str):
            info.add_text(key, value)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def _whole(name: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise SettingsError(f"{name} must be a whole number from {low} to {high}, got {value!r}.")


def _as_int(key: str, value: Any) -> int:
    if isinstance(value, bool):
        raise SettingsError(f"{key} must be a whole number, got {value!r}.")
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise SettingsError(f"{key} must be a whole number, got {value!r}.") from None
    if number != int(number):
        raise SettingsError(f"{key} must be a whole number, got {value!r}.")
    return int(number)
