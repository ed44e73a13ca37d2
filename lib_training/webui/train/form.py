"""The Train form's fields and TrainConfig: one mapping for the tab, the TOML export and the API.

Pure (no gradio, no A1111): `FIELDS` lists every editable setting in display order, keyed by the
TOML name (`section.field`), so the tab builds its controls from it, the API accepts the same
names, and `export_toml` writes what the CLI reads. Values a user may not set from the WebUI
(where files go, which checkpoint) are filled in by `place_in_webui`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from ...config import MIXED_PRECISION, OPTIMIZERS, PREDICTION_TYPES, SAVE_DTYPES, SCHEDULERS, TrainConfig
from ...data.preflight import PreflightReport
from ...train.plan import preflight_for
from ...errors import LoraStudioError, SettingsError
from ...fileio import path_inside, validate_output_name
from .presets import DEFAULT_PRESET, Preset, find_preset

METHOD_LORA = "LoRA"
METHOD_DREAMBOOTH = "DreamBooth-LoRA (class images)"
METHOD_FULL = "DreamBooth (full fine-tune)"  # network.method = "full": a new checkpoint, class images optional
METHODS = (METHOD_LORA, METHOD_DREAMBOOTH, METHOD_FULL)

# Accordion titles, in display order ("" = always visible at the top of the form).
MAIN, NETWORK, OPTIMIZER, SCHEDULE, DATA, ADVANCED = (
    "", "Network", "Optimizer", "Schedule & steps", "Data & captions", "Advanced")
GROUPS = (MAIN, NETWORK, OPTIMIZER, SCHEDULE, DATA, ADVANCED)

# Set by the WebUI, never by the form or the API: the loaded model is trained, LoRAs go to
# the WebUI's Lora folder and runs to the runs folder from Settings.
WEBUI_MANAGED = {
    "model.checkpoint": "the WebUI trains the checkpoint it has loaded",
    "model.tokenizer_dir": "the WebUI uses the loaded model's tokenizer",
    "model.weight_dtype": "the WebUI trains the model as A1111 holds it (fp16, --no-half fp32, or FP8 weight)",
    "output.output_dir": "LoRAs always go to the WebUI's Lora folder",
    "output.runs_dir": "set in Settings > LoRA Studio",
    "output.extract_lora_dir": "an extracted LoRA always goes to the WebUI's Lora folder",
    "network.method": "chosen by the Method (\"full\" = DreamBooth full fine-tune)",
}


@dataclass(frozen=True)
class Field:
    key: str  # TOML name: "section.field"
    label: str
    kind: str  # "int" | "float" | "bool" | "choice" | "text" | "lines"
    group: str
    info: str = ""
    choices: tuple = ()

    @property
    def section(self) -> str:
        return self.key.split(".", 1)[0]

    @property
    def name(self) -> str:
        return self.key.split(".", 1)[1]

    @property
    def elem_id(self) -> str:
        return "lora_studio_" + self.key.replace(".", "_")


FIELDS: tuple[Field, ...] = (
    Field("data.train_dir", "Dataset folder", "text", MAIN,
          "kohya layout: <repeats>_<trigger> <class>/ subfolders with images and .txt captions"),
    Field("output.name", "Output name", "text", MAIN, "the file is <name>.safetensors in the Lora folder"),
    Field("output.trigger_word", "Trigger word", "text", MAIN,
          "written as activation text; filled from the dataset folder names when empty"),
    Field("output.overwrite", "Overwrite an existing LoRA with this name", "bool", MAIN),
    Field("data.reg_dir", "Class-image folder", "text", MAIN,
          "DreamBooth prior preservation: <repeats>_<class>/ subfolders of class images"),
    Field("data.prior_loss_weight", "Prior-loss weight", "float", MAIN, "weight of the class-image loss (usually 1)"),
    Field("network.rank", "Rank (dim)", "int", NETWORK, "16-32 for most subjects; higher = bigger file"),
    Field("network.alpha", "Alpha", "float", NETWORK, "usually half the rank; scale = alpha / rank"),
    Field("network.conv_rank", "Conv rank", "int", NETWORK, "0 = off; > 0 also trains the 3x3 convolutions (LoCon)"),
    Field("network.conv_alpha", "Conv alpha", "float", NETWORK),
    Field("network.train_text_encoder", "Train the text encoder", "bool", NETWORK),
    Field("output.extract_lora_rank", "Extract a LoRA of rank", "int", NETWORK,
          "full fine-tune only: 0 = no; > 0 also writes a LoRA of the difference (SVD) into the Lora folder"),
    Field("optimizer.optimizer", "Optimizer", "choice", OPTIMIZER,
          "adamw8bit needs bitsandbytes and CUDA; prodigy needs prodigyopt (lr 1)", OPTIMIZERS),
    Field("optimizer.unet_lr", "UNet learning rate", "float", OPTIMIZER),
    Field("optimizer.text_encoder_lr", "Text-encoder learning rate", "float", OPTIMIZER, "0 = text encoder frozen"),
    Field("optimizer.weight_decay", "Weight decay", "float", OPTIMIZER),
    Field("optimizer.max_grad_norm", "Gradient clipping (max norm)", "float", OPTIMIZER, "0 = no clipping"),
    Field("optimizer.scheduler", "Learning-rate schedule", "choice", SCHEDULE, "", SCHEDULERS),
    Field("optimizer.warmup_steps", "Warm-up steps", "int", SCHEDULE),
    Field("optimizer.restarts", "Restarts (cosine with restarts)", "int", SCHEDULE),
    Field("train.epochs", "Epochs", "int", SCHEDULE),
    Field("train.max_steps", "Max steps", "int", SCHEDULE, "0 = decided by epochs; > 0 overrides them"),
    Field("train.batch_size", "Batch size", "int", SCHEDULE),
    Field("train.grad_accumulation", "Gradient accumulation", "int", SCHEDULE),
    Field("train.save_every_epochs", "Save every N epochs", "int", SCHEDULE,
          "0 = final file only; 1 = <name>-000001.safetensors ... for comparing"),
    Field("validation.split", "Validation split", "float", SCHEDULE,
          "share of the training images held out for a validation loss (fixed noise: comparable between epochs); "
          "0 = off"),
    Field("validation.folder", "Validation folder", "text", SCHEDULE,
          "or your own validation images, laid out as the dataset; empty = use the split"),
    Field("validation.every_epochs", "Validate every N epochs", "int", SCHEDULE),
    Field("validation.every_steps", "Also validate every N steps", "int", SCHEDULE, "0 = only by epoch"),
    Field("validation.timesteps", "Validation timesteps per image", "int", ADVANCED,
          "fixed timesteps spread over the schedule (4 as kohya)"),
    Field("data.resolution", "Resolution", "int", DATA, "512 for SD 1.x, 768 for SD 2.x 768-v, 1024 for SDXL"),
    Field("data.bucketing", "Aspect-ratio buckets", "bool", DATA, "keep each image's shape instead of square crops"),
    Field("data.bucket_step", "Bucket step (px)", "int", DATA),
    Field("data.flip", "Random horizontal flips", "bool", DATA, "only for subjects that look the same mirrored"),
    Field("data.caption_extension", "Caption extension", "text", DATA),
    Field("data.shuffle_captions", "Shuffle caption tags", "bool", DATA),
    Field("data.keep_tokens", "Keep first N tags in place", "int", DATA, "1 keeps the trigger word first"),
    Field("data.caption_dropout", "Caption dropout", "float", DATA, "probability of training with an empty caption"),
    Field("train.noise_offset", "Noise offset", "float", ADVANCED, "0 or 0.05-0.1 for darker/brighter images"),
    Field("train.min_snr_gamma", "Min-SNR gamma", "float", ADVANCED, "0 = off; 5 is the common choice"),
    Field("model.clip_skip", "Clip skip", "int", ADVANCED, "1 = last layer; 2 for anime-style models"),
    Field("model.prediction_type", "Prediction type", "choice", ADVANCED, "auto reads it from the model",
          PREDICTION_TYPES),
    Field("train.seed", "Seed", "int", ADVANCED),
    Field("train.mixed_precision", "Mixed precision", "choice", ADVANCED,
          "auto follows the model: its dtype when fp16/bf16, fp16 on CUDA, bf16 for FP8 weight on the CPU, "
          "else fp32 (the LoRA is always fp32)", MIXED_PRECISION),
    Field("train.gradient_checkpointing", "Gradient checkpointing", "bool", ADVANCED,
          "less memory, about 25% slower"),
    Field("data.cache_latents", "Cache latents", "bool", ADVANCED, "encode each image once (faster)"),
    Field("data.cache_latents_to_disk", "Cache latents to disk", "bool", ADVANCED),
    Field("data.strict", "Strict: refuse to start when a file would be left out", "bool", ADVANCED,
          "off: files that cannot be trained on (broken, bombs, links out of the dataset) are left out and listed"),
    Field("output.save_dtype", "Save precision", "choice", ADVANCED, "", SAVE_DTYPES),
    Field("train.sample_prompts", "Sample prompts (one per line)", "lines", ADVANCED,
          "generated with the LoRA while training"),
    Field("train.sample_every_steps", "Sample every N steps", "int", ADVANCED, "0 = no samples"),
    Field("train.loss_readback_steps", "Read the loss back every N steps", "int", ADVANCED,
          "1 = exact chart; higher saves a GPU sync per step"),
    Field("train.deterministic", "Deterministic", "bool", ADVANCED,
          "same seed + settings on this machine = the same LoRA, bit for bit (reuses the CPU kernel choices)"),
)

FIELD_KEYS: tuple[str, ...] = tuple(f.key for f in FIELDS)
_BY_KEY = {f.key: f for f in FIELDS}


def field(key: str) -> Field:
    return _BY_KEY[key]


# ---- values <-> TrainConfig ------------------------------------------------------------------

def values_from_config(config: TrainConfig) -> dict[str, Any]:
    """The form's values for a config (sample prompts become one per line)."""
    values = {}
    for f in FIELDS:
        value = getattr(getattr(config, f.section), f.name)
        values[f.key] = "\n".join(value) if f.kind == "lines" else value
    return values


def method_of(config: TrainConfig) -> str:
    if config.network.method == "full":
        return METHOD_FULL
    return METHOD_DREAMBOOTH if config.data.reg_dir.strip() else METHOD_LORA


def default_values(preset: str = DEFAULT_PRESET) -> dict[str, Any]:
    """What a fresh form shows: TrainConfig's defaults with the default preset on top."""
    return apply_preset(values_from_config(TrainConfig()), find_preset(preset))


def apply_preset(values: Mapping[str, Any], preset: Preset) -> dict[str, Any]:
    """`values` with the preset's training values; dataset, name and trigger word stay as they are."""
    result = dict(values)
    for key, value in preset.values.items():
        if key not in _BY_KEY:
            raise KeyError(f"Preset {preset.key!r} sets {key!r}, which is not a form field.")
        result[key] = value
    return result


def config_from_values(values: Mapping[str, Any], method: str = METHOD_LORA) -> TrainConfig:
    """A TrainConfig from form values (keys from FIELDS); SettingsError names the field at fault."""
    if method not in METHODS:
        raise SettingsError(f"Method {method!r} is unknown; use one of: {', '.join(METHODS)}.")
    sections: dict[str, dict[str, Any]] = {}
    for key, value in values.items():
        f = _BY_KEY.get(key)
        if f is None:
            hint = f" ({WEBUI_MANAGED[key]})" if key in WEBUI_MANAGED else ""
            raise SettingsError(f"{key} cannot be set here{hint}. Settings: {', '.join(FIELD_KEYS)}.")
        sections.setdefault(f.section, {})[f.name] = _form_value(f, value)
    config = TrainConfig.from_dict(sections, source="the Train form")
    config.network.method = "full" if method == METHOD_FULL else "lora"
    if method != METHOD_FULL:
        config.output.extract_lora_rank = 0  # the field is shown for the full fine-tune only
    if method == METHOD_FULL:
        pass  # class images optional: prior preservation when a folder is given
    elif method == METHOD_LORA:
        config.data.reg_dir = ""
    elif not config.data.reg_dir:
        raise SettingsError("DreamBooth-LoRA needs a class-image folder (data.reg_dir): give the folder of class "
                            "images, or choose the method 'LoRA'.")
    return config


def _form_value(f: Field, value: Any) -> Any:
    if value is None:
        raise SettingsError(f"{f.label} ({f.key}) is empty: give a value.")
    if f.kind == "lines":
        if isinstance(value, str):
            return [line.strip() for line in value.splitlines() if line.strip()]
        return [str(v).strip() for v in value if str(v).strip()]
    if f.kind in ("text", "choice") and isinstance(value, str):
        return value.strip()
    if f.kind in ("int", "float") and isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            raise SettingsError(f"{f.label} ({f.key}) must be a number, not {value!r}.") from None
        return int(number) if f.kind == "int" and number.is_integer() else number
    return value


def values_to_list(values: Mapping[str, Any]) -> list[Any]:
    """Values in FIELDS order (the order of the tab's gradio inputs)."""
    return [values[key] for key in FIELD_KEYS]


def values_from_list(items: Sequence[Any]) -> dict[str, Any]:
    if len(items) != len(FIELDS):
        raise ValueError(f"expected {len(FIELDS)} form values, got {len(items)}")
    return dict(zip(FIELD_KEYS, items))


# ---- where outputs go ------------------------------------------------------------------------

def place_in_webui(config: TrainConfig, lora_dir: Path, runs_dir: Path,
                   checkpoint_dir: Path | None = None) -> TrainConfig:
    """The config with the WebUI's folders: LoRAs in `lora_dir` (a full fine-tune's checkpoints in
    `checkpoint_dir`, its extracted LoRA in `lora_dir`), run logs and state in `runs_dir`."""
    config = TrainConfig.from_dict(config.to_dict())
    full = config.network.method == "full"
    if full and checkpoint_dir is None:
        raise SettingsError("The WebUI's checkpoint folder is unknown here; a full fine-tune cannot be placed.")
    config.output.output_dir = str(checkpoint_dir if full else lora_dir)
    config.output.extract_lora_dir = str(lora_dir) if full else ""
    config.output.runs_dir = str(runs_dir)
    config.model.checkpoint = ""
    return config


@dataclass(frozen=True)
class NameCheck:
    ok: bool
    name: str  # the cleaned name ("" when not ok)
    exists: bool  # <name>.safetensors is already in the Lora folder
    message: str


def check_output_name(name: str, lora_dir: Path, overwrite: bool) -> NameCheck:
    """Is `name` usable, and would it replace a file? The message says what to do."""
    try:
        clean = validate_output_name(name or "")
        target = path_inside(Path(lora_dir), f"{clean}.safetensors")
    except SettingsError as error:
        return NameCheck(False, "", False, str(error))
    if target.exists():
        if overwrite:
            return NameCheck(True, clean, True, f"{target.name} exists and will be replaced (Overwrite is ticked).")
        return NameCheck(False, clean, True, f"{target.name} already exists in {target.parent}. Choose another "
                                             "name, or tick 'Overwrite' to replace it.")
    return NameCheck(True, clean, False, f"Will be saved as {target}.")


def check_before_start(config: TrainConfig, resume: bool = False) -> PreflightReport:
    """Refuse, before the queue is taken, what would fail at the first step: bad values, a dataset with
    nothing usable left, an existing file without Overwrite. Returns the dataset's pre-flight (what the
    run trains on and leaves out), which the run then uses as it is."""
    config.validate()
    if not resume:
        check = check_output_name(config.output.name, Path(config.output.output_dir), config.output.overwrite)
        if not check.ok:
            raise SettingsError(check.message)
    return preflight_for(config)


# ---- the API's request body ------------------------------------------------------------------

@dataclass(frozen=True)
class StartRequest:
    config: TrainConfig
    resume: bool
    ignored: tuple = ()  # WebUI-managed keys that were in the body, with why they were ignored


_REQUEST_KEYS = ("preset", "method", "resume")


def config_from_request(body: Mapping[str, Any], lora_dir: Path, runs_dir: Path,
                        checkpoint_dir: Path | None = None) -> StartRequest:
    """`POST /lora-studio/v1/start` body -> settings.

    The body may hold, applied in this order on the form's defaults (the "person" preset, as a
    fresh Train tab shows):
      "preset": "person" | "object" | "style" (or its label),
      TOML sections as in `run.toml` ({"network": {"rank": 16}, ...}),
      form keys ({"network.rank": 16, ...}),
    plus "method" (LoRA / DreamBooth-LoRA / full, also read from network.method as run.toml writes it;
    default: DreamBooth-LoRA when data.reg_dir is set) and
    "resume" (bool). What the WebUI decides (WEBUI_MANAGED: checkpoint, folders) is ignored and
    listed in `ignored`, so a run.toml exported for the CLI can be posted as it is.
    """
    if not isinstance(body, Mapping):
        raise SettingsError("The request body must be a JSON object of settings.")
    sections = {f.name for f in dataclasses.fields(TrainConfig)}
    values = default_values()
    ignored: list[str] = []
    if "preset" in body:
        try:
            values = apply_preset(values, find_preset(str(body["preset"])))
        except KeyError as error:
            raise SettingsError(str(error.args[0])) from None
    toml_method = _toml_method(body)
    for key, value in body.items():
        if key in _REQUEST_KEYS or key == "network.method":
            continue
        if key == "network" and isinstance(value, Mapping):
            value = {k: v for k, v in value.items() if k != "method"}
        if key in sections:
            if not isinstance(value, Mapping):
                raise SettingsError(f"[{key}] must be an object of settings, not {value!r}.")
            for name, item in value.items():
                _set_request_value(values, ignored, f"{key}.{name}", item)
        elif "." in key:
            _set_request_value(values, ignored, key, value)
        else:
            raise SettingsError(f"Unknown field {key!r}. Use TOML sections ({', '.join(sorted(sections))}), "
                                f"'section.field' keys, or {', '.join(_REQUEST_KEYS)}.")
    reg_dir = str(values.get("data.reg_dir") or "").strip()
    method = body.get("method") or (METHOD_FULL if toml_method == "full" else "")
    method = method or (METHOD_DREAMBOOTH if reg_dir else METHOD_LORA)
    method = {"lora": METHOD_LORA, "dreambooth": METHOD_DREAMBOOTH, "full": METHOD_FULL}.get(str(method).lower(),
                                                                                             method)
    resume = body.get("resume", False)
    if not isinstance(resume, bool):
        raise SettingsError(f"resume must be true or false, not {resume!r}.")
    config = config_from_values(values, method)
    return StartRequest(place_in_webui(config, lora_dir, runs_dir, checkpoint_dir), resume, tuple(ignored))


def _toml_method(body: Mapping[str, Any]) -> str:
    """network.method as run.toml writes it ("lora" / "full"): it picks the method, it is no form field."""
    network = body.get("network")
    if isinstance(network, Mapping) and "method" in network:
        return str(network["method"]).lower()
    return str(body.get("network.method", "")).lower()


def _set_request_value(values: dict[str, Any], ignored: list[str], key: str, value: Any) -> None:
    if key in WEBUI_MANAGED:
        ignored.append(f"{key} ({WEBUI_MANAGED[key]})")
    elif key in _BY_KEY:
        values[key] = value
    else:
        raise SettingsError(f"Unknown setting {key!r}. Settings: {', '.join(FIELD_KEYS)}.")


# ---- export and hand-off ---------------------------------------------------------------------

def export_toml(config: TrainConfig, checkpoint: str = "") -> str:
    """The settings as the CLI's run.toml; `checkpoint` is the loaded model's file, for the CLI."""
    exported = TrainConfig.from_dict(config.to_dict())
    exported.model.checkpoint = checkpoint
    header = ("# LoRA Studio settings, exported from the WebUI's Train tab.\n"
              "# Train headless with:  python -m lib_training train --config this_file.toml\n")
    return header + exported.to_toml()


def lora_prompt(name: str, weight: float, trigger_word: str = "") -> str:
    """`<lora:name:weight>` followed by the trigger word, as an extra-networks card inserts it."""
    clean = validate_output_name(name)
    text = f"<lora:{clean}:{weight:g}>"
    return f"{text} {trigger_word.strip()}" if trigger_word.strip() else text


def error_text(error: BaseException) -> str:
    """What to show for an error: engine errors as written, anything else with its type."""
    return str(error) if isinstance(error, LoraStudioError) else f"{type(error).__name__}: {error}"
