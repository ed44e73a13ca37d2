"""Leave the base model exactly as found: frozen during training, restored after."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Iterator

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


@contextmanager
def frozen(modules: Iterable[nn.Module]) -> Iterator[None]:
    """requires_grad False and eval mode on every parameter/module, restored on exit.

    A1111 leaves its UNet trainable; training the LoRA must not compute (or keep)
    gradients for the base weights.
    """
    modules = list(modules)
    grads = [(p, p.requires_grad) for m in modules for p in m.parameters()]
    modes = [(sub, sub.training) for m in modules for sub in m.modules()]
    try:
        for m in modules:
            m.requires_grad_(False)
            m.eval()
        yield
    finally:
        for p, flag in grads:
            p.requires_grad_(flag)
        for sub, flag in modes:
            sub.training = flag


@contextmanager
def gradient_checkpointing(units: Iterable[nn.Module], enabled: bool) -> Iterator[None]:
    """Recompute each unit's activations in backward, non-reentrant.

    Reentrant checkpointing (A1111's hijack, transformers 4.30's default) drops the
    gradients of LoRA weights when the base model is frozen.
    """
    with replaced_forwards((unit, _checkpointed(unit.forward)) for unit in (units if enabled else ())):
        yield


@contextmanager
def replaced_forwards(replacements: Iterable[tuple[nn.Module, object]]) -> Iterator[None]:
    """Set each module's instance-level `forward` (its hooks still run), restore on exit."""
    patched: list[tuple[nn.Module, object]] = []
    try:
        for module, forward in replacements:
            patched.append((module, module.__dict__.get("forward")))
            module.forward = forward
        yield
    finally:
        for module, previous in reversed(patched):
            if previous is None:
                del module.forward
            else:
                module.forward = previous


def _checkpointed(forward):
    def run(*args, **kwargs):
        if torch.is_grad_enabled():
            return checkpoint(forward, *args, use_reentrant=False, **kwargs)
        return forward(*args, **kwargs)

    return run
