"""The full fine-tune (classic DreamBooth): train the model's own weights, then put them back.

The loop trains "a set of parameters": a LoRA network, or this. This module decides which
weights are trained (every UNet weight, and the text encoder's when asked), keeps their
original values, keeps fp32 master copies when the model is held in half precision, and puts
every weight back bit for bit whatever ends the run (finish, cancel, NaN, out of memory, error).

Where the originals are kept: a copy in CPU RAM of the trained tensors only, in their own dtype
(SD1.5's UNet: 1.7 GB in fp16, 3.4 GB in fp32). A memory-mapped checkpoint file would cost no RAM,
but the model in memory is not always the file (A1111 casts to fp16, may have a VAE or weights
applied); only a copy of what is in memory gives back exactly what was there.
"""

from __future__ import annotations

import dataclasses
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Mapping

import torch
from torch import nn

from ..config import TrainConfig
from ..errors import CheckpointError, SettingsError
from ..fileio import path_inside
from ..lora.extract import extract_lora
from ..lora.io import save_lora
from ..lora.metadata import RunFacts, build_metadata
from ..models.ldm_export import checkpoint_metadata, save_ldm_checkpoint

METHOD = "full"
UNET_KEY = "unet."
TEXT_ENCODER_KEY = "te."


class FullFineTune:
    """The trained weights of a model: names, masters, originals. Duck-types the loop's LoRA network."""

    def __init__(self, model, train_text_encoder: bool):
        self.model = model
        self.named = [(UNET_KEY + n, p) for n, p in model.unet().named_parameters()]
        if train_text_encoder:
            self.named += [(TEXT_ENCODER_KEY + n, p) for n, p in model.text_encoder().named_parameters()]
        self._masters: dict[str, torch.Tensor] = {}
        self._by_id: dict[int, torch.Tensor] = {}
        self._originals: list[tuple[nn.Parameter, torch.Tensor]] = []

    # ---- the run ----------------------------------------------------------------------------
    @contextmanager
    def attached(self) -> Iterator["FullFineTune"]:
        """Originals kept, weights trainable (fp32 masters for half weights); everything put back on exit."""
        hooks = []
        self._originals = [(p, p.detach().to("cpu", copy=True)) for _, p in self.named]
        try:
            for name, p in self.named:
                p.requires_grad_(True)
                if p.dtype == torch.float32:
                    self._masters[name] = p  # the weight is its own master
                else:
                    master = nn.Parameter(p.detach().float())
                    self._masters[name] = master
                    hooks.append(p.register_post_accumulate_grad_hook(_grad_into(master)))
            self._by_id = {id(p): self._masters[n] for n, p in self.named}
            yield self
        finally:
            for hook in hooks:
                hook.remove()
            self.restore()

    def restore(self) -> None:
        """Every trained weight back to the value it had before the run, bit for bit."""
        with torch.no_grad():
            for p, original in self._originals:
                p.copy_(original)
                p.grad = None
        self._originals, self._masters, self._by_id = [], {}, {}

    def follow(self, optimizer: torch.optim.Optimizer) -> None:
        """After each optimizer step, copy the fp32 masters into the half-precision weights."""
        if any(self._masters[name] is not p for name, p in self.named):
            optimizer.register_step_post_hook(lambda *_: self.sync())

    @torch.no_grad()
    def sync(self) -> None:
        for name, p in self.named:
            master = self._masters[name]
            if master is not p:
                p.copy_(master)

    # ---- what the loop asks -----------------------------------------------------------------
    def unet_parameters(self) -> list[nn.Parameter]:
        return [m for n, m in self._masters.items() if n.startswith(UNET_KEY)]

    def text_encoder_parameters(self) -> list[nn.Parameter]:
        return [m for n, m in self._masters.items() if n.startswith(TEXT_ENCODER_KEY)]

    def value_of(self, tensor: torch.Tensor) -> torch.Tensor:
        """The trained (master) value for a model weight, the tensor itself for anything untrained."""
        return self._by_id.get(id(tensor), tensor)

    def originals(self) -> dict[int, torch.Tensor]:
        """id(weight) -> its value before the run (on the CPU)."""
        return {id(p): original for p, original in self._originals}

    def all_finite(self) -> bool:
        return all(bool(torch.isfinite(m).all()) for m in self._masters.values())

    def kohya_state_dict(self, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """The trained weights by name (the loop's name for "the trained tensors"), for the resume state."""
        return {n: m.detach().to("cpu", dtype=dtype or m.dtype, copy=True).contiguous()
                for n, m in self._masters.items()}

    def load_kohya_state_dict(self, tensors: Mapping[str, torch.Tensor], source: str = "the saved run") -> None:
        """Put saved trained weights back in (resume); every name present, shapes equal."""
        missing = sorted(self._masters.keys() - tensors.keys())
        unexpected = sorted(tensors.keys() - self._masters.keys())
        if missing or unexpected:
            raise CheckpointError(f"{source} does not match this model's trained weights (missing {len(missing)}, "
                                  f"e.g. {missing[:2]}; unexpected {len(unexpected)}, e.g. {unexpected[:2]}). "
                                  "It was a full fine-tune of another model, or with other settings; start a new run.")
        with torch.no_grad():
            for name, master in self._masters.items():
                if tensors[name].shape != master.shape:
                    raise CheckpointError(f"{source}: {name} has shape {tuple(tensors[name].shape)}, "
                                          f"expected {tuple(master.shape)}; start a new run.")
                master.copy_(tensors[name])
        self.sync()


def _grad_into(master: nn.Parameter):
    """Move each accumulated half-precision gradient into the fp32 master (the half one is freed)."""

    def hook(p: torch.Tensor) -> None:
        grad = p.grad.float()
        if master.grad is None:
            master.grad = grad
        else:
            master.grad.add_(grad)
        p.grad = None

    return hook


# ---- files --------------------------------------------------------------------------------------
def is_full(config: TrainConfig) -> bool:
    return config.network.method == METHOD


def trains_text_encoder(config: TrainConfig) -> bool:
    return config.network.train_text_encoder and config.optimizer.text_encoder_lr > 0


def write_checkpoint(path: Path, model, trained: FullFineTune, config: TrainConfig, facts: RunFacts,
                     dtype: torch.dtype) -> Path:
    """The model with its trained weights as one ldm-layout checkpoint (the live model is not touched)."""
    return save_ldm_checkpoint(path, model, dtype, checkpoint_metadata(config, model.info, facts), trained.value_of)


def extracted_lora_path(config: TrainConfig) -> Path:
    """`<extract_lora_dir>/<name>.safetensors`; by default A1111's models/Lora beside models/Stable-diffusion."""
    o = config.output
    folder = Path(o.extract_lora_dir) if o.extract_lora_dir else Path(o.output_dir).resolve().parent / "Lora"
    return path_inside(folder, f"{o.name}.safetensors")


def check_extract_target(config: TrainConfig) -> None:
    """Refuse before any step when the extracted LoRA would replace a file or land beside the checkpoints."""
    if not is_full(config) or config.output.extract_lora_rank == 0:
        return
    path = extracted_lora_path(config)
    if path.parent == Path(config.output.output_dir).resolve():
        raise SettingsError(f"The extracted LoRA would go into the checkpoint folder {path.parent} under the "
                            "checkpoint's own name. Set output.extract_lora_dir (e.g. models/Lora).")
    if path.exists() and not config.output.overwrite:
        raise SettingsError(f"{path} already exists. Choose another output name, or allow overwriting "
                            "(output.overwrite = true / --overwrite).")


def write_extracted_lora(model, trained: FullFineTune, config: TrainConfig, facts: RunFacts) -> Path:
    """The difference trained - original of the LoRA-able layers, as a rank-r kohya LoRA."""
    rank = config.output.extract_lora_rank
    tensors = extract_lora(model, trained.originals(), trained.value_of, rank, trains_text_encoder(config))
    network = dataclasses.replace(config.network, rank=rank, alpha=float(rank), conv_rank=0,
                                  train_text_encoder=trains_text_encoder(config))
    meta = build_metadata(dataclasses.replace(config, network=network), model.info, facts)
    meta["ss_training_comment"] = (f"extracted (SVD, rank {rank}) from the full fine-tune "
                                   f"{config.output.name}.safetensors with LoRA Studio")
    return save_lora(extracted_lora_path(config), tensors, meta)
