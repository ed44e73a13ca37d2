"""The one metadata builder: kohya `ss_*` keys + `modelspec.*`, all values strings."""

from __future__ import annotations

import datetime
import json
import uuid
from dataclasses import dataclass, field

from ..config import TrainConfig
from ..models.adapter import V_PREDICTION, ModelInfo


VALIDATION_LOSS_KEY = "lora_studio.validation_loss"  # not a kohya key: Compare reads it as a signal


@dataclass
class RunFacts:
    """What happened in a run, known only while or after it runs."""

    started_at: float
    finished_at: float = 0.0
    epoch: int = 0
    steps: int = 0
    max_steps: int = 0
    batches_per_epoch: int = 0
    num_train_images: int = 0
    num_reg_images: int = 0
    dataset_dirs: dict = field(default_factory=dict)  # {dir: {"n_repeats": r, "img_count": n}}
    tag_frequency: dict = field(default_factory=dict)  # {dir: {tag: count}}
    bucket_info: dict = field(default_factory=dict)
    mixed_precision: str = "no"
    validation_loss: float | None = None  # at this file's step, when the run computes one (train/validation.py)
    session_id: str = field(default_factory=lambda: str(uuid.uuid4().int % 2**31))


def build_metadata(config: TrainConfig, model: ModelInfo, facts: RunFacts) -> dict[str, str]:
    n, o, t, d = config.network, config.optimizer, config.train, config.data
    resolution = (d.resolution, d.resolution)
    network_args = {"conv_dim": str(n.conv_rank), "conv_alpha": str(n.conv_alpha)} if n.conv_rank else {}
    meta = {
        "ss_session_id": facts.session_id,
        "ss_training_started_at": facts.started_at,
        "ss_training_finished_at": facts.finished_at or facts.started_at,
        "ss_output_name": config.output.name,
        "ss_network_module": "networks.lora",
        "ss_network_dim": n.rank,
        "ss_network_alpha": _number(n.alpha),
        "ss_network_args": json.dumps(network_args) if network_args else None,
        "ss_network_dropout": "None",
        "ss_network_train_unet_only": not n.train_text_encoder,
        "ss_learning_rate": o.unet_lr,
        "ss_unet_lr": o.unet_lr,
        "ss_text_encoder_lr": o.text_encoder_lr if n.train_text_encoder else 0.0,
        "ss_optimizer": o.optimizer,
        "ss_lr_scheduler": o.scheduler,
        "ss_lr_warmup_steps": o.warmup_steps,
        "ss_max_grad_norm": o.max_grad_norm,
        "ss_num_train_images": facts.num_train_images,
        "ss_num_reg_images": facts.num_reg_images,
        "ss_num_batches_per_epoch": facts.batches_per_epoch,
        "ss_num_epochs": t.epochs,
        "ss_epoch": facts.epoch,
        "ss_steps": facts.steps,
        "ss_max_train_steps": facts.max_steps,
        "ss_batch_size_per_device": t.batch_size,
        "ss_gradient_accumulation_steps": t.grad_accumulation,
        "ss_gradient_checkpointing": t.gradient_checkpointing,
        "ss_mixed_precision": facts.mixed_precision,
        "ss_full_fp16": False,
        "ss_seed": t.seed,
        "ss_noise_offset": t.noise_offset or "None",
        "ss_min_snr_gamma": t.min_snr_gamma or "None",
        "ss_prior_loss_weight": d.prior_loss_weight,
        "ss_v2": model.family == "sd2",
        "ss_v_parameterization": model.prediction_type == V_PREDICTION,
        "ss_base_model_version": model.base_model_version,
        "ss_sd_model_name": model.name,
        "ss_sd_model_hash": model.legacy_hash,
        "ss_new_sd_model_hash": model.sha256,
        "ss_clip_skip": model.clip_skip,
        "ss_resolution": str(resolution),
        "ss_enable_bucket": d.bucketing,
        "ss_bucket_info": json.dumps(facts.bucket_info),
        "ss_cache_latents": d.cache_latents,
        "ss_keep_tokens": d.keep_tokens,
        "ss_shuffle_caption": d.shuffle_captions,
        "ss_caption_dropout_rate": d.caption_dropout,
        "ss_flip_aug": d.flip,
        "ss_color_aug": False,
        "ss_random_crop": False,
        "ss_dataset_dirs": json.dumps(facts.dataset_dirs),
        "ss_tag_frequency": json.dumps(facts.tag_frequency),
        "ss_training_comment": "trained with LoRA Studio",
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": model.modelspec_architecture,
        "modelspec.implementation": model.modelspec_implementation,
        "modelspec.title": config.output.name,
        "modelspec.resolution": f"{resolution[0]}x{resolution[1]}",
        "modelspec.prediction_type": "v" if model.prediction_type == V_PREDICTION else "epsilon",
        "modelspec.date": datetime.datetime.fromtimestamp(facts.finished_at or facts.started_at).isoformat(),
        "modelspec.trigger_phrase": config.output.trigger_word or None,
        VALIDATION_LOSS_KEY: None if facts.validation_loss is None else f"{facts.validation_loss:.6g}",
    }
    return {key: _text(value) for key, value in meta.items() if value is not None}


def extracted_metadata(name: str, base: ModelInfo, tuned_name: str, rank: int, text_encoder: bool) -> dict[str, str]:
    """A LoRA extracted from two checkpoints: what a loader needs (network, base model) and where it came from."""
    meta = {
        "ss_output_name": name,
        "ss_network_module": "networks.lora",
        "ss_network_dim": rank,
        "ss_network_alpha": rank,
        "ss_network_train_unet_only": not text_encoder,
        "ss_v2": base.family == "sd2",
        "ss_v_parameterization": base.prediction_type == V_PREDICTION,
        "ss_base_model_version": base.base_model_version,
        "ss_sd_model_name": base.name,
        "ss_sd_model_hash": base.legacy_hash,
        "ss_new_sd_model_hash": base.sha256,
        "ss_training_comment": f"extracted (SVD, rank {rank}) from {tuned_name} minus {base.name} with LoRA Studio",
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": base.modelspec_architecture,
        "modelspec.implementation": "diffusers",
        "modelspec.title": name,
        "modelspec.date": datetime.datetime.now().isoformat(),
    }
    return {key: _text(value) for key, value in meta.items()}


def _number(value: float) -> float | int:
    return int(value) if float(value).is_integer() else value


def _text(value) -> str:
    if isinstance(value, bool):
        return "True" if value else "False"  # kohya writes Python's str(bool)
    return str(value)
