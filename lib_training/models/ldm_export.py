"""Write a fine-tuned model as one checkpoint in the original (ldm) layout, the file A1111 loads.

Whatever the backend, the adapter gives the whole model in that layout
(`original_layout_state_dict`): the WebUI's model already is ldm, the diffusers backend converts
back with `ldm_convert`. The file goes through a temp name and a rename, so the WebUI's
checkpoint list never shows half a file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Mapping

import torch

from ..config import TrainConfig
from ..errors import CheckpointError
from ..lora.metadata import RunFacts, build_metadata
from .adapter import ModelInfo
from .safetensors_stream import write_safetensors
from .single_file import CONFIG_METADATA_KEY

# Keys of the LoRA metadata that describe a network, meaningless for a checkpoint.
_NETWORK_KEYS = ("ss_network_module", "ss_network_dim", "ss_network_alpha", "ss_network_args",
                 "ss_network_dropout", "ss_network_train_unet_only")


def checkpoint_metadata(config: TrainConfig, model: ModelInfo, facts: RunFacts) -> dict[str, str]:
    """The LoRA metadata (what it was trained from and how) without the network keys, plus the method."""
    meta = {k: v for k, v in build_metadata(config, model, facts).items() if k not in _NETWORK_KEYS}
    meta["modelspec.architecture"] = model.modelspec_architecture.removesuffix("/lora")
    meta["ss_training_comment"] = "full fine-tune (DreamBooth) with LoRA Studio"
    meta["lora_studio.method"] = "full"
    meta["lora_studio.trained_text_encoder"] = str(config.network.train_text_encoder
                                                   and config.optimizer.text_encoder_lr > 0)
    return meta


def save_ldm_checkpoint(path: Path, model, dtype: torch.dtype, metadata: Mapping[str, str],
                        value: Callable[[torch.Tensor], torch.Tensor] = lambda t: t) -> Path:
    """The model (`value` picks each weight's trained value) as `<path>`, floats in `dtype`, on the CPU.

    The diffusion schedule (ldm's top-level buffers: `alphas_cumprod`, `betas`, ...) stays fp32, as
    A1111 keeps `alphas_cumprod` for a half model: rounded to fp16 it changes every image of the
    model that loads the file — and of the user's own checkpoint after switching back to it, since
    A1111 keeps buffers a file does not have (a random-weight or pruned file has no schedule).
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise CheckpointError(f"{path}: checkpoints are always written as .safetensors.")
    state = {k: _for_file(v, dtype if "." in k else torch.float32)
             for k, v in model.original_layout_state_dict(value).items()}
    meta = {str(k): str(v) for k, v in metadata.items()}
    configs = getattr(model, "configs", None)
    if configs:  # a non-standard size (tests, the toy world): our loader needs its shape
        meta[CONFIG_METADATA_KEY] = json.dumps(configs)
    try:
        write_safetensors(path, state, meta)
    except OSError as error:
        raise CheckpointError(f"Could not write {path}: {error.strerror or error}. Free disk space or choose "
                              "another folder; no partial file was left.") from error
    return path


def _for_file(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    tensor = tensor.detach()
    if tensor.is_floating_point():
        tensor = tensor.to(dtype)
    # A fresh CPU tensor: never one that shares storage with another key or with the live model.
    return tensor.to("cpu", copy=True).contiguous()
