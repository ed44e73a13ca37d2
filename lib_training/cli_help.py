"""What `lora-studio train --help` says beyond the flags: defaults, and the settings that only the TOML has.

Kept apart from cli.py so the flag table stays short; tests/test_cli.py checks that every setting
of TrainConfig is either a flag or listed here, so none is left without a word.
"""

from __future__ import annotations

from .config import TrainConfig, _toml_value

# section.field -> what it does (settings with no command-line flag; set them in --config's TOML)
TOML_ONLY: dict[str, str] = {
    "model.tokenizer_dir": "folder with a CLIP tokenizer (vocab.json + merges.txt); empty = built from the "
                           "bundled CLIP vocabulary",
    "data.bucketing": "group images by aspect ratio into buckets of about resolution² pixels (kohya's buckets)",
    "data.bucket_step": "bucket sides are multiples of this many pixels",
    "data.caption_extension": "caption file extension (.caption is read too)",
    "data.shuffle_captions": "shuffle the comma-separated tags of each caption every step",
    "data.keep_tokens": "with shuffle: keep the first N tags in place (the trigger word)",
    "data.caption_dropout": "probability of training a step on an empty caption",
    "data.cache_latents_to_disk": "also keep the cached latents beside the images (<stem>.<w>x<h>.lslatent."
                                  "safetensors) for the next run",
    "network.conv_alpha": "alpha of the 3x3 conv LoRA (with --conv-rank)",
    "optimizer.weight_decay": "AdamW/Lion weight decay",
    "optimizer.restarts": "number of cycles of cosine_with_restarts",
    "optimizer.max_grad_norm": "clip the gradient norm to this (0 = no clipping)",
    "train.grad_accumulation": "micro-batches per optimizer step (effective batch = batch size x this x GPUs)",
    "train.noise_offset": "noise offset (0.05-0.1 helps very dark/bright images)",
    "train.min_snr_gamma": "min-SNR loss weighting (0 = off, 5 is common)",
    "train.sample_every_steps": "ask for sample images every N steps (the WebUI makes them; the CLI makes none)",
    "train.sample_prompts": "prompts of those samples",
    "train.loss_readback_steps": "read the loss back from the GPU every N steps (fewer syncs)",
    "train.deterministic": "same seed + settings + machine = a bit-identical LoRA: the CPU layer tuner's kernel "
                           "choices are kept in ~/.cache/lora_studio (XDG_CACHE_HOME) and reused",
    "validation.every_epochs": "with a validation split or folder: compute the validation loss after every N "
                               "epochs (0 = not by epoch)",
    "validation.timesteps": "fixed timesteps per validation image, spread evenly over the noise schedule",
    "output.save_dtype": "dtype of the saved file: fp16, bf16 or fp32",
    "output.runs_dir": "where config.toml, log.jsonl and resume.lsstate go; empty = <output_dir>/lora_studio_runs",
}


def default_of(section: str, field: str) -> object:
    return getattr(getattr(TrainConfig(), section), field)


def with_default(text: str, section: str, field: str) -> str:
    value = default_of(section, field)
    shown = _toml_value(value) if value != "" else '""'
    return f"{text} (default: {shown})"


def toml_only_epilog() -> str:
    lines = ["settings only in the TOML file (--config; --print-config writes every setting with its value):"]
    for key, text in TOML_ONLY.items():
        section, field = key.split(".")
        lines.append(f"  [{section}] {field} = {_toml_value(default_of(section, field))}")
        lines.append(f"      {text}")
    return "\n".join(lines)
