"""Starting points for the Train tab: community practice for SD 1.5 LoRAs, every value editable.

Sources (SPEC §4 "Train"): images × repeats ≈ 200–400 per epoch and ~10 epochs, rank 16–32 with
alpha half the rank, UNet lr 5e-4 / text-encoder lr 1e-4, cosine with restarts (×3) or constant,
min-SNR γ 5, batch 2, 512 px, trigger word first with keep-tokens 1 + caption shuffle, flips only
for subjects that look the same mirrored; style LoRAs train the text encoder little or not at
all and may add the 3×3 convolutions. Every preset saves every epoch: users learn more from
comparing epochs than from exact learning rates (the Compare tab does the choosing).

SDXL (Pony, Illustrious, NoobAI...): the same three presets, changed as kohya advises for SDXL LoRAs
(`SDXL_CHANGES`): 1024 px, UNet lr 1e-4, text encoders off, gradient checkpointing on, and captions
kept in order so the frozen text encoders' outputs are computed once per caption and cached.

A preset only sets training values (`section.field` keys of TrainConfig); it never touches the
dataset folder, the output name or the trigger word. Engine code, so `lora-studio demo` trains with the
same values; the Train tab (`webui/train/presets.py`) adds each preset's one-line description with
its time and memory estimate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

# What the presets are tuned for: images × repeats seen per epoch, and the number of epochs.
TARGET_SAMPLES_PER_EPOCH = (200, 400)
PRESET_EPOCHS = 10
PRESET_BATCH = 2

_COMMON: dict[str, Any] = {
    "data.resolution": 512,
    "data.bucketing": True,
    "data.shuffle_captions": True,
    "data.keep_tokens": 1,  # the trigger word stays first when captions are shuffled
    "data.caption_dropout": 0.0,
    "data.cache_latents": True,
    "data.prior_loss_weight": 1.0,  # used when the dataset has class images (DreamBooth)
    "optimizer.optimizer": "adamw",
    "optimizer.weight_decay": 0.01,
    "optimizer.warmup_steps": 0,
    "optimizer.max_grad_norm": 1.0,
    "train.epochs": PRESET_EPOCHS,
    "train.max_steps": 0,
    "train.batch_size": PRESET_BATCH,
    "train.grad_accumulation": 1,
    "train.min_snr_gamma": 5.0,
    "train.noise_offset": 0.0,
    "train.save_every_epochs": 1,
    "network.conv_rank": 0,
    "network.conv_alpha": 1.0,
}


# SDXL versions of the presets: kohya's SDXL advice (text encoders not trained, lower UNet lr, 1024 px,
# checkpointing); no caption shuffle, since cached text-encoder outputs need the caption fixed (kohya
# refuses --cache_text_encoder_outputs with --shuffle_caption). Ranks stay 16-32.
SDXL_CHANGES: dict[str, Any] = {
    "data.resolution": 1024,
    "data.shuffle_captions": False,
    "network.train_text_encoder": False,
    "optimizer.unet_lr": 1e-4,
    "optimizer.text_encoder_lr": 0.0,
    "train.gradient_checkpointing": True,
}


@dataclass(frozen=True)
class Preset:
    key: str
    label: str
    summary: str  # what it is for, in a few words
    values: Mapping[str, Any]  # "section.field" -> value, applied on top of the form
    family: str = "sd1"  # the model family the values are for ("sdxl": with SDXL_CHANGES)

    def for_family(self, family: str) -> "Preset":
        """This preset for the loaded model's family (SDXL gets `SDXL_CHANGES`; SD 1.x/2.x as they are)."""
        if family != "sdxl" or self.family == "sdxl":
            return self
        return Preset(self.key, self.label, self.summary, {**self.values, **SDXL_CHANGES}, family="sdxl")


PRESETS: dict[str, Preset] = {
    "person": Preset(
        key="person",
        label="Person / face",
        summary="one person's face or figure from 15–40 photos",
        values={**_COMMON,
                "network.rank": 32, "network.alpha": 16.0, "network.train_text_encoder": True,
                "optimizer.unet_lr": 5e-4, "optimizer.text_encoder_lr": 1e-4,
                "optimizer.scheduler": "cosine_with_restarts", "optimizer.restarts": 3,
                "data.flip": False},  # faces are not symmetric (parting, moles, scars)
    ),
    "object": Preset(
        key="object",
        label="Object",
        summary="one thing (a costume, a product, a pet) from 10–40 photos",
        values={**_COMMON,
                "network.rank": 16, "network.alpha": 8.0, "network.train_text_encoder": True,
                "optimizer.unet_lr": 5e-4, "optimizer.text_encoder_lr": 1e-4,
                "optimizer.scheduler": "cosine_with_restarts", "optimizer.restarts": 3,
                "data.flip": False},  # logos, text and handed details must not be mirrored
    ),
    "style": Preset(
        key="style",
        label="Style",
        summary="a look (painting style, sticker style) from 30–100 varied images",
        values={**_COMMON,
                "network.rank": 32, "network.alpha": 16.0, "network.train_text_encoder": False,
                "network.conv_rank": 8, "network.conv_alpha": 4.0,
                "optimizer.unet_lr": 5e-4, "optimizer.text_encoder_lr": 0.0,
                "optimizer.scheduler": "constant", "optimizer.restarts": 1,
                "data.flip": True},  # a style looks the same mirrored; doubles the variety
    ),
}

DEFAULT_PRESET = "person"


def preset_choices() -> list[str]:
    """Labels for the preset dropdown, in display order."""
    return [preset.label for preset in PRESETS.values()]


def find_preset(key_or_label: str, family: str = "sd1") -> Preset:
    """The preset with this key or label, for a model of `family`; KeyError naming the choices otherwise."""
    for preset in PRESETS.values():
        if key_or_label in (preset.key, preset.label):
            return preset.for_family(family)
    raise KeyError(f"No preset {key_or_label!r}; choose one of: {', '.join(PRESETS)}.")


def suggested_repeats(num_images: int) -> int:
    """Repeats that bring images × repeats into the presets' 200–400 per epoch (at least 1)."""
    if num_images <= 0:
        return 1
    low, high = TARGET_SAMPLES_PER_EPOCH
    return max(1, round((low + high) / 2 / num_images))
