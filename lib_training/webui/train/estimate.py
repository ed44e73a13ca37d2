"""Before Start: how many steps, how long, how much memory — each with the basis it rests on.

Steps are exact: the same count the run makes (`plan.count_steps`), from the images' sizes read
from their headers (no decoding), so buckets are the run's buckets.

Time is a documented model, rough by design (±50%):
    seconds/step = s512 × (W×H / 512²) × batch^0.9 × accumulation × factors
where s512 is the seconds one 512×512 image takes through forward + backward of a rank-32 LoRA
with fp16 autocast and PyTorch SDP attention on the device — calibrated on this machine's own
earlier runs when there are any (`calibration.py`: their measured s/step divided by these factors),
otherwise looked up in `SECONDS_PER_IMAGE_512` (community kohya sd-scripts timings for SD 1.5,
rounded). Sample images (every N steps, and the WebUI's final preview) are added: measured per
prompt on earlier runs, else a third of a training image per sampler step. Factors: gradient checkpointing ×1.25, text encoder
trained ×1.1, rank (1 + rank/256) / (1 + 32/256), conv layers ×1.1, latents not cached ×1.15,
no mixed precision on CUDA ×2, DreamBooth (one class batch per step) ×2, SD 2.x ×1.1, SDXL ×2.5
(per pixel: its UNet is ~3× SD 1.5's parameters, most of them at the coarser levels); a full
fine-tune (every weight gets a gradient and an optimizer update) ×1.4 instead of the rank factor.

Memory (GPU, or RAM on CPU) is a sum, rough by design (±30%):
    model weights (parameters × 2 bytes in fp16, 4 in fp32; fp8 storage: UNet and text encoder 1 byte)
  + LoRA training state (LoRA parameters × bytes per parameter for weights, grads and the
    optimizer's state: AdamW 16, Lion 12, Prodigy 24, AdamW8bit 10)
  + activations kept for backward: 2.8 GB per 512² image at fp16 without gradient checkpointing,
    0.7 GB with it (SD 1.5 with SDP attention; ×2 without mixed precision, ×1.15 for SD 2.x, ×1.3 for
    SDXL, set so that an SDXL LoRA at 1024 px, batch 1, checkpointed, fits a 12 GB card as with kohya,
    +0.2 GB per image when the text encoder trains), × images per micro-batch × (W×H / 512²)
  + the VAE encoder when latents are not cached (1.2 GB per 512² image)
  + 0.8 GB for the CUDA context and allocator slack.
A full fine-tune replaces the LoRA state by the trained weights' (UNet 860 M, SD1 text encoder 123 M):
fp32 master (4 bytes, only when the weights are half) + fp32 gradient (4) + the optimizer's state
(AdamW 8, Lion 4, Prodigy 16, AdamW8bit 2); the originals kept for the restore take RAM (the weights'
bytes), which counts on the CPU only.
When it does not fit the GPU, `fit_advice` names the fewest changes (in the order users reach for
them) that bring it under, each with the memory it would need.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ...config import TrainConfig
from ...data.buckets import assign_bucket, make_buckets
from ...data.folders import scan_dataset
from ...errors import DatasetError, SettingsError
from ...train.plan import count_steps

# Seconds per 512×512 image, forward + backward, rank-32 LoRA, fp16 autocast, SDP attention.
# Matched against the device name in this order (first match wins).
SECONDS_PER_IMAGE_512: tuple[tuple[str, float], ...] = (
    ("H200", 0.05), ("H100", 0.06), ("A100", 0.09), ("4090", 0.09), ("L40", 0.10), ("4080", 0.12),
    ("A6000", 0.15), ("3090", 0.17), ("4070", 0.20), ("3080", 0.20), ("A10", 0.25), ("V100", 0.25),
    ("4060", 0.32), ("2080", 0.35), ("3070", 0.28), ("L4", 0.40), ("3060", 0.40), ("T4", 0.90),
)
DEFAULT_SECONDS = {"cuda": 0.35, "mps": 1.5, "xpu": 0.6, "cpu": 20.0}

PARAMETERS = {"sd1": 1.07e9, "sd2": 1.29e9, "sdxl": 3.47e9}  # UNet + text encoder(s) + VAE
# (UNet, text encoders): sum of in + out features over kohya's default targets (SDXL: 722 UNet
# modules, tests/data/sdxl_kohya_lora_names.json; 72 CLIP-L + 192 bigG text-encoder modules).
LORA_PARAMS_PER_RANK = {"sd1": (0.42e6, 0.166e6), "sd2": (0.44e6, 0.424e6), "sdxl": (2.66e6, 0.903e6)}
VAE_PARAMETERS = 0.084e9  # kept in 16 bits when A1111 stores the rest in fp8
FAMILY_TIME_FACTOR = {"sd2": 1.1, "sdxl": 2.5}
FAMILY_ACTIVATION_FACTOR = {"sd2": 1.15, "sdxl": 1.3}
CONV_PARAMS_PER_RANK = 0.55e6
OPTIMIZER_BYTES = {"adamw": 16, "lion": 12, "prodigy": 24, "adamw8bit": 10}
FULL_PARAMS = {"sd1": (0.86e9, 0.123e9), "sd2": (0.866e9, 0.34e9)}  # (UNet, text encoder) trained by "full"
FULL_TIME_FACTOR = 1.4
ACTIVATION_GB_512 = 2.8
ACTIVATION_GB_512_CHECKPOINTED = 0.7
TEXT_ENCODER_ACTIVATION_GB = 0.2
VAE_ENCODE_GB_512 = 1.2
CONTEXT_GB = 0.8
GB = 1024 ** 3


@dataclass(frozen=True)
class DeviceInfo:
    kind: str  # "cuda" | "mps" | "xpu" | "cpu"
    name: str = ""
    memory_gb: Optional[float] = None  # total memory of the device (RAM for the CPU: None)
    seconds_per_image_512: Optional[float] = None  # measured on this device; None = use the table
    half_weights: bool = True  # the model's weights are fp16 (A1111's default) rather than fp32 (--no-half)
    fp8_weights: bool = False  # A1111's FP8 weight: UNet and text-encoder Linear/Conv2d stored in fp8
    sample_seconds_512: Optional[float] = None  # one sample image at 512², measured on earlier runs
    measured_runs: int = 0  # how many earlier runs seconds_per_image_512 comes from (0: from elsewhere)


@dataclass(frozen=True)
class StepCount:
    total_steps: int
    steps_per_epoch: int
    epochs: int
    images: int
    unreadable: tuple = ()  # images whose header could not be read


@dataclass
class Estimate:
    steps: StepCount
    seconds_per_step: float
    total_seconds: float
    memory_gb: float
    device: DeviceInfo
    time_basis: str
    memory_basis: str
    warnings: list = field(default_factory=list)

    @property
    def fits(self) -> Optional[bool]:
        if self.device.memory_gb is None:
            return None
        return self.memory_gb <= self.device.memory_gb * 0.95

    def markdown(self) -> str:
        s = self.steps
        where = "RAM" if self.device.kind == "cpu" else "GPU memory"
        lines = [
            f"**{s.total_steps} steps** ({s.epochs} epochs × {s.steps_per_epoch} steps, {s.images} images) · "
            f"**≈ {format_duration(self.total_seconds)}** ({self.seconds_per_step:.2f} s/step) · "
            f"**≈ {self.memory_gb:.1f} GB {where}**"
            + (f" of {self.device.memory_gb:.0f} GB" if self.device.memory_gb else "")
            + (" — fits" if self.fits else ""),
            f"<small>Time: {self.time_basis}. Memory: {self.memory_basis}. Rough estimates.</small>",
        ]
        lines += [f"⚠ {w}" for w in self.warnings]
        return "\n\n".join(lines)


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    if seconds < 90:
        return f"{seconds} s"
    minutes = round(seconds / 60)
    if minutes < 90:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60:02d} min"


# ---- steps -------------------------------------------------------------------------------------

def count_training_steps(config: TrainConfig) -> StepCount:
    """The run's step count without decoding images; DatasetError when the folder is unusable."""
    d, t = config.data, config.train
    spec = scan_dataset(Path(d.train_dir), None, caption_extensions=(d.caption_extension, ".txt", ".caption"))
    buckets = make_buckets(d.resolution, step=d.bucket_step) if d.bucketing else [(d.resolution, d.resolution)]
    per_bucket: dict[tuple[int, int], int] = {}
    unreadable = []
    for item in spec.train_items:
        size = image_size(item.path)
        if size is None:
            unreadable.append(item.path.name)
            continue
        bucket = assign_bucket(*size, buckets)
        per_bucket[bucket] = per_bucket.get(bucket, 0) + item.repeats
    if not per_bucket:
        raise DatasetError(f"None of the images in {d.train_dir} can be read. Check the files, or run the "
                           "Dataset tab's health check.")
    batches, total, epochs = count_steps(list(per_bucket.values()), t.batch_size, t.grad_accumulation,
                                         t.epochs, t.max_steps)
    return StepCount(total, math.ceil(batches / t.grad_accumulation), epochs,
                     len(spec.train_items), tuple(unreadable))


def image_size(path: Path) -> Optional[tuple[int, int]]:
    """(width, height) as the trainer sees it (EXIF rotation applied), from the header only."""
    from PIL import Image, UnidentifiedImageError

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            with Image.open(path) as img:
                width, height = img.size
                orientation = img.getexif().get(0x0112, 1)
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError):
            return None
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


# ---- time ------------------------------------------------------------------------------------

def seconds_per_image_512(device: DeviceInfo) -> tuple[float, str]:
    if device.seconds_per_image_512 and device.measured_runs:
        return device.seconds_per_image_512, (f"measured on this machine: {device.seconds_per_image_512:.2f} s per "
                                              f"512² image, median of {device.measured_runs} earlier run(s)")
    if device.seconds_per_image_512:
        return device.seconds_per_image_512, f"measured {device.seconds_per_image_512:.2f} s per 512² image"
    name = device.name.upper()
    if device.kind == "cuda":
        for needle, seconds in SECONDS_PER_IMAGE_512:
            if needle in name:
                return seconds, f"{seconds:.2f} s per 512² image on {needle}-class GPUs (community timings)"
    seconds = DEFAULT_SECONDS.get(device.kind, DEFAULT_SECONDS["cuda"])
    label = device.name or device.kind
    return seconds, f"{seconds:.2f} s per 512² image assumed for {label} (no timing known for it)"


def seconds_per_step(config: TrainConfig, device: DeviceInfo, family: str = "sd1") -> tuple[float, str]:
    base, basis = seconds_per_image_512(device)
    return base * step_factor(config, family, device.kind), basis


def step_factor(config: TrainConfig, family: str = "sd1", device_kind: str = "cuda") -> float:
    """seconds per step / seconds per 512² image: the settings' part of the time model."""
    n, t, d = config.network, config.train, config.data
    factor = (d.resolution / 512) ** 2 * t.batch_size ** 0.9 * t.grad_accumulation
    factor *= FULL_TIME_FACTOR if n.method == "full" else (1 + n.rank / 256) / (1 + 32 / 256)
    if t.gradient_checkpointing:
        factor *= 1.25
    if n.train_text_encoder and config.optimizer.text_encoder_lr > 0:
        factor *= 1.1
    if n.conv_rank > 0 and n.method != "full":
        factor *= 1.1
    if not d.cache_latents:
        factor *= 1.15
    if device_kind == "cuda" and t.mixed_precision == "no":
        factor *= 2
    if d.reg_dir:
        factor *= 2
    factor *= FAMILY_TIME_FACTOR.get(family, 1.0)
    return factor


# ---- memory ----------------------------------------------------------------------------------

def memory_gb(config: TrainConfig, device: DeviceInfo, family: str = "sd1") -> tuple[float, str]:
    n, t, d = config.network, config.train, config.data
    family = family if family in PARAMETERS else "sd1"
    if device.fp8_weights:
        weights = ((PARAMETERS[family] - VAE_PARAMETERS) * 1 + VAE_PARAMETERS * 2) / GB
    else:
        weight_bytes = 2 if device.half_weights and device.kind != "cpu" else 4
        weights = PARAMETERS[family] * weight_bytes / GB
    unet_per_rank, te_per_rank = LORA_PARAMS_PER_RANK[family]
    train_te = n.train_text_encoder and config.optimizer.text_encoder_lr > 0
    lora_params = n.rank * (unet_per_rank + (te_per_rank if train_te else 0)) + n.conv_rank * CONV_PARAMS_PER_RANK
    lora_state = lora_params * OPTIMIZER_BYTES.get(config.optimizer.optimizer, 16) / GB
    state_label = "LoRA and optimizer"
    if n.method == "full":
        unet_params, te_params = FULL_PARAMS[family]
        trained = unet_params + (te_params if train_te else 0)
        per_param = (4 if weight_bytes == 2 else 0) + 4 + OPTIMIZER_BYTES.get(config.optimizer.optimizer, 16) - 8
        per_param += weight_bytes if device.kind == "cpu" else 0  # the originals, kept in RAM
        lora_state = trained * per_param / GB
        state_label = f"full fine-tune state ({per_param} bytes × {trained / 1e6:.0f} M weights)"
    pixels = (d.resolution / 512) ** 2
    per_image = ACTIVATION_GB_512_CHECKPOINTED if t.gradient_checkpointing else ACTIVATION_GB_512
    if device.kind != "cuda" or t.mixed_precision == "no":
        per_image *= 2  # fp32 activations
    per_image *= FAMILY_ACTIVATION_FACTOR.get(family, 1.0)
    if train_te:
        per_image += TEXT_ENCODER_ACTIVATION_GB
    images = t.batch_size * (2 if d.reg_dir else 1)
    activations = per_image * images * pixels
    vae = 0.0 if d.cache_latents else VAE_ENCODE_GB_512 * images * pixels
    context = CONTEXT_GB if device.kind == "cuda" else 0.0
    total = weights + lora_state + activations + vae + context
    basis = (f"weights {weights:.1f} GB + {state_label} {lora_state:.2f} GB + activations {activations:.1f} GB "
             f"({images} × {per_image:.1f} GB per 512² image)"
             + (f" + VAE {vae:.1f} GB" if vae else "") + (f" + CUDA context {context:.1f} GB" if context else ""))
    return total, basis


# ---- all together ----------------------------------------------------------------------------

def estimate(config: TrainConfig, device: DeviceInfo, family: str = "sd1", sample_steps: int = 20,
             final_sample: bool = False) -> Estimate:
    """Steps, time and memory for `config` on `device`; DatasetError/SettingsError when it cannot tell.

    `final_sample`: the run ends with one sample image even without sample prompts (the WebUI's preview)."""
    if config.train.batch_size < 1 or config.train.grad_accumulation < 1:
        raise SettingsError("Batch size and gradient accumulation must be at least 1.")
    steps = count_training_steps(config)
    per_step, time_basis = seconds_per_step(config, device, family)
    total = per_step * steps.total_steps
    sampling, sample_basis = sample_seconds(config, device, steps.total_steps, sample_steps, final_sample)
    total += sampling
    memory, memory_basis = memory_gb(config, device, family)
    result = Estimate(steps, per_step, total, memory, device, time_basis + sample_basis, memory_basis)
    if steps.unreadable:
        shown = ", ".join(steps.unreadable[:3]) + (" …" if len(steps.unreadable) > 3 else "")
        result.warnings.append(f"{len(steps.unreadable)} image(s) cannot be read ({shown}); training stops on "
                               "them. Remove or re-save them.")
    if result.fits is False:
        result.warnings.append(f"May not fit in {device.memory_gb:.0f} GB. " + fit_advice(config, device, family))
    if device.kind == "cpu":
        result.warnings.append("Training on the CPU is very slow; it is meant for checks, not real LoRAs.")
    return result


def sample_seconds(config: TrainConfig, device: DeviceInfo, total_steps: int, sample_steps: int,
                   final_sample: bool) -> tuple[float, str]:
    """Seconds the run spends drawing sample images (every N steps and at the end), and its basis."""
    t = config.train
    prompts = len(t.sample_prompts) or (1 if final_sample else 0)
    every = t.sample_every_steps if t.sample_prompts else 0
    rounds = (total_steps // every + (1 if total_steps % every else 0)) if every else (1 if final_sample else 0)
    if not rounds or not prompts:
        return 0.0, ""
    pixels = (config.data.resolution / 512) ** 2
    if device.sample_seconds_512:
        one, how = device.sample_seconds_512 * pixels, "measured on earlier runs"
    else:
        # One sampling step ≈ a third of a training image (forward only, batch 1, ×2 for CFG).
        one, how = sample_steps * seconds_per_image_512(device)[0] * 0.33 * pixels, f"{sample_steps} sampler steps"
    seconds = rounds * prompts * one
    return seconds, f"; {rounds * prompts} sample image(s) ≈ {format_duration(seconds)} ({how})"


# ---- when it does not fit ------------------------------------------------------------------------

def _changes(config: TrainConfig, device: DeviceInfo):
    """(label, changed config, changed device) in the order users reach for them; each keeps the last."""
    c = TrainConfig.from_dict(config.to_dict())
    if not c.train.gradient_checkpointing:
        c.train.gradient_checkpointing = True
        yield "turn on gradient checkpointing", c, device
    if c.train.batch_size > 1:
        c = TrainConfig.from_dict(c.to_dict())
        accumulation = c.train.grad_accumulation * c.train.batch_size
        c.train.batch_size, c.train.grad_accumulation = 1, accumulation
        yield f"batch size 1 with gradient accumulation {accumulation} (the same images per step)", c, device
    if not c.data.cache_latents:
        c = TrainConfig.from_dict(c.to_dict())
        c.data.cache_latents = True
        yield "cache latents", c, device
    if c.optimizer.optimizer != "adamw8bit":
        c = TrainConfig.from_dict(c.to_dict())
        c.optimizer.optimizer = "adamw8bit"
        yield "optimizer adamw8bit (needs bitsandbytes)", c, device
    if c.network.train_text_encoder and c.optimizer.text_encoder_lr > 0:
        c = TrainConfig.from_dict(c.to_dict())
        c.network.train_text_encoder = False
        yield "train the UNet only (text-encoder lr 0)", c, device
    if device.kind == "cuda" and not device.fp8_weights:
        device = DeviceInfo(**{**device.__dict__, "fp8_weights": True})
        yield "Settings > Optimizations > FP8 weight: Enable (then reload the model)", c, device
    while c.data.resolution > 512:
        c = TrainConfig.from_dict(c.to_dict())
        c.data.resolution = max(512, c.data.resolution - 128)
        yield f"resolution {c.data.resolution}", c, device


def fit_advice(config: TrainConfig, device: DeviceInfo, family: str = "sd1") -> str:
    """The fewest changes, in order, that bring the estimate under the device's memory — with the numbers."""
    limit = (device.memory_gb or 0) * 0.95
    steps = []
    for label, changed, changed_device in _changes(config, device):
        need = memory_gb(changed, changed_device, family)[0]
        steps.append(f"{label} (→ ≈ {need:.1f} GB)")
        if need <= limit:
            return "To fit: " + "; then ".join(steps) + "."
    return ("Even with " + "; ".join(steps) + " it would not fit; train on a GPU with more memory."
            if steps else "Train on a GPU with more memory.")


def device_info_from_torch(device, half_weights: bool = True, measured_seconds: Optional[float] = None,
                           fp8_weights: bool = False) -> DeviceInfo:
    """DeviceInfo for a torch.device (name and memory of a CUDA GPU); reads properties only.
    `calibration.calibrated` adds this machine's measured timings."""
    import torch

    kind = getattr(device, "type", str(device))
    if kind == "cuda" and torch.cuda.is_available():
        index = device.index if getattr(device, "index", None) is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        return DeviceInfo("cuda", props.name, props.total_memory / GB, measured_seconds, half_weights, fp8_weights)
    return DeviceInfo(kind, kind.upper(), None, measured_seconds, half_weights, fp8_weights)


REFERENCE_GPU = "12 GB RTX 3060-class GPU"


def reference_cost(values: dict, family: str = "sd1") -> tuple[float, float]:
    """(seconds per step, GB) of preset values (at their resolution) on REFERENCE_GPU, for the presets' descriptions."""
    sections: dict = {}
    for key, value in values.items():
        section, name = key.split(".", 1)
        sections.setdefault(section, {})[name] = value
    config = TrainConfig.from_dict(sections, source="the preset")
    device = DeviceInfo("cuda", "RTX 3060", 12.0)
    return seconds_per_step(config, device, family)[0], memory_gb(config, device, family)[0]

