"""Training settings: typed dataclasses, validation with clear messages, TOML in and out.

The same `TrainConfig` is built by the WebUI tab, read by the CLI from `run.toml`,
and stored beside every run so a run can be repeated or resumed.
"""

from __future__ import annotations

import dataclasses
import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import SettingsError
from .fileio import validate_output_name

if sys.version_info >= (3, 11):
    import tomllib
else:  # A1111 runs Python 3.10
    import tomli as tomllib

OPTIMIZERS = ("adamw", "adamw8bit", "lion", "prodigy")
SCHEDULERS = ("constant", "linear", "cosine", "cosine_with_restarts", "polynomial")
MIXED_PRECISION = ("auto", "no", "fp16", "bf16")
SAVE_DTYPES = ("fp16", "bf16", "fp32")
PREDICTION_TYPES = ("auto", "epsilon", "v_prediction")
METHODS = ("lora", "full")  # full = DreamBooth fine-tune of the weights themselves, written as a checkpoint
WEIGHT_DTYPES = ("auto", "fp32", "fp16", "bf16", "fp8")  # models/weight_dtype.py says what each means


@dataclass
class ModelSettings:
    checkpoint: str = ""  # single-file .safetensors (CLI); the WebUI uses its loaded model
    prediction_type: str = "auto"  # auto = epsilon for SD1/SDXL (v_prediction with a v_pred key), v_prediction for SD2
    clip_skip: int = 1
    tokenizer_dir: str = ""  # vocab.json + merges.txt; empty = built offline from open_clip's BPE file
    weight_dtype: str = "auto"  # CLI: base weights as a GPU user's WebUI holds them (models/weight_dtype.py)


@dataclass
class DataSettings:
    train_dir: str = ""  # kohya layout: <repeats>_<trigger> <class>/ with images + captions
    reg_dir: str = ""  # class images for DreamBooth prior preservation (optional)
    prior_loss_weight: float = 1.0
    resolution: int = 512
    bucketing: bool = True
    bucket_step: int = 64
    flip: bool = False
    caption_extension: str = ".txt"
    shuffle_captions: bool = False
    keep_tokens: int = 0
    caption_dropout: float = 0.0
    cache_latents: bool = True
    cache_latents_to_disk: bool = False
    strict: bool = False  # refuse to start when the pre-flight would leave any file out (default: leave it out)


@dataclass
class NetworkSettings:
    method: str = "lora"  # "full": train the model's weights and write a checkpoint (rank/alpha unused)
    rank: int = 32
    alpha: float = 16.0
    conv_rank: int = 0  # > 0 adds the UNet's 3x3 convs (LoCon-style)
    conv_alpha: float = 1.0
    train_text_encoder: bool = True


@dataclass
class OptimizerSettings:
    optimizer: str = "adamw"
    unet_lr: float = 1e-4
    text_encoder_lr: float = 5e-5
    weight_decay: float = 0.01
    scheduler: str = "constant"
    warmup_steps: int = 0
    restarts: int = 1  # for cosine_with_restarts
    max_grad_norm: float = 1.0  # 0 = no clipping


@dataclass
class TrainSettings:
    epochs: int = 10
    max_steps: int = 0  # > 0 overrides epochs
    batch_size: int = 1
    grad_accumulation: int = 1
    mixed_precision: str = "auto"  # auto = fp16 on CUDA, fp32 on CPU
    gradient_checkpointing: bool = False
    noise_offset: float = 0.0
    min_snr_gamma: float = 0.0  # 0 = off; 5 is the common choice
    seed: int = 42
    save_every_epochs: int = 1  # 0 = only the final file
    sample_every_steps: int = 0  # 0 = no sample requests
    sample_prompts: list = field(default_factory=list)
    loss_readback_steps: int = 1  # read the loss back from the device every N steps
    deterministic: bool = True  # reuse the CPU layer tuner's saved choices: same seed + settings = same bits


@dataclass
class ValidationSettings:
    """A validation loss: the loss on held-out images at fixed noise and timesteps (train/validation.py)."""

    split: float = 0.0  # share of the training images held out (0 = none); at least 1 image, never all
    folder: str = ""  # or your own validation images, laid out as data.train_dir; used instead of `split`
    every_epochs: int = 1  # when on: after every N epochs (0 = not by epoch)
    every_steps: int = 0  # also every N optimizer steps (0 = not by step)
    timesteps: int = 4  # fixed timesteps per image, spread evenly over the noise schedule

    @property
    def enabled(self) -> bool:
        return self.split > 0 or bool(self.folder)


@dataclass
class OutputSettings:
    output_dir: str = "output"
    name: str = "my_lora"
    trigger_word: str = ""
    save_dtype: str = "fp16"
    overwrite: bool = False  # replace an existing <name>.safetensors
    runs_dir: str = ""  # resume state, logs and config of runs; empty = <output_dir>/lora_studio_runs
    extract_lora_rank: int = 0  # method "full": also write a LoRA of this rank from the difference (0 = no)
    extract_lora_dir: str = ""  # where that LoRA goes; empty = the Lora folder beside output_dir


@dataclass
class TrainConfig:
    model: ModelSettings = field(default_factory=ModelSettings)
    data: DataSettings = field(default_factory=DataSettings)
    network: NetworkSettings = field(default_factory=NetworkSettings)
    optimizer: OptimizerSettings = field(default_factory=OptimizerSettings)
    train: TrainSettings = field(default_factory=TrainSettings)
    output: OutputSettings = field(default_factory=OutputSettings)
    validation: ValidationSettings = field(default_factory=ValidationSettings)

    def validate(self, need_checkpoint: bool = False) -> "TrainConfig":
        """Raise SettingsError naming the first bad value and what to use instead."""
        _validate(self, need_checkpoint)
        return self

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "settings") -> "TrainConfig":
        config = cls()
        for section_name, values in data.items():
            section = getattr(config, section_name, None)
            if section is None or not dataclasses.is_dataclass(section) or not isinstance(values, dict):
                raise SettingsError(f"{source}: unknown section [{section_name}]. Sections: {', '.join(_sections())}.")
            known = {f.name: f for f in dataclasses.fields(section)}
            for key, value in values.items():
                if key not in known:
                    raise SettingsError(
                        f"{source}: unknown setting {section_name}.{key}. Known: {', '.join(sorted(known))}."
                    )
                setattr(section, key, _coerce(value, getattr(section, key), f"{source}: {section_name}.{key}"))
        return config

    def to_toml(self) -> str:
        return dumps_toml(self.to_dict())

    @classmethod
    def from_toml(cls, path: Path) -> "TrainConfig":
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise SettingsError(f"Config file {path} does not exist.") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
            raise SettingsError(f"Config file {path} is not valid TOML: {error}") from None
        return cls.from_dict(data, source=str(path))


def _sections() -> list[str]:
    return [f.name for f in dataclasses.fields(TrainConfig)]


def _coerce(value: Any, default: Any, where: str) -> Any:
    """TOML/JSON/gradio values into the type of the default (ints may stand for floats)."""
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        raise SettingsError(f"{where} must be true or false, not {value!r}.")
    if isinstance(default, float) and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(default, int) and isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(default, list) and isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    if type(value) is not type(default):
        raise SettingsError(f"{where} must be a {type(default).__name__}, not {value!r}.")
    return value


def _require(ok: bool, message: str) -> None:
    if not ok:
        raise SettingsError(message)


def _one_of(value: str, allowed: tuple[str, ...], name: str) -> None:
    _require(value in allowed, f"{name} is {value!r}; use one of: {', '.join(allowed)}.")


# Upper bounds far beyond any real run: only a typo or a hostile request meets them (e.g. steps 1e12).
LIMITS = {"network.rank": 1024, "network.conv_rank": 1024, "output.extract_lora_rank": 1024,
          "data.resolution": 4096, "data.bucket_step": 1024, "data.keep_tokens": 255,
          "train.max_steps": 10_000_000, "train.epochs": 100_000, "train.batch_size": 1024,
          "train.grad_accumulation": 1024, "train.save_every_epochs": 100_000, "train.sample_every_steps": 10_000_000,
          "train.loss_readback_steps": 10_000, "optimizer.warmup_steps": 10_000_000, "optimizer.restarts": 10_000,
          "model.clip_skip": 24, "train.seed": 2**63 - 1}


def _validate_ranges(c: TrainConfig) -> None:
    """Every number finite and below its limit, so an absurd value is a clear error, not a hang or a crash."""
    for section in dataclasses.fields(c):
        values = getattr(c, section.name)
        for item in dataclasses.fields(values):
            key, value = f"{section.name}.{item.name}", getattr(values, item.name)
            if isinstance(value, float):
                _require(math.isfinite(value), f"{key} is {value}; give a finite number.")
            limit = LIMITS.get(key)
            if limit is not None and isinstance(value, (int, float)):
                _require(abs(value) <= limit, f"{key} is {value}; the most this accepts is {limit:,}.")


def _validate(c: TrainConfig, need_checkpoint: bool) -> None:
    _validate_ranges(c)
    n, o, t, d, m = c.network, c.optimizer, c.train, c.data, c.model
    _require(n.rank >= 1, f"network.rank is {n.rank}; the rank must be at least 1 (typical: 8-128).")
    _require(n.alpha > 0, f"network.alpha is {n.alpha}; it must be > 0 (typical: half the rank).")
    _require(n.conv_rank >= 0, f"network.conv_rank is {n.conv_rank}; use 0 (off) or a positive rank.")
    _require(n.conv_rank == 0 or n.conv_alpha > 0, "network.conv_alpha must be > 0 when conv_rank is set.")
    _require(o.unet_lr >= 0, f"optimizer.unet_lr is {o.unet_lr}; a learning rate cannot be negative (typical: 1e-4).")
    _require(o.text_encoder_lr >= 0,
             f"optimizer.text_encoder_lr is {o.text_encoder_lr}; it cannot be negative (typical: 5e-5, or 0).")
    _require(o.unet_lr > 0 or (n.train_text_encoder and o.text_encoder_lr > 0),
             "Both learning rates are 0: nothing would be trained. Set optimizer.unet_lr (typical: 1e-4).")
    _require(o.weight_decay >= 0, "optimizer.weight_decay cannot be negative.")
    _require(o.warmup_steps >= 0, "optimizer.warmup_steps cannot be negative.")
    _require(o.restarts >= 1, "optimizer.restarts must be at least 1.")
    _require(o.max_grad_norm >= 0, "optimizer.max_grad_norm cannot be negative (0 = no clipping).")
    _one_of(n.method, METHODS, "network.method")
    _require(c.output.extract_lora_rank >= 0, "output.extract_lora_rank cannot be negative (0 = no LoRA).")
    _require(c.output.extract_lora_rank == 0 or n.method == "full",
             "output.extract_lora_rank extracts a LoRA from a full fine-tune; set network.method = \"full\" "
             "or leave it at 0.")
    _one_of(o.optimizer, OPTIMIZERS, "optimizer.optimizer")
    _one_of(o.scheduler, SCHEDULERS, "optimizer.scheduler")
    _require(t.epochs >= 1 or t.max_steps >= 1, "Set train.epochs (>= 1) or train.max_steps (>= 1).")
    _require(t.max_steps >= 0, "train.max_steps cannot be negative (0 = decided by epochs).")
    _require(t.batch_size >= 1, f"train.batch_size is {t.batch_size}; it must be at least 1.")
    _require(t.grad_accumulation >= 1, "train.grad_accumulation must be at least 1.")
    _one_of(t.mixed_precision, MIXED_PRECISION, "train.mixed_precision")
    _require(t.noise_offset >= 0, "train.noise_offset cannot be negative (typical: 0 or 0.05-0.1).")
    _require(t.min_snr_gamma >= 0, "train.min_snr_gamma cannot be negative (0 = off, typical: 5).")
    _require(t.save_every_epochs >= 0, "train.save_every_epochs cannot be negative (0 = final file only).")
    _require(t.sample_every_steps >= 0, "train.sample_every_steps cannot be negative.")
    _require(t.loss_readback_steps >= 1, "train.loss_readback_steps must be at least 1.")
    _require(d.resolution >= 64 and d.resolution % 8 == 0,
             f"data.resolution is {d.resolution}; use a multiple of 8, at least 64 (SD1: 512, SD2: 768).")
    _require(d.bucket_step >= 8 and d.bucket_step % 8 == 0, "data.bucket_step must be a multiple of 8.")
    _require(0 <= d.caption_dropout <= 1, "data.caption_dropout is a probability between 0 and 1.")
    _require(d.keep_tokens >= 0, "data.keep_tokens cannot be negative.")
    _require(d.prior_loss_weight >= 0, "data.prior_loss_weight cannot be negative.")
    _require(re.fullmatch(r"\.[A-Za-z0-9_]{1,16}", d.caption_extension) is not None,
             f"data.caption_extension is {d.caption_extension!r}; use '.' and letters, e.g. '.txt'.")
    _require(bool(d.train_dir), "data.train_dir is empty: choose the folder with your training images.")
    _require(Path(d.train_dir).is_dir(), f"The training folder {d.train_dir} does not exist. Check the path.")
    _require(not d.reg_dir or Path(d.reg_dir).is_dir(),
             f"The class-image folder {d.reg_dir} does not exist. Check the path or leave it empty.")
    _one_of(m.prediction_type, PREDICTION_TYPES, "model.prediction_type")
    _one_of(m.weight_dtype, WEIGHT_DTYPES, "model.weight_dtype")
    _require(m.clip_skip >= 1, "model.clip_skip must be at least 1 (1 = last layer, 2 = penultimate).")
    if need_checkpoint:
        _require(bool(m.checkpoint), "model.checkpoint is empty: give the .safetensors checkpoint to train on.")
        _require(Path(m.checkpoint).is_file(), f"The checkpoint {m.checkpoint} does not exist. Check the path.")
    _one_of(c.output.save_dtype, SAVE_DTYPES, "output.save_dtype")
    c.output.name = validate_output_name(c.output.name)
    _validate_validation(c.validation)


def _validate_validation(v: ValidationSettings) -> None:
    _require(0 <= v.split < 1, f"validation.split is {v.split}; use a share between 0 (off) and 1, e.g. 0.1.")
    _require(not v.folder or Path(v.folder).is_dir(),
             f"The validation folder {v.folder} does not exist. Check the path or leave it empty.")
    _require(v.every_epochs >= 0 and v.every_steps >= 0,
             "validation.every_epochs and validation.every_steps cannot be negative (0 = off).")
    _require(not v.enabled or v.every_epochs > 0 or v.every_steps > 0,
             "A validation loss is asked for but never computed: set validation.every_epochs or validation.every_steps.")
    _require(v.timesteps >= 1, f"validation.timesteps is {v.timesteps}; use at least 1 (typical: 4).")


def dumps_toml(data: dict[str, dict[str, Any]]) -> str:
    """A small TOML writer for our two-level settings (A1111's venv has no TOML writer)."""
    lines: list[str] = []
    for section, values in data.items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            lines.append(f"{key} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{escaped}"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")
