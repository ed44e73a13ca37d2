"""A LoRA from the difference of two models, as kohya's `networks/extract_lora_from_models.py` does.

Why: a full fine-tune gives a 2-4 GB checkpoint; its change to the attention layers, squeezed
into a rank-r LoRA, is a small file usable on top of any compatible checkpoint. Per layer
kohya's `networks.lora` would adapt: delta = tuned - original, SVD, keep the r largest
directions (up = U·S, down = Vᵀ), clamp the outliers at a quantile, alpha = rank (scale 1).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping

import torch

from ..errors import CheckpointError
from ..fileio import validate_output_name
from .io import save_lora
from .metadata import extracted_metadata
from .network import NetworkShape, select_targets

CLAMP_QUANTILE = 0.99  # kohya's default


def low_rank(delta: torch.Tensor, rank: int, clamp_quantile: float = CLAMP_QUANTILE
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """(up, down) with up @ down ≈ delta (2-D, float32), rank capped by the matrix's size."""
    rank = min(rank, *delta.shape)
    u, s, vh = torch.linalg.svd(delta, full_matrices=False)
    up, down = u[:, :rank] * s[:rank], vh[:rank]
    if clamp_quantile < 1:
        values = torch.cat([up.flatten(), down.flatten()]).abs()
        # torch.quantile refuses very large inputs; a strided sample gives the same cut-off.
        step = max(1, values.numel() // 2**24 + 1)
        high = torch.quantile(values[::step], clamp_quantile)
        up, down = up.clamp(-high, high), down.clamp(-high, high)
    return up, down


def extract_lora(model, original: Mapping[int, torch.Tensor], tuned: Callable[[torch.Tensor], torch.Tensor],
                 rank: int, text_encoder: bool, dtype: torch.dtype = torch.float16,
                 clamp_quantile: float = CLAMP_QUANTILE) -> dict[str, torch.Tensor]:
    """kohya-format tensors of a rank-`rank` LoRA taking `original` weights to `tuned` ones.

    `original`: id(weight) -> its value before training; `tuned(weight)` -> its trained value.
    Layers that did not change are left out.
    """
    tensors: dict[str, torch.Tensor] = {}
    for target in select_targets(model, NetworkShape(rank=rank, alpha=rank, text_encoder=text_encoder)):
        weight = target.module.weight
        before = original.get(id(weight))
        if before is None:
            continue
        delta = tuned(weight).detach().to("cpu", torch.float32) - before.to(torch.float32)
        if not delta.any():
            continue
        up, down = low_rank(delta.reshape(delta.shape[0], -1), rank, clamp_quantile)
        if delta.dim() == 4:  # the 1x1 convs (proj_in / proj_out of SD1)
            up, down = up[:, :, None, None], down.reshape(down.shape[0], *delta.shape[1:])
        name = target.kohya_name
        tensors[f"{name}.lora_up.weight"] = up.to(dtype).contiguous()
        tensors[f"{name}.lora_down.weight"] = down.to(dtype).contiguous()
        tensors[f"{name}.alpha"] = torch.tensor(float(up.shape[1]), dtype=dtype)
    return tensors


def extract_from_files(base: Path, tuned: Path, rank: int, out: Path, text_encoder: bool = True,
                       tokenizer_dir: str = "") -> Path:
    """`out` (.safetensors): the LoRA taking checkpoint `base` to `tuned` (e.g. the epoch picked by eye)."""
    from ..models.single_file import load_checkpoint

    base_model = load_checkpoint(Path(base), tokenizer_dir=tokenizer_dir)
    tuned_model = load_checkpoint(Path(tuned), tokenizer_dir=tokenizer_dir)
    if tuned_model.info.family != base_model.info.family:
        raise CheckpointError(f"{Path(tuned).name} is {tuned_model.info.family} and {Path(base).name} is "
                              f"{base_model.info.family}: a LoRA only goes between models of one family.")
    tuned_by_id = {}
    for base_part, tuned_part in ((base_model.unet(), tuned_model.unet()),
                                  (base_model.text_encoder(), tuned_model.text_encoder())):
        tuned_params = dict(tuned_part.named_parameters())
        for name, weight in base_part.named_parameters():
            tuned_by_id[id(weight)] = tuned_params[name]
    original = {id(w): w.detach() for part in (base_model.unet(), base_model.text_encoder()) for w in part.parameters()}
    tensors = extract_lora(base_model, original, lambda w: tuned_by_id[id(w)], rank, text_encoder)
    if not tensors:
        raise CheckpointError(f"{Path(tuned).name} and {Path(base).name} have the same weights in every layer a "
                              "LoRA covers: there is nothing to extract.")
    name = validate_output_name(Path(out).stem)
    meta = extracted_metadata(name, base_model.info, Path(tuned).name, rank, text_encoder)
    return save_lora(Path(out), tensors, meta)
