"""Load a user's single-file SD1/SD2/SDXL checkpoint (`.safetensors`) into the diffusers backend.

Offline: configs come from `sd_configs` (or, for our own tiny test/benchmark checkpoints,
from the file's metadata), the tokenizer from `clip_tokenizer`. Only safetensors is read.
"""

from __future__ import annotations

import json
from pathlib import Path

import safetensors
import torch

from ..errors import CheckpointError
from ..lora.hashes import file_sha256, webui_legacy_hash
from . import sd_configs
from .adapter import EPSILON, V_PREDICTION, ModelInfo
from .clip_tokenizer import load_clip_tokenizer
from .diffusers_backend import DiffusersAdapter
from .safetensors_stream import write_safetensors
from .ldm_convert import detect_family, diffusers_to_ldm, ldm_to_diffusers, load_converted
from .sdxl_backend import SdxlAdapter
from .sdxl_convert import diffusers_to_sdxl, sdxl_to_diffusers

CONFIG_METADATA_KEY = "lora_studio.configs"  # written only into our own tiny checkpoints


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"The checkpoint {path} does not exist.")
    if path.suffix.lower() != ".safetensors":
        raise CheckpointError(f"{path.name}: only .safetensors checkpoints are loaded (.ckpt files can run "
                              "arbitrary code). Convert it to safetensors first.")
    try:
        with safetensors.safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
    except Exception as error:  # safetensors raises several types for damaged files
        raise CheckpointError(f"{path} is not a readable safetensors checkpoint ({error}).") from error


def load_checkpoint(path: Path, prediction_type: str = "auto", clip_skip: int = 1, tokenizer_dir: str = "",
                    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> DiffusersAdapter:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    path = Path(path)
    state_dict, metadata = read_checkpoint(path)
    family = detect_family(state_dict, path.name)
    configs = _configs(family, metadata)
    if family == "sdxl":
        return _load_sdxl(path, state_dict, configs, prediction_type, tokenizer_dir).to(device, dtype)
    unet_sd, vae_sd, text_sd = ldm_to_diffusers(state_dict, configs["unet"], configs["vae"], configs["text"], family)
    with torch.device("meta"):
        unet = UNet2DConditionModel(**configs["unet"])
        vae = AutoencoderKL(**configs["vae"])
        text_encoder = CLIPTextModel(CLIPTextConfig(**configs["text"]))
    for model, sd, what in ((unet, unet_sd, "UNet"), (vae, vae_sd, "VAE"), (text_encoder, text_sd, "text encoder")):
        model.to_empty(device="cpu")
        _init_buffers(model)
        load_converted(model, sd, what, source=path.name)
        model.eval().requires_grad_(False)
    if prediction_type == "auto":
        prediction_type = V_PREDICTION if family == "sd2" else EPSILON
    info = ModelInfo(family=family, prediction_type=prediction_type, name=path.name,
                     legacy_hash=webui_legacy_hash(path), sha256=file_sha256(path), clip_skip=clip_skip)
    adapter = DiffusersAdapter(unet, vae, text_encoder, load_clip_tokenizer(tokenizer_dir), info,
                               vae_scaling_factor=configs["vae"].get("scaling_factor", 0.18215))
    if CONFIG_METADATA_KEY in metadata:  # a non-standard model: checkpoints made from it carry its configs too
        adapter.configs = configs
    return adapter.to(device, dtype)


def _load_sdxl(path: Path, state_dict: dict, configs: dict, prediction_type: str, tokenizer_dir: str) -> SdxlAdapter:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    big_g_config = CLIPTextConfig(**configs["text_2"])
    unet_sd, vae_sd, clip_l_sd, big_g_sd = sdxl_to_diffusers(state_dict, configs["unet"], configs["vae"],
                                                             big_g_config.num_hidden_layers)
    with torch.device("meta"):
        models = (UNet2DConditionModel(**configs["unet"]), AutoencoderKL(**configs["vae"]),
                  CLIPTextModel(CLIPTextConfig(**configs["text"])), CLIPTextModelWithProjection(big_g_config))
    for model, sd, what in zip(models, (unet_sd, vae_sd, clip_l_sd, big_g_sd),
                               ("UNet", "VAE", "text encoder 1 (CLIP-L)", "text encoder 2 (bigG)")):
        model.to_empty(device="cpu")
        _init_buffers(model)
        load_converted(model, sd, what, source=path.name)
        model.eval().requires_grad_(False)
    if prediction_type == "auto":
        # NoobAI-style v-prediction SDXL files carry an empty `v_pred` key (ComfyUI and Forge read it).
        prediction_type = V_PREDICTION if "v_pred" in state_dict else EPSILON
    info = ModelInfo(family="sdxl", prediction_type=prediction_type, name=path.name,
                     legacy_hash=webui_legacy_hash(path), sha256=file_sha256(path))
    return SdxlAdapter(*models, load_clip_tokenizer(tokenizer_dir), info,
                       vae_scaling_factor=configs["vae"].get("scaling_factor", sd_configs.SDXL_LATENT_SCALE))


def _init_buffers(model: torch.nn.Module) -> None:
    """Buffers not stored in checkpoints (CLIP's position_ids) are rebuilt after to_empty()."""
    for name, buffer in model.named_buffers():
        if name.endswith("position_ids"):
            buffer.copy_(torch.arange(buffer.shape[-1]).expand_as(buffer))


def _configs(family: str, metadata: dict[str, str]) -> dict[str, dict]:
    if CONFIG_METADATA_KEY in metadata:
        return json.loads(metadata[CONFIG_METADATA_KEY])
    text = sd_configs.text_encoder_config(family)
    configs = {"unet": sd_configs.unet_config(family), "vae": sd_configs.vae_config(family),
               "text": text.to_dict() if hasattr(text, "to_dict") else dict(text)}
    if family == "sdxl":
        configs["text_2"] = sd_configs.sdxl_text_encoder_2_config().to_dict()
    return configs


def save_checkpoint(path: Path, unet, vae, text_encoder, family: str, configs: dict | None = None,
                    dtype: torch.dtype | None = None) -> Path:
    """Write diffusers models as one original-layout checkpoint (tests and benchmarks).

    `configs` (unet / vae / text kwargs) are stored in the metadata for non-standard sizes.
    """
    unet_cfg = dict(unet.config)
    vae_cfg = dict(vae.config)
    state = diffusers_to_ldm(unet.state_dict(), vae.state_dict(), text_encoder.state_dict(), unet_cfg, vae_cfg, family)
    state = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous()
             for k, v in state.items()}
    metadata = {CONFIG_METADATA_KEY: json.dumps(configs)} if configs else {}
    write_safetensors(Path(path), state, metadata)
    return Path(path)


def save_sdxl_checkpoint(path: Path, unet, vae, clip_l, big_g, configs: dict | None = None,
                         dtype: torch.dtype | None = None) -> Path:
    """`save_checkpoint` for SDXL: one sgm-layout file, as SDXL checkpoints are downloaded."""
    state = diffusers_to_sdxl(unet.state_dict(), vae.state_dict(), clip_l.state_dict(), big_g.state_dict(),
                              dict(unet.config), dict(vae.config))
    state = {k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v).contiguous()
             for k, v in state.items()}
    metadata = {CONFIG_METADATA_KEY: json.dumps(configs)} if configs else {}
    write_safetensors(Path(path), state, metadata)
    return Path(path)
