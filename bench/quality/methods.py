"""The methods the benchmark compares: the Train tab's preset on the toy world's scale, with and without
the text encoder and class images (prior preservation)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from lib_training.webui.train.presets import PRESET_BATCH, PRESET_EPOCHS, TARGET_SAMPLES_PER_EPOCH, find_preset

CLASS_SOURCES = ("", "prompt", "captions")  # no class images / from the class prompt / from each caption


@dataclass(frozen=True)
class Method:
    """How one method trains: which parts, learning rates, class images (prior preservation)."""

    name: str
    train_text_encoder: bool
    class_images: str = ""  # one of CLASS_SOURCES
    unet_lr: float = 1e-3
    text_encoder_lr: float = 1e-3
    rank: int = 8
    alpha: float = 8.0
    conv_rank: int = 0  # > 0: also the ResnetBlock2D 3x3 convs (LoCon); the UNet attention is only at 8x8
    conv_alpha: float = 8.0
    steps: int = 300
    batch_size: int = 4
    prior_loss_weight: float = 1.0
    min_snr_gamma: float = 0.0
    scheduler: str = "constant"
    restarts: int = 1
    warmup_steps: int = 0
    class_per_image: int = 4  # class images per training image
    full: bool = False  # train the weights themselves (the engine's method "full"), not a LoRA (rank unused)
    extract_rank: int = 0  # full: also score a LoRA of this rank extracted from the difference (0 = none)

    @property
    def prior(self) -> bool:
        return bool(self.class_images)


# The presets' values carry over as they are (text encoder on/off and its lr relative to the UNet's,
# alpha/rank, min-SNR, prior-loss weight, scheduler); what is the toy world's own (its UNet is ~700x
# smaller than SD 1.5's and works in pixel space) is below, found with sweep_quality.py (README).
BENCH_PRESET = "object"
LR_FACTOR = 8.0  # toy learning rate = the preset's x this
STEPS = 400
RANK = 8
CONV_RANK = 8  # the toy UNet attends only at 8x8: its shapes are drawn by the 3x3 convs
PRESET_STEPS = sum(TARGET_SAMPLES_PER_EPOCH) // 2 // PRESET_BATCH * PRESET_EPOCHS  # what a preset run takes


# Classic (full) DreamBooth trains the weights themselves at a learning rate ~100x below a LoRA's: diffusers'
# DreamBooth example uses 5e-6 with AdamW and prior preservation, 400 steps. The toy takes it with the same
# LR_FACTOR as the LoRA rows; the text encoder keeps the preset's ratio to the UNet's lr.
FULL_UNET_LR = 5e-6
EXTRACT_RANK = RANK


def preset_method(name: str, train_text_encoder: bool, class_images: str, preset: str = BENCH_PRESET) -> Method:
    """A method with the Train tab preset's choices, on the toy world's scale."""
    v = find_preset(preset).values
    alpha_ratio = v["network.alpha"] / v["network.rank"]
    return Method(name, train_text_encoder, class_images, unet_lr=v["optimizer.unet_lr"] * LR_FACTOR,
                  text_encoder_lr=v["optimizer.text_encoder_lr"] * LR_FACTOR, rank=RANK, alpha=RANK * alpha_ratio,
                  conv_rank=CONV_RANK, conv_alpha=CONV_RANK * alpha_ratio, steps=STEPS,
                  prior_loss_weight=v["data.prior_loss_weight"], min_snr_gamma=v["train.min_snr_gamma"],
                  scheduler=v["optimizer.scheduler"], restarts=v["optimizer.restarts"],
                  warmup_steps=round(STEPS * v["optimizer.warmup_steps"] / PRESET_STEPS))


def full_method(m: Method) -> Method:
    """`m` as a full fine-tune: the preset's schedule, min-SNR and class images, DreamBooth's learning rate
    (the text encoder's keeps the preset's ratio), and a rank-EXTRACT_RANK LoRA extracted at the end."""
    te_ratio = m.text_encoder_lr / m.unet_lr
    unet_lr = FULL_UNET_LR * LR_FACTOR
    return replace(m, full=True, unet_lr=unet_lr, text_encoder_lr=unet_lr * te_ratio, extract_rank=EXTRACT_RANK)


# The ablation: the preset as a plain LoRA (UNet only, then + text encoder), then as DreamBooth-LoRA with
# class images drawn from the class prompt or from each training caption (the default).
METHODS: dict[str, Method] = {
    "lora": preset_method("lora", train_text_encoder=False, class_images=""),
    "lora_te": preset_method("lora_te", train_text_encoder=True, class_images=""),
    "dreambooth_lora_prompt": preset_method("dreambooth_lora_prompt", train_text_encoder=True, class_images="prompt"),
    "dreambooth_lora": preset_method("dreambooth_lora", train_text_encoder=True, class_images="captions"),
    "dreambooth_full": full_method(preset_method("dreambooth_full", train_text_encoder=True, class_images="captions")),
}
DEFAULT_METHOD = "dreambooth_lora"
LORA_METHODS = [name for name, m in METHODS.items() if not m.full]  # the ones whose files scale by a LoRA weight


def method(name: str, **overrides) -> Method:
    return replace(METHODS[name], **overrides)


def scaled_alphas(m: Method, fixed: dict) -> dict:
    """Alphas for a changed rank that keep the method's alpha/rank (the preset's)."""
    out = {}
    if "rank" in fixed:
        out["alpha"] = fixed["rank"] * m.alpha / m.rank
    if "conv_rank" in fixed:
        out["conv_alpha"] = fixed["conv_rank"] * (m.conv_alpha / m.conv_rank if m.conv_rank else m.alpha / m.rank)
    return out
