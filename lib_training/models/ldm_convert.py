"""Single-file Stable Diffusion checkpoints (the layout A1111 loads) <-> diffusers.

The original layout keeps the three models under fixed prefixes:

* ``model.diffusion_model.*``  the UNet (ldm ``UNetModel``)
* ``first_stage_model.*``      the VAE (ldm ``AutoencoderKL``)
* ``cond_stage_model.transformer.text_model.*`` (SD1, a transformers CLIPTextModel) or
  ``cond_stage_model.model.*`` (SD2, an OpenCLIP text tower)

UNet and VAE are converted through *module path* maps built from the diffusers config,
so tiny test configs work as well as SD1.5. The UNet map is also what the WebUI backend
uses to give A1111's ldm modules their diffusers names.

Text-encoder state dicts use the keys of the diffusers repositories
(``text_model.encoder.layers.0...``); `load_converted` fits them to whichever layout
the installed transformers uses (5.x drops the ``text_model.`` level).
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import torch
from torch import nn

from lib_training.errors import CheckpointError
from lib_training.models.sd_configs import check_family

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
SD1_TEXT_PREFIX = "cond_stage_model.transformer."
SD2_TEXT_PREFIX = "cond_stage_model.model."
SDXL_PREFIX = "conditioner.embedders."
TEXT_MODEL = "text_model."

Config = Mapping[str, Any]
StateDict = Mapping[str, torch.Tensor]

_SUPPORTED = "Use a Stable Diffusion 1.x, 2.x or SDXL checkpoint (.safetensors)."

# --------------------------------------------------------------------------- UNet map

# ldm ResBlock -> diffusers ResnetBlock2D (skip_connection handled apart: it exists
# only when the channel count changes).
_RESNET_PARTS = (
    ("in_layers.0", "norm1"),
    ("in_layers.2", "conv1"),
    ("emb_layers.1", "time_emb_proj"),
    ("out_layers.0", "norm2"),
    ("out_layers.3", "conv2"),
)
# Inside a transformer block ldm and diffusers use the same names; the containers are
# listed too so that the WebUI backend can name them.
_ATTENTION_PARTS = ("", ".to_q", ".to_k", ".to_v", ".to_out", ".to_out.0")
_FEED_FORWARD_PARTS = (".ff", ".ff.net", ".ff.net.0", ".ff.net.0.proj", ".ff.net.2")
_BLOCK_NORMS = (".norm1", ".norm2", ".norm3")


def _per_block(value: int | Iterable[int], count: int, name: str) -> list[int]:
    """diffusers allows an int or one value per block; return one value per block."""
    if isinstance(value, int):
        return [value] * count
    values = [int(v) for v in value]
    if len(values) != count:
        raise ValueError(f"UNet config: {name} has {len(values)} values for {count} blocks")
    return values


def _add_resnet(out: dict[str, str], ldm: str, diffusers: str, in_ch: int, out_ch: int) -> None:
    out[ldm] = diffusers
    for ldm_part, diffusers_part in _RESNET_PARTS:
        out[f"{ldm}.{ldm_part}"] = f"{diffusers}.{diffusers_part}"
    if in_ch != out_ch:  # both sides add a 1x1 conv only when the channel count changes
        out[f"{ldm}.skip_connection"] = f"{diffusers}.conv_shortcut"


def _add_transformer(out: dict[str, str], ldm: str, diffusers: str, depth: int) -> None:
    """ldm SpatialTransformer -> diffusers Transformer2DModel (same inner names)."""
    for part in ("", ".norm", ".proj_in", ".proj_out", ".transformer_blocks"):
        out[ldm + part] = diffusers + part
    for k in range(depth):
        block = f".transformer_blocks.{k}"
        parts = [""] + list(_BLOCK_NORMS) + list(_FEED_FORWARD_PARTS)
        parts += [f".{attn}{p}" for attn in ("attn1", "attn2") for p in _ATTENTION_PARTS]
        for part in parts:
            out[ldm + block + part] = diffusers + block + part


def _has_attention(block_type: str, kind: str) -> bool:
    plain, cross = (f"{kind}Block2D", f"CrossAttn{kind}Block2D")
    if block_type not in (plain, cross):
        raise ValueError(f"UNet config: block type {block_type!r} has no ldm equivalent")
    return block_type == cross


def unet_module_map(config: Config) -> dict[str, str]:
    """ldm UNetModel module path -> diffusers UNet2DConditionModel module path.

    Covers every module that owns parameters, plus the ResBlock / SpatialTransformer /
    transformer-block / attention containers that both sides have.
    """
    channels = [int(c) for c in config["block_out_channels"]]
    n = len(channels)
    down_attn = [_has_attention(t, "Down") for t in config["down_block_types"]]
    up_attn = [_has_attention(t, "Up") for t in config["up_block_types"]]
    if len(down_attn) != n or len(up_attn) != n:
        raise ValueError("UNet config: block type lists must match block_out_channels")
    if up_attn != down_attn[::-1]:
        raise ValueError("UNet config: ldm needs the up blocks to mirror the down blocks")
    if config.get("mid_block_type", "UNetMidBlock2DCrossAttn") != "UNetMidBlock2DCrossAttn":
        raise ValueError("UNet config: ldm's middle block is always UNetMidBlock2DCrossAttn")
    layers = _per_block(config["layers_per_block"], n, "layers_per_block")
    depths = _per_block(config.get("transformer_layers_per_block", 1), n, "transformer_layers_per_block")
    reverse_depths = config.get("reverse_transformer_layers_per_block")
    up_depths = _per_block(reverse_depths, n, "reverse_transformer_layers_per_block") if reverse_depths is not None else depths[::-1]

    out: dict[str, str] = {
        "time_embed": "time_embedding",
        "time_embed.0": "time_embedding.linear_1",
        "time_embed.2": "time_embedding.linear_2",
        "input_blocks.0.0": "conv_in",
        "out.0": "conv_norm_out",
        "out.2": "conv_out",
    }
    if config.get("addition_embed_type") == "text_time":  # SDXL: pooled text + size conditioning
        out.update({"label_emb": "add_embedding", "label_emb.0.0": "add_embedding.linear_1",
                    "label_emb.0.2": "add_embedding.linear_2"})
    _add_down_blocks(out, channels, layers, down_attn, depths)
    _add_res_attn_res(out, "middle_block", "mid_block", channels[-1], depths[-1])
    _add_up_blocks(out, channels, layers[::-1], up_attn, up_depths)
    return out


def _add_down_blocks(
    out: dict[str, str], channels: list[int], layers: list[int], attn: list[bool], depths: list[int]
) -> None:
    index = 0  # input_blocks.0 is conv_in
    in_ch = channels[0]
    for b, out_ch in enumerate(channels):
        for l in range(layers[b]):
            index += 1
            _add_resnet(out, f"input_blocks.{index}.0", f"down_blocks.{b}.resnets.{l}", in_ch, out_ch)
            in_ch = out_ch
            if attn[b]:
                _add_transformer(out, f"input_blocks.{index}.1", f"down_blocks.{b}.attentions.{l}", depths[b])
        if b != len(channels) - 1:
            index += 1
            out[f"input_blocks.{index}.0"] = f"down_blocks.{b}.downsamplers.0"
            out[f"input_blocks.{index}.0.op"] = f"down_blocks.{b}.downsamplers.0.conv"


def _add_res_attn_res(out: dict[str, str], ldm: str, diffusers: str, ch: int, depth: int) -> None:
    _add_resnet(out, f"{ldm}.0", f"{diffusers}.resnets.0", ch, ch)
    _add_transformer(out, f"{ldm}.1", f"{diffusers}.attentions.0", depth)
    _add_resnet(out, f"{ldm}.2", f"{diffusers}.resnets.1", ch, ch)


def _add_up_blocks(
    out: dict[str, str], channels: list[int], layers: list[int], attn: list[bool], depths: list[int]
) -> None:
    reversed_ch = channels[::-1]
    n = len(channels)
    index = 0
    for j, out_ch in enumerate(reversed_ch):
        # Channel bookkeeping as in diffusers' up blocks: each resnet also eats a skip.
        prev_ch = reversed_ch[max(j - 1, 0)]
        skip_in_ch = reversed_ch[min(j + 1, n - 1)]
        count = layers[j] + 1
        for i in range(count):
            res_in = prev_ch if i == 0 else out_ch
            skip = skip_in_ch if i == count - 1 else out_ch
            _add_resnet(out, f"output_blocks.{index}.0", f"up_blocks.{j}.resnets.{i}", res_in + skip, out_ch)
            if attn[j]:
                _add_transformer(out, f"output_blocks.{index}.1", f"up_blocks.{j}.attentions.{i}", depths[j])
            if j != n - 1 and i == count - 1:
                slot = 2 if attn[j] else 1  # the Upsample comes after the optional attention
                out[f"output_blocks.{index}.{slot}"] = f"up_blocks.{j}.upsamplers.0"
                out[f"output_blocks.{index}.{slot}.conv"] = f"up_blocks.{j}.upsamplers.0.conv"
            index += 1


# ---------------------------------------------------------------------------- VAE map

_VAE_RESNET_PARTS = (("norm1", "norm1"), ("conv1", "conv1"), ("norm2", "norm2"), ("conv2", "conv2"))
_VAE_ATTENTION_PARTS = (("norm", "group_norm"), ("q", "to_q"), ("k", "to_k"), ("v", "to_v"), ("proj_out", "to_out.0"))


def _add_vae_resnet(out: dict[str, str], ldm: str, diffusers: str, in_ch: int, out_ch: int) -> None:
    out[ldm] = diffusers
    for ldm_part, diffusers_part in _VAE_RESNET_PARTS:
        out[f"{ldm}.{ldm_part}"] = f"{diffusers}.{diffusers_part}"
    if in_ch != out_ch:
        out[f"{ldm}.nin_shortcut"] = f"{diffusers}.conv_shortcut"


def _add_vae_mid(out: dict[str, str], side: str, ch: int, attention: bool) -> None:
    _add_vae_resnet(out, f"{side}.mid.block_1", f"{side}.mid_block.resnets.0", ch, ch)
    _add_vae_resnet(out, f"{side}.mid.block_2", f"{side}.mid_block.resnets.1", ch, ch)
    if attention:
        out[f"{side}.mid.attn_1"] = f"{side}.mid_block.attentions.0"
        for ldm_part, diffusers_part in _VAE_ATTENTION_PARTS:
            out[f"{side}.mid.attn_1.{ldm_part}"] = f"{side}.mid_block.attentions.0.{diffusers_part}"


def vae_module_map(config: Config) -> dict[str, str]:
    """ldm AutoencoderKL module path -> diffusers AutoencoderKL module path."""
    channels = [int(c) for c in config["block_out_channels"]]
    n = len(channels)
    layers = int(config.get("layers_per_block", 1))
    attention = bool(config.get("mid_block_add_attention", True))
    out: dict[str, str] = {}
    for side in ("encoder", "decoder"):
        out[f"{side}.conv_in"] = f"{side}.conv_in"
        out[f"{side}.norm_out"] = f"{side}.conv_norm_out"
        out[f"{side}.conv_out"] = f"{side}.conv_out"
        _add_vae_mid(out, side, channels[-1], attention)
    if config.get("use_quant_conv", True):
        out["quant_conv"] = "quant_conv"
    if config.get("use_post_quant_conv", True):
        out["post_quant_conv"] = "post_quant_conv"

    in_ch = channels[0]
    for i, out_ch in enumerate(channels):
        for j in range(layers):
            _add_vae_resnet(out, f"encoder.down.{i}.block.{j}", f"encoder.down_blocks.{i}.resnets.{j}", in_ch, out_ch)
            in_ch = out_ch
        if i != n - 1:
            out[f"encoder.down.{i}.downsample.conv"] = f"encoder.down_blocks.{i}.downsamplers.0.conv"

    in_ch = channels[-1]
    for k, out_ch in enumerate(channels[::-1]):
        level = n - 1 - k  # ldm numbers decoder levels by resolution, diffusers by order
        for j in range(layers + 1):
            _add_vae_resnet(out, f"decoder.up.{level}.block.{j}", f"decoder.up_blocks.{k}.resnets.{j}", in_ch, out_ch)
            in_ch = out_ch
        if level != 0:
            out[f"decoder.up.{level}.upsample.conv"] = f"decoder.up_blocks.{k}.upsamplers.0.conv"
    return out


def _is_vae_attention_weight(diffusers_key: str) -> bool:
    """ldm stores these as 1x1 convs (C, C, 1, 1), diffusers as linears (C, C)."""
    if ".mid_block.attentions.0." not in diffusers_key or not diffusers_key.endswith(".weight"):
        return False
    return diffusers_key.rsplit(".", 2)[-2] in ("to_q", "to_k", "to_v") or diffusers_key.endswith("to_out.0.weight")


# ------------------------------------------------------------------ key renaming core


def _section(state_dict: StateDict, prefix: str) -> dict[str, torch.Tensor]:
    """The entries under `prefix`, with the prefix stripped."""
    return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}


def _rename_modules(
    state_dict: StateDict, module_map: Mapping[str, str], what: str, src_prefix: str = "", dst_prefix: str = ""
) -> dict[str, torch.Tensor]:
    """Map each key's module path through `module_map`, keeping the parameter name."""
    out: dict[str, torch.Tensor] = {}
    unknown: list[str] = []
    for key, tensor in state_dict.items():
        module, _, param = key.rpartition(".")
        target = module_map.get(module)
        if target is None:
            unknown.append(src_prefix + key)
            continue
        out[f"{dst_prefix}{target}.{param}"] = tensor
    if unknown:
        raise CheckpointError(
            f"{what}: {len(unknown)} weights do not fit the expected architecture "
            f"(e.g. {', '.join(unknown[:3])}). The file may be an inpainting, depth, unCLIP "
            f"or other variant, or a different family than the one selected. {_SUPPORTED}"
        )
    return out


def _invert(module_map: Mapping[str, str]) -> dict[str, str]:
    inverse = {v: k for k, v in module_map.items()}
    if len(inverse) != len(module_map):  # would silently drop weights
        raise AssertionError("module map is not one-to-one")
    return inverse


def _need(section: Mapping[str, torch.Tensor], key: str, prefix: str) -> torch.Tensor:
    if key not in section:
        raise CheckpointError(
            f"Text encoder: key {prefix + key!r} is missing; the checkpoint is incomplete or "
            f"not of the selected family. {_SUPPORTED}"
        )
    return section[key]


# ----------------------------------------------------------------------- text encoder

# OpenCLIP residual block -> CLIPEncoderLayer, for the parts that are a plain rename.
_OPENCLIP_LAYER_PARTS = (
    ("ln_1", "layer_norm1"),
    ("ln_2", "layer_norm2"),
    ("attn.out_proj", "self_attn.out_proj"),
    ("mlp.c_fc", "mlp.fc1"),
    ("mlp.c_proj", "mlp.fc2"),
)
_OPENCLIP_TOP_LEVEL = (
    ("token_embedding.weight", "text_model.embeddings.token_embedding.weight"),
    ("positional_embedding", "text_model.embeddings.position_embedding.weight"),
    ("ln_final.weight", "text_model.final_layer_norm.weight"),
    ("ln_final.bias", "text_model.final_layer_norm.bias"),
)


def _with_text_model(state_dict: StateDict) -> dict[str, torch.Tensor]:
    """Add the ``text_model.`` level where missing (old transformers / transformers 5)."""
    return {k if k.startswith(TEXT_MODEL) else TEXT_MODEL + k: v for k, v in state_dict.items()}


def _sd1_text_to_diffusers(section: StateDict) -> dict[str, torch.Tensor]:
    # position_ids is a constant buffer that transformers versions keep or drop from the
    # state dict; never carry it (load_converted tolerates its absence).
    return {k: v for k, v in _with_text_model(section).items() if not k.endswith("position_ids")}


def _sd2_text_to_diffusers(section: StateDict, num_layers: int) -> dict[str, torch.Tensor]:
    """OpenCLIP text tower -> CLIPTextModel with its first `num_layers` blocks."""
    p = SD2_TEXT_PREFIX
    out = {dst: _need(section, src, p) for src, dst in _OPENCLIP_TOP_LEVEL}
    for i in range(num_layers):
        src, dst = f"transformer.resblocks.{i}.", f"text_model.encoder.layers.{i}."
        for name in ("weight", "bias"):
            # nn.MultiheadAttention packs q, k, v row-wise; clone so that the three
            # tensors do not share storage (safetensors refuses to save shared ones).
            q, k, v = _need(section, f"{src}attn.in_proj_{name}", p).chunk(3, dim=0)
            for proj, tensor in (("q_proj", q), ("k_proj", k), ("v_proj", v)):
                out[f"{dst}self_attn.{proj}.{name}"] = tensor.clone()
            for ldm_part, diffusers_part in _OPENCLIP_LAYER_PARTS:
                out[f"{dst}{diffusers_part}.{name}"] = _need(section, f"{src}{ldm_part}.{name}", p)
    # Later resblocks (SD2 skips the last one), text_projection and logit_scale are unused.
    return out


def _sd1_text_to_ldm(text_sd: StateDict) -> dict[str, torch.Tensor]:
    out = {SD1_TEXT_PREFIX + k: v for k, v in _with_text_model(text_sd).items()}
    ids_key = SD1_TEXT_PREFIX + "text_model.embeddings.position_ids"
    if ids_key not in out:  # real SD1 files carry it; write it like they do
        positions = out[SD1_TEXT_PREFIX + "text_model.embeddings.position_embedding.weight"].shape[0]
        out[ids_key] = torch.arange(positions, dtype=torch.int64)[None]
    return out


def _sd2_text_to_ldm(text_sd: StateDict) -> dict[str, torch.Tensor]:
    sd = _with_text_model(text_sd)
    out = {SD2_TEXT_PREFIX + src: sd[dst] for src, dst in _OPENCLIP_TOP_LEVEL}
    num_layers = len({k.split(".")[3] for k in sd if k.startswith("text_model.encoder.layers.")})
    for i in range(num_layers):
        src, dst = f"{SD2_TEXT_PREFIX}transformer.resblocks.{i}.", f"text_model.encoder.layers.{i}."
        for name in ("weight", "bias"):
            qkv = [sd[f"{dst}self_attn.{proj}.{name}"] for proj in ("q_proj", "k_proj", "v_proj")]
            out[f"{src}attn.in_proj_{name}"] = torch.cat(qkv, dim=0)
            for ldm_part, diffusers_part in _OPENCLIP_LAYER_PARTS:
                out[f"{src}{ldm_part}.{name}"] = sd[f"{dst}{diffusers_part}.{name}"]
    return out


# --------------------------------------------------------------------- family & top


def detect_family(state_dict: StateDict, name: str = "the checkpoint") -> str:
    """"sd1", "sd2" or "sdxl" from the keys of a single-file checkpoint; CheckpointError otherwise."""
    keys = list(state_dict.keys())
    if any(k.startswith(SDXL_PREFIX) for k in keys):
        return _sdxl_base_or_refused(state_dict, name)
    if not any(k.startswith(UNET_PREFIX) for k in keys):
        raise CheckpointError(f"{name} is not a Stable Diffusion checkpoint: {_why_not_sd(keys)} {_SUPPORTED}")
    if any(k.startswith(SD2_TEXT_PREFIX) for k in keys):
        return "sd2"
    if any(k.startswith(SD1_TEXT_PREFIX) for k in keys):
        return "sd1"
    # No text encoder inside: fall back on the cross-attention context width.
    context = next((v.shape[-1] for k, v in state_dict.items() if k.endswith("attn2.to_k.weight")), None)
    if context in (768, 1024):
        return "sd1" if context == 768 else "sd2"
    raise CheckpointError(
        f"{name}: cannot tell SD1 from SD2 (no text encoder and cross-attention width {context}). {_SUPPORTED}"
    )


def _sdxl_base_or_refused(state_dict: StateDict, name: str) -> str:
    """SDXL base-architecture checkpoints (base, Pony, Illustrious, NoobAI...) -> "sdxl"; the refiner
    (one text encoder, bigG only) and SDXL inpainting (9 UNet input channels) are refused."""
    if not any(k.startswith(SDXL_PREFIX + "0.transformer.") for k in state_dict):
        raise CheckpointError(f"{name} is an SDXL refiner (it has no CLIP-L text encoder); LoRA Studio trains "
                              "SDXL base-architecture models. Pick an SDXL base checkpoint.")
    conv_in = state_dict.get(UNET_PREFIX + "input_blocks.0.0.weight")
    if conv_in is not None and conv_in.shape[1] != 4:
        raise CheckpointError(f"{name} is an SDXL inpainting (or other extra-input) model ({conv_in.shape[1]} "
                              "UNet input channels); pick a plain text-to-image SDXL checkpoint.")
    return "sdxl"


def _why_not_sd(keys: list[str]) -> str:
    """A hint about what the file is, for the error message."""
    if "state_dict" in keys:
        return "its weights are nested under 'state_dict' and must be unwrapped first."
    if any(k.startswith(("lora_unet_", "lora_te", "lora_te1_")) or ".lora_" in k for k in keys):
        return "it looks like a LoRA/LyCORIS file, not a base model."
    if any(k.startswith(("down_blocks.", "conv_in.", "encoder.down_blocks.")) for k in keys):
        return "it looks like a single diffusers model component, not a full single-file checkpoint."
    return "it has no 'model.diffusion_model.*' (UNet) weights."


def ldm_to_diffusers(
    state_dict: StateDict, unet_cfg: Config, vae_cfg: Config, text_cfg: Any, family: str
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Split a single-file checkpoint into (unet, vae, text encoder) diffusers state dicts.

    Tensors are shared with `state_dict`, not copied (except SD2's split q/k/v).
    Keys outside the three models (EMA copies, schedule buffers, VAE loss) are ignored.
    """
    check_family(family)
    unet = _section(state_dict, UNET_PREFIX)
    vae = {k: v for k, v in _section(state_dict, VAE_PREFIX).items() if not k.startswith("loss.")}
    text_prefix = SD1_TEXT_PREFIX if family == "sd1" else SD2_TEXT_PREFIX
    text = _section(state_dict, text_prefix)
    for part, prefix, what in ((unet, UNET_PREFIX, "UNet"), (vae, VAE_PREFIX, "VAE"), (text, text_prefix, "text encoder")):
        if not part:
            raise CheckpointError(
                f"The checkpoint has no {what} weights ({prefix}*): it is not a full {family} "
                f"checkpoint (or the family is wrong). {_SUPPORTED}"
            )

    unet_sd = _rename_modules(unet, unet_module_map(unet_cfg), "UNet", UNET_PREFIX)
    vae_sd = {
        k: v.reshape(v.shape[0], v.shape[1]) if _is_vae_attention_weight(k) and v.ndim == 4 else v
        for k, v in _rename_modules(vae, vae_module_map(vae_cfg), "VAE", VAE_PREFIX).items()
    }
    if family == "sd1":
        text_sd = _sd1_text_to_diffusers(text)
    else:
        num_layers = getattr(text_cfg, "num_hidden_layers", None) or text_cfg["num_hidden_layers"]
        text_sd = _sd2_text_to_diffusers(text, int(num_layers))
    return unet_sd, vae_sd, text_sd


def diffusers_to_ldm(
    unet_sd: StateDict, vae_sd: StateDict, text_sd: StateDict, unet_cfg: Config, vae_cfg: Config, family: str
) -> dict[str, torch.Tensor]:
    """Inverse of `ldm_to_diffusers`: write one single-file checkpoint state dict.

    `text_sd` may come from either transformers layout (with or without ``text_model.``).
    """
    check_family(family)
    out = _rename_modules(unet_sd, _invert(unet_module_map(unet_cfg)), "UNet", dst_prefix=UNET_PREFIX)
    vae = {k: v[:, :, None, None] if _is_vae_attention_weight(k) and v.ndim == 2 else v for k, v in vae_sd.items()}
    out.update(_rename_modules(vae, _invert(vae_module_map(vae_cfg)), "VAE", dst_prefix=VAE_PREFIX))
    out.update(_sd1_text_to_ldm(text_sd) if family == "sd1" else _sd2_text_to_ldm(text_sd))
    return out


# --------------------------------------------------------------------------- loading


def _fit_text_model_level(model_keys: Iterable[str], state_dict: StateDict) -> dict[str, torch.Tensor]:
    """Add or strip ``text_model.`` so the keys match the model (transformers 4 vs 5)."""
    model_has = any(k.startswith(TEXT_MODEL) for k in model_keys)
    sd_has = any(k.startswith(TEXT_MODEL) for k in state_dict)
    if model_has == sd_has:
        return dict(state_dict)
    if model_has:
        return _with_text_model(state_dict)
    return {k[len(TEXT_MODEL):] if k.startswith(TEXT_MODEL) else k: v for k, v in state_dict.items()}


def _optional(key: str) -> bool:
    # A buffer that some transformers versions save and others do not.
    return key.endswith("embeddings.position_ids")


def load_converted(model: nn.Module, state_dict: StateDict, what: str, source: str = "the checkpoint") -> None:
    """Load a converted state dict, strictly except for position_ids.

    Raises CheckpointError listing missing / unexpected / wrongly shaped weights.
    """
    expected = model.state_dict()
    sd = _fit_text_model_level(expected.keys(), state_dict)
    missing = [k for k in expected if k not in sd and not _optional(k)]
    unexpected = [k for k in sd if k not in expected and not _optional(k)]
    wrong_shape = [
        f"{k} {tuple(sd[k].shape)} vs {tuple(expected[k].shape)}"
        for k in sd
        if k in expected and sd[k].shape != expected[k].shape
    ]
    problems = [
        f"{label} {len(keys)} (e.g. {', '.join(keys[:3])})"
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape))
        if keys
    ]
    if problems:
        raise CheckpointError(
            f"{what} weights from {source} do not fit the model: {'; '.join(problems)}. "
            f"Check the model family; inpainting and other variants are not supported. {_SUPPORTED}"
        )
    model.load_state_dict({k: v for k, v in sd.items() if k in expected}, strict=False)
