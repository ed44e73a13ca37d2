"""Several GPUs (or nodes) on PyTorch's own engine: `torchrun --nproc_per_node N -m lib_training train ...`.

torchrun starts N copies of the CLI and sets RANK / WORLD_SIZE / LOCAL_RANK; each copy joins one
torch.distributed process group (NCCL on CUDA, gloo on the CPU). The run then is the single-process
run with a global batch of N x batch_size:
* every rank draws the same seed plan (epoch order, flips, captions, timesteps, noise) for the whole
  global batch and trains on its own slice of it, so the result does not depend on N beyond rounding;
* each rank's loss is its share of the global mean, and the LoRA's gradients are summed over the
  ranks with one all_reduce per optimizer step, so every rank takes the same step;
* cached latents are encoded by one rank each and shared;
* only rank 0 writes files, logs and the resumable state; a cancel on any rank stops all at the
  same step.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import SettingsError

_BUCKET_ELEMENTS = 1 << 24  # all_reduce gradients in chunks of ~64 MB (fp32): a full fine-tune has 860 M


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """The one process that writes files, logs and prints."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def rows(self, batch_size: int, count: int) -> slice:
        """This rank's positions in a global batch of `count` (the last batch of a bucket may be short)."""
        start = min(self.rank * batch_size, count)
        return slice(start, min(start + batch_size, count))


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device_kind: str) -> Ranks:
    """Join the process group torchrun described in the environment (no-op for a single process)."""
    if not launched_by_torchrun():
        return Ranks()
    if not dist.is_available():
        raise SettingsError("This PyTorch has no torch.distributed; run without torchrun.")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_kind == "cuda" else "gloo")
    return current()


def current() -> Ranks:
    if dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    return Ranks()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def sum_gradients(params: list[torch.Tensor]) -> None:
    """Sum every parameter's gradient over the ranks, in place (a rank without a gradient adds zeros)."""
    for chunk in _chunks(params):
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in chunk]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat)
        offset = 0
        for p, g in zip(chunk, grads):
            p.grad = flat[offset:offset + g.numel()].view_as(g).to(g.dtype)
            offset += g.numel()


def _chunks(params: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    chunks, current_chunk, size = [], [], 0
    for p in params:
        if current_chunk and size + p.numel() > _BUCKET_ELEMENTS:
            chunks.append(current_chunk)
            current_chunk, size = [], 0
        current_chunk.append(p)
        size += p.numel()
    return chunks + ([current_chunk] if current_chunk else [])


def summed(values: torch.Tensor) -> torch.Tensor:
    """A copy of `values` summed over the ranks (the ranks' loss shares add up to the global loss)."""
    total = values.clone()
    dist.all_reduce(total)
    return total


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when it is True on one (a cancel stops all ranks at the same step)."""
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def share_latents(cache, flips: bool, ranks: Ranks, device: torch.device) -> None:
    """Each rank encodes every N-th image (and its mirror), then all ranks hold all latents on `device`."""
    variants = (False, True) if flips else (False,)
    keys = [(index, flipped) for index in range(len(cache.samples)) for flipped in variants]
    mine = {key: cache.get(*key).cpu() for n, key in enumerate(keys) if n % ranks.world_size == ranks.rank}
    gathered: list = [None] * ranks.world_size
    dist.all_gather_object(gathered, mine)
    for part in gathered:
        for (index, flipped), latent in part.items():
            cache.put(index, flipped, latent.to(device))
