"""A set of LoRA modules over a model: attach, train, detach, save in kohya keys."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Mapping

import torch
from torch import nn

from ..errors import CheckpointError
from .module import LoraModule
from .targets import (
    TEXT_ENCODER_CONTAINERS,
    TEXT_ENCODER_PREFIX,
    UNET_ATTENTION_CONTAINERS,
    UNET_CONV_CONTAINERS,
    UNET_PREFIX,
    LoraTarget,
    find_targets,
)


@dataclass(frozen=True)
class NetworkShape:
    """Rank/alpha of a network and which parts of the model it covers."""

    rank: int = 16
    alpha: float = 8.0
    conv_rank: int = 0  # 0 = no conv layers (kohya's conv_dim)
    conv_alpha: float = 1.0
    text_encoder: bool = True  # False = "UNet only"


def select_targets(model, shape: NetworkShape) -> list[LoraTarget]:
    """The modules kohya's networks.lora would adapt on this model (a ModelAdapter)."""
    unet_containers = UNET_ATTENTION_CONTAINERS + (UNET_CONV_CONTAINERS if shape.conv_rank > 0 else ())
    targets = find_targets(
        model.named_unet_modules(), UNET_PREFIX, unet_containers,
        shape.rank, shape.alpha, shape.conv_rank, shape.conv_alpha,
    )
    if shape.text_encoder:
        for prefix, named_modules in model.text_encoder_parts():
            targets += find_targets(named_modules, prefix, TEXT_ENCODER_CONTAINERS, shape.rank, shape.alpha)
    return targets


class LoraNetwork(nn.Module):
    def __init__(self, targets: list[LoraTarget]):
        super().__init__()
        if not targets:
            raise CheckpointError("No LoRA target modules were found in this model; is it a Stable Diffusion 1.x/2.x or SDXL model?")
        self.lora_modules = nn.ModuleDict(
            {t.kohya_name: LoraModule(t.kohya_name, t.module, t.rank, t.alpha) for t in targets}
        )

    @classmethod
    def for_model(cls, model, shape: NetworkShape) -> "LoraNetwork":
        network = cls(select_targets(model, shape))
        # The model's compute device, not the base weight's: under A1111's --medvram the
        # UNet sits on the CPU until a forward hook moves it.
        network.to(device=model.device)
        return network

    def __iter__(self) -> Iterator[LoraModule]:
        return iter(self.lora_modules.values())

    def attach(self) -> None:
        for module in self:
            module.attach()

    def detach(self) -> None:
        for module in self:
            module.detach()

    @contextmanager
    def attached(self):
        """Hooks in place for the duration, removed whatever happens."""
        self.attach()
        try:
            yield self
        finally:
            self.detach()

    @contextmanager
    def merged(self):
        """The LoRA added into the base weights for the duration, for drawing many samples: no per-layer
        extra work (a third faster on the quality bench's narrow convs than the hooks). Not for training.
        Every base weight is put back exactly as it was (a copy is kept), whatever happens."""
        kept = []
        try:
            with torch.no_grad():
                for module in self:
                    weight = module.base.weight
                    kept.append((weight, weight.detach().clone()))
                    weight += module.weight_delta().to(weight.dtype)
            yield self
        finally:
            with torch.no_grad():
                for weight, original in kept:
                    weight.copy_(original)

    def set_multiplier(self, multiplier: float) -> None:
        for module in self:
            module.multiplier = multiplier

    def parameters_of(self, prefix: str) -> list[nn.Parameter]:
        """Parameters of the modules whose key starts with `prefix` ('lora_te' covers SDXL's lora_te1/lora_te2)."""
        return [p for m in self if m.kohya_name.startswith(prefix) for p in m.parameters()]

    def unet_parameters(self) -> list[nn.Parameter]:
        return self.parameters_of(UNET_PREFIX)

    def text_encoder_parameters(self) -> list[nn.Parameter]:
        return self.parameters_of(TEXT_ENCODER_PREFIX)

    def count(self, prefix: str) -> int:
        return sum(1 for m in self if m.kohya_name.startswith(prefix))

    def kohya_state_dict(self, dtype: torch.dtype | None = None) -> dict[str, torch.Tensor]:
        """`<name>.lora_down.weight`, `<name>.lora_up.weight`, `<name>.alpha`, contiguous, on CPU."""
        tensors: dict[str, torch.Tensor] = {}
        for module in self:
            for key, value in (
                ("lora_down.weight", module.lora_down.weight),
                ("lora_up.weight", module.lora_up.weight),
            ):
                value = value.detach().to("cpu", dtype=dtype or value.dtype).contiguous()
                tensors[f"{module.kohya_name}.{key}"] = value.clone()
            # kohya stores alpha as a scalar tensor of the save dtype
            tensors[f"{module.kohya_name}.alpha"] = torch.tensor(module.alpha, dtype=dtype or torch.float32)
        return tensors

    def load_kohya_state_dict(self, tensors: Mapping[str, torch.Tensor], source: str = "the LoRA file") -> None:
        """Exact load: every module present, no extra keys, shapes equal."""
        expected = {f"{m.kohya_name}.{key}" for m in self for key in ("lora_down.weight", "lora_up.weight", "alpha")}
        missing = sorted(expected - tensors.keys())
        unexpected = sorted(tensors.keys() - expected)
        if missing or unexpected:
            raise CheckpointError(
                f"{source} does not match this network (missing {len(missing)} keys, e.g. {missing[:2]}; "
                f"unexpected {len(unexpected)}, e.g. {unexpected[:2]}). It was trained with another rank, "
                "target set or base model family."
            )
        with torch.no_grad():
            for module in self:
                module.alpha = float(tensors[f"{module.kohya_name}.alpha"])
                for key, target in (
                    ("lora_down.weight", module.lora_down.weight),
                    ("lora_up.weight", module.lora_up.weight),
                ):
                    value = tensors[f"{module.kohya_name}.{key}"]
                    if value.shape != target.shape:
                        raise CheckpointError(
                            f"{source}: {module.kohya_name}.{key} has shape {tuple(value.shape)}, "
                            f"expected {tuple(target.shape)}."
                        )
                    target.copy_(value)
