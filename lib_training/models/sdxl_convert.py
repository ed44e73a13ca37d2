"""SDXL single-file checkpoints (the sgm layout A1111 loads) <-> diffusers / transformers.

The UNet and VAE use the same module maps as SD 1.x/2.x (`ldm_convert`; the SDXL UNet map adds
`label_emb`). The two text encoders sit under ``conditioner.embedders``:

* ``conditioner.embedders.0.transformer.text_model.*``  CLIP ViT-L, already in transformers names;
* ``conditioner.embedders.1.model.*``  OpenCLIP ViT-bigG (fused q/k/v, ``text_projection`` stored
  as the matrix the pooled output is multiplied by), -> CLIPTextModelWithProjection.
"""

from __future__ import annotations

import math

import torch

from ..errors import CheckpointError
from .ldm_convert import (
    SDXL_PREFIX,
    UNET_PREFIX,
    VAE_PREFIX,
    Config,
    StateDict,
    _invert,
    _is_vae_attention_weight,
    _need,
    _rename_modules,
    _sd1_text_to_diffusers,
    _sd2_text_to_diffusers,
    _sd2_text_to_ldm,
    _section,
    _with_text_model,
    unet_module_map,
    vae_module_map,
)

CLIP_L_PREFIX = SDXL_PREFIX + "0.transformer."
BIG_G_PREFIX = SDXL_PREFIX + "1.model."
_OPENCLIP_PREFIX = "cond_stage_model.model."  # what `_sd2_text_to_ldm` writes; renamed below


def sdxl_to_diffusers(state_dict: StateDict, unet_cfg: Config, vae_cfg: Config, big_g_layers: int = 32
                      ) -> tuple[dict, dict, dict, dict]:
    """(unet, vae, CLIP-L, bigG) diffusers/transformers state dicts; tensors shared, not copied,
    except bigG's split q/k/v and transposed projection."""
    unet = _section(state_dict, UNET_PREFIX)
    vae = {k: v for k, v in _section(state_dict, VAE_PREFIX).items() if not k.startswith("loss.")}
    clip_l, big_g = _section(state_dict, CLIP_L_PREFIX), _section(state_dict, BIG_G_PREFIX)
    for part, prefix in ((unet, UNET_PREFIX), (vae, VAE_PREFIX), (clip_l, CLIP_L_PREFIX), (big_g, BIG_G_PREFIX)):
        if not part:
            raise CheckpointError(f"The SDXL checkpoint has no {prefix}* weights: it is incomplete. "
                                  "Use a full SDXL base checkpoint (UNet, VAE and both text encoders).")
    unet_sd = _rename_modules(unet, unet_module_map(unet_cfg), "UNet", UNET_PREFIX)
    vae_sd = {k: v.reshape(v.shape[0], v.shape[1]) if _is_vae_attention_weight(k) and v.ndim == 4 else v
              for k, v in _rename_modules(vae, vae_module_map(vae_cfg), "VAE", VAE_PREFIX).items()}
    big_g_sd = _sd2_text_to_diffusers(big_g, big_g_layers)
    big_g_sd["text_projection.weight"] = _need(big_g, "text_projection", BIG_G_PREFIX).t().contiguous()
    return unet_sd, vae_sd, _sd1_text_to_diffusers(clip_l), big_g_sd


def diffusers_to_sdxl(unet_sd: StateDict, vae_sd: StateDict, clip_l_sd: StateDict, big_g_sd: StateDict,
                      unet_cfg: Config, vae_cfg: Config) -> dict[str, torch.Tensor]:
    """Inverse of `sdxl_to_diffusers`: one sgm-layout checkpoint state dict (tests, random checkpoints)."""
    out = _rename_modules(unet_sd, _invert(unet_module_map(unet_cfg)), "UNet", dst_prefix=UNET_PREFIX)
    vae = {k: v[:, :, None, None] if _is_vae_attention_weight(k) and v.ndim == 2 else v for k, v in vae_sd.items()}
    out.update(_rename_modules(vae, _invert(vae_module_map(vae_cfg)), "VAE", dst_prefix=VAE_PREFIX))
    clip_l = _with_text_model(clip_l_sd)
    out.update({CLIP_L_PREFIX + k: v for k, v in clip_l.items() if not k.endswith("position_ids")})
    positions = clip_l["text_model.embeddings.position_embedding.weight"].shape[0]
    out[CLIP_L_PREFIX + "text_model.embeddings.position_ids"] = torch.arange(positions, dtype=torch.int64)[None]
    big_g = {k: v for k, v in big_g_sd.items() if not k.endswith("position_ids")}
    projection = big_g.pop("text_projection.weight")
    out.update({BIG_G_PREFIX + k[len(_OPENCLIP_PREFIX):]: v for k, v in _sd2_text_to_ldm(big_g).items()})
    out[BIG_G_PREFIX + "text_projection"] = projection.t().contiguous()
    out[BIG_G_PREFIX + "logit_scale"] = torch.tensor(math.log(1 / 0.07), dtype=projection.dtype)
    return out
