"""What a comparison grid is: axes, cells, and the request each cell sends to a generator.

A grid is the product of its axes, outermost first in `AXES` order:
LoRA file x weight x prompt x seed x sampler x steps x CFG scale. Width, height, negative
prompt, the base model and `extra` settings (clip skip, VAE, ...) are the same for every cell.

Weight 0 means "the base model": such a cell carries no LoRA at all (no `<lora:...>` tag), so
its image is generated once per prompt/seed/sampler and shared by every file of the grid.

A file may also be a checkpoint (the epochs of a full fine-tune): weight 1 is that checkpoint,
weight 0 the loaded base model; the generator switches checkpoints instead of adding a tag.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable, Mapping, Protocol, Sequence

from PIL import Image

from ..errors import CheckpointError, SettingsError

AXES = ("file", "weight", "prompt", "seed", "sampler", "steps", "cfg")
AXIS_TITLES = {"file": "LoRA file", "weight": "weight", "prompt": "prompt", "seed": "seed",
               "sampler": "sampler", "steps": "steps", "cfg": "CFG scale"}
CACHE_FORMAT = 1  # bump when the meaning of a cache key changes


@dataclass(frozen=True)
class LoraFile:
    """A LoRA file on an axis; `label` is what the grid shows (default: the file name)."""

    path: Path
    label: str = ""
    checkpoint: bool = False  # a whole model (a full fine-tune's epoch), not a LoRA

    @property
    def name(self) -> str:
        """The name A1111 knows it by, as in `<lora:name:1>`."""
        return Path(self.path).stem

    @property
    def display(self) -> str:
        return self.label or self.name


@dataclass(frozen=True)
class GridLayout:
    """Which axes run across (columns) and down (rows), outermost first.

    Every axis appears exactly once. Axes with a single value are not drawn as rows or columns;
    they are listed in the grid's title line instead. The default puts weights across and gives
    each LoRA file a block of sub-rows, one per prompt x seed (x sampler settings).
    """

    columns: tuple[str, ...] = ("weight",)
    rows: tuple[str, ...] = ("file", "prompt", "seed", "sampler", "steps", "cfg")

    def validate(self) -> None:
        named = list(self.columns) + list(self.rows)
        unknown = [a for a in named if a not in AXES]
        if unknown:
            raise SettingsError(f"Grid layout: unknown axis {unknown[0]!r}. Axes are: {', '.join(AXES)}.")
        missing = [a for a in AXES if a not in named]
        doubled = sorted({a for a in named if named.count(a) > 1})
        if missing or doubled:
            raise SettingsError(
                f"Grid layout: every axis must be in the rows or the columns exactly once "
                f"(missing: {', '.join(missing) or 'none'}; twice: {', '.join(doubled) or 'none'}).")


@dataclass(frozen=True)
class GridSpec:
    """Everything that decides the images of a comparison.

    `base_model_hash` identifies the checkpoint (e.g. A1111's sha256 of the loaded model); it is
    part of every cache key, so images of different base models never mix. `class_prompt` (the
    class without the trigger word, e.g. "a photo of a woman") is added to the prompts if missing
    and is what drift is measured on. `trigger_words` are removed from prompts for the CLIP score.
    """

    files: tuple[LoraFile, ...]
    weights: tuple[float, ...]
    prompts: tuple[str, ...]
    seeds: tuple[int, ...]
    base_model_hash: str
    samplers: tuple[str, ...] = ("Euler a",)
    steps: tuple[int, ...] = (20,)
    cfg_scales: tuple[float, ...] = (7.0,)
    negative_prompt: str = ""
    width: int = 512
    height: int = 512
    class_prompt: str = ""
    trigger_words: tuple[str, ...] = ()
    base_model_name: str = ""
    extra: tuple[tuple[str, str], ...] = ()  # other settings that change the image, e.g. ("Clip skip", "2")
    layout: GridLayout = field(default_factory=GridLayout)

    def __post_init__(self) -> None:
        files = tuple(f if isinstance(f, LoraFile) else LoraFile(Path(f)) for f in self.files)
        object.__setattr__(self, "files", files)
        for name in ("weights", "prompts", "seeds", "samplers", "steps", "cfg_scales", "trigger_words"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        extra = self.extra.items() if isinstance(self.extra, Mapping) else self.extra
        object.__setattr__(self, "extra", tuple((str(k), str(v)) for k, v in extra))

    @property
    def all_prompts(self) -> tuple[str, ...]:
        """The prompt axis: the prompts, then the class prompt if it is not among them."""
        if self.class_prompt.strip() and self.class_prompt.strip() not in [p.strip() for p in self.prompts]:
            return self.prompts + (self.class_prompt.strip(),)
        return self.prompts

    def axis_values(self) -> dict[str, tuple]:
        return {"file": self.files, "weight": tuple(_clean_weight(w) for w in self.weights),
                "prompt": tuple(p.strip() for p in self.all_prompts), "seed": tuple(int(s) for s in self.seeds),
                "sampler": self.samplers, "steps": tuple(int(s) for s in self.steps),
                "cfg": tuple(float(c) for c in self.cfg_scales)}

    def validate(self) -> None:
        """Refuse a spec that cannot give a meaningful, cacheable grid (SettingsError/CheckpointError)."""
        empty = [AXIS_TITLES[a] for a, v in self.axis_values().items() if not v]
        if empty:
            raise SettingsError(f"The comparison has no {empty[0]} to try. Pick at least one.")
        for axis, values in self.axis_values().items():
            seen = [str(Path(v.path).resolve()) if axis == "file" else v for v in values]
            doubled = sorted({str(v) for v in seen if seen.count(v) > 1})
            if doubled:
                raise SettingsError(f"{AXIS_TITLES[axis]} {doubled[0]} is listed twice in the comparison. "
                                    "Remove the duplicate.")
        if not self.base_model_hash.strip():
            raise SettingsError("The comparison has no base model hash. Pass the loaded checkpoint's hash, so "
                                "cached images of different checkpoints are never mixed up.")
        for weight in self.weights:
            if not isinstance(weight, (int, float)) or not math.isfinite(weight):
                raise SettingsError(f"LoRA weight {weight!r} is not a finite number. Use values like 0.5 or 1.")
        for seed in self.seeds:
            if int(seed) < 0:
                raise SettingsError(f"Seed {seed} is random (-1): a random seed cannot be compared or cached. "
                                    "Use fixed seeds such as 1, 2, 3.")
        for steps in self.steps:
            if int(steps) < 1:
                raise SettingsError(f"Sampling steps must be at least 1 (got {steps}).")
        if self.width < 8 or self.height < 8:
            raise SettingsError(f"Image size {self.width}x{self.height} is too small.")
        if not any(p.strip() for p in self.all_prompts):
            raise SettingsError("Every prompt of the comparison is empty. Write at least one prompt.")
        if any(f.checkpoint for f in self.files):
            if not all(f.checkpoint for f in self.files):
                raise SettingsError("A comparison holds LoRA files or checkpoints, not both. Compare them apart.")
            odd = [w for w in self.weights if _clean_weight(w) not in (0.0, 1.0)]
            if odd:
                raise SettingsError(f"Weight {odd[0]:g} means nothing for a checkpoint: use 0 (the loaded model) "
                                    "and 1 (the fine-tuned checkpoint).")
        for lora in self.files:
            path = Path(lora.path)
            if path.suffix.lower() != ".safetensors":
                raise CheckpointError(f"{path.name} is not a .safetensors LoRA file; only safetensors files "
                                      "can be compared.")
            if not path.is_file():
                raise CheckpointError(f"LoRA file {path} does not exist. Refresh the file list and pick again.")
        self.layout.validate()


@dataclass(frozen=True)
class CellRequest:
    """One image to generate; what a `Generator` receives.

    `prompt` is what a WebUI generator sends as is (the user's prompt + `<lora:name:weight>`);
    a diffusers generator applies `lora.path` at `weight` and uses `user_prompt`.
    """

    lora: LoraFile | None  # None: the base model alone (weight 0)
    lora_sha256: str  # sha256 of the whole LoRA file ("" without one)
    lora_addnet_hash: str  # sha256 of the tensor data, what A1111 shows in "Lora hashes"
    weight: float
    user_prompt: str
    negative_prompt: str
    seed: int
    sampler: str
    steps: int
    cfg_scale: float
    width: int
    height: int
    base_model_hash: str
    base_model_name: str = ""
    extra: tuple[tuple[str, str], ...] = ()

    @property
    def prompt(self) -> str:
        if self.lora is None or self.lora.checkpoint:  # a checkpoint is switched to, not named in the prompt
            return self.user_prompt
        tag = f"<lora:{self.lora.name}:{format_weight(self.weight)}>"
        return f"{self.user_prompt}, {tag}" if self.user_prompt else tag

    @property
    def key(self) -> str:
        """Cache key: sha256 over everything that determines the image (not the file's name or place)."""
        payload = {
            "format": CACHE_FORMAT, "model": self.base_model_hash, "lora": self.lora_sha256 or None,
            "weight": self.weight if self.lora is not None else 0.0, "prompt": self.user_prompt,
            "negative": self.negative_prompt, "seed": self.seed, "sampler": self.sampler, "steps": self.steps,
            "cfg": self.cfg_scale, "size": [self.width, self.height], "extra": sorted(self.extra),
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()).hexdigest()

    def baseline(self) -> CellRequest:
        """The same image without the LoRA (for drift)."""
        return replace(self, lora=None, lora_sha256="", lora_addnet_hash="", weight=0.0)

    def infotext(self) -> str:
        """A1111's "parameters" text: prompt, negative prompt, then `Key: value` pairs."""
        pairs = [("Steps", str(self.steps)), ("Sampler", self.sampler), ("CFG scale", format_weight(self.cfg_scale)),
                 ("Seed", str(self.seed)), ("Size", f"{self.width}x{self.height}"),
                 ("Model hash", self.base_model_hash)]
        if self.base_model_name:
            pairs.append(("Model", self.base_model_name))
        pairs.extend(self.extra)
        if self.lora is not None and self.lora.checkpoint:
            pairs = [(k, v) for k, v in pairs if k not in ("Model hash", "Model")]
            pairs += [("Model hash", self.lora_sha256[:10]), ("Model", self.lora.name)]
        elif self.lora is not None:
            pairs.append(("Lora hashes", f"{self.lora.name}: {self.lora_addnet_hash[:12]}"))
            pairs.append(("Lora sha256", f"{self.lora.name}: {self.lora_sha256}"))
        text = self.prompt
        if self.negative_prompt:
            text += f"\nNegative prompt: {self.negative_prompt}"
        return text + "\n" + ", ".join(f"{k}: {_quote(v)}" for k, v in pairs)

    def to_json(self) -> dict:
        return {"key": self.key, "lora": str(self.lora.path) if self.lora else None,
                "lora_name": self.lora.name if self.lora else None, "lora_sha256": self.lora_sha256 or None,
                "weight": self.weight, "prompt": self.prompt, "user_prompt": self.user_prompt,
                "negative_prompt": self.negative_prompt, "seed": self.seed, "sampler": self.sampler,
                "steps": self.steps, "cfg_scale": self.cfg_scale, "width": self.width, "height": self.height,
                "base_model_hash": self.base_model_hash, "extra": dict(self.extra)}


@dataclass(frozen=True)
class GridCell:
    """A cell of the grid: its request and its index on every axis (in `AXES` order)."""

    request: CellRequest
    index: tuple[int, ...]

    def at(self, axis: str) -> int:
        return self.index[AXES.index(axis)]


class Generator(Protocol):
    """Makes the image of one cell. The WebUI implements it with A1111's processing, the CLI with
    diffusers. It must be deterministic for a request (fixed seed), since its images are cached."""

    def generate(self, cell: CellRequest) -> Image.Image: ...


@dataclass(frozen=True)
class LoraHashes:
    sha256: str
    addnet: str


def plan_cells(spec: GridSpec, hashes: Mapping[Path, LoraHashes]) -> list[GridCell]:
    """Every cell of the grid, in `AXES` order (file outermost). `hashes` maps each file's path."""
    values = spec.axis_values()
    cells = []
    for index in itertools.product(*(range(len(values[a])) for a in AXES)):
        v = {a: values[a][i] for a, i in zip(AXES, index)}
        lora = v["file"] if v["weight"] != 0 else None
        h = hashes[Path(v["file"].path)] if lora is not None else LoraHashes("", "")
        request = CellRequest(
            lora=lora, lora_sha256=h.sha256, lora_addnet_hash=h.addnet, weight=v["weight"],
            user_prompt=v["prompt"], negative_prompt=spec.negative_prompt, seed=v["seed"], sampler=v["sampler"],
            steps=v["steps"], cfg_scale=v["cfg"], width=spec.width, height=spec.height,
            base_model_hash=spec.base_model_hash.strip(), base_model_name=spec.base_model_name, extra=spec.extra)
        cells.append(GridCell(request, tuple(index)))
    return cells


def baseline_requests(spec: GridSpec, cells: Sequence[GridCell]) -> list[CellRequest]:
    """The base-model images drift needs: class-prompt cells without the LoRA (one per seed/sampler)."""
    if not spec.class_prompt.strip():
        return []
    seen: dict[str, CellRequest] = {}
    for cell in cells:
        if cell.request.user_prompt == spec.class_prompt.strip():
            base = cell.request.baseline()
            seen.setdefault(base.key, base)
    return list(seen.values())


def run_files(folder: Path, name: str, checkpoints: bool = False) -> list[LoraFile]:
    """All files of a run in `folder`: `<name>-000004.safetensors` by epoch, then the final `<name>.safetensors`
    (`checkpoints`: a full fine-tune's, in the checkpoint folder)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SettingsError(f"The LoRA folder {folder} does not exist. Check the output folder of the run.")
    pattern = re.compile(rf"^{re.escape(name)}-(\d{{6}})\.safetensors$")
    epochs = sorted((int(m.group(1)), p) for p in folder.iterdir() if (m := pattern.match(p.name)) and p.is_file())
    files = [LoraFile(p, f"{name} epoch {e}", checkpoints) for e, p in epochs]
    final = folder / f"{name}.safetensors"
    if final.is_file():
        files.append(LoraFile(final, f"{name} (final)", checkpoints))
    if not files:
        raise SettingsError(f"No LoRA files of the run {name!r} in {folder} ({name}.safetensors or "
                            f"{name}-000001.safetensors ...). Check the name, or pick files one by one.")
    return files


def any_files(paths: Iterable[Path]) -> list[LoraFile]:
    return [LoraFile(Path(p)) for p in paths]


def format_weight(weight: float) -> str:
    """0.8 -> "0.8", 1.0 -> "1": how A1111 users write weights."""
    return f"{round(float(weight), 4):g}"


def _clean_weight(weight: float) -> float:
    return round(float(weight), 6) + 0.0  # + 0.0 turns -0.0 into 0.0


def _quote(value: str) -> str:
    """Quote an infotext value the way A1111 does when it holds a comma, colon or quote."""
    if "," not in value and ":" not in value and '"' not in value and "\n" not in value:
        return value
    return json.dumps(value, ensure_ascii=False)
