"""What backward keeps on fp8-stored weights: our per-layer upcast (train/fp8_layers.py) vs autocast alone.

One SD1.5 mid-block Transformer2DModel (1280 channels, 33 M parameters), fp8 weights, bf16 autocast on
the CPU, 8x8 latents; sums the storage autograd saves for backward (each storage once). Autocast alone
keeps a 16-bit copy of every weight for backward, giving back what fp8 storage saves.

    OMP_NUM_THREADS=1 python bench/fp8_backward_memory.py
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lib_training.models.fp8 import store_as_fp8  # noqa: E402
from lib_training.train.cpu_autocast import cuda_like_norms  # noqa: E402
from lib_training.train.fp8_layers import fp8_upcast  # noqa: E402


def saved_mib(per_layer_upcast: bool) -> tuple[float, int]:
    from diffusers import Transformer2DModel

    torch.manual_seed(0)
    block = Transformer2DModel(num_attention_heads=8, attention_head_dim=160, in_channels=1280,
                               cross_attention_dim=768, norm_num_groups=32).to(torch.bfloat16).requires_grad_(False)
    store_as_fp8([block])
    x, context = torch.randn(1, 1280, 8, 8, requires_grad=True), torch.randn(1, 77, 768)
    storages: dict[int, int] = {}

    def keep(tensor):
        storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    upcast = fp8_upcast([block]) if per_layer_upcast else contextlib.nullcontext()
    with torch.autocast("cpu", dtype=torch.bfloat16), upcast, cuda_like_norms([block], True), \
            torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        out = block(x, encoder_hidden_states=context).sample
    out.float().sum().backward()
    return sum(storages.values()) / 2**20, sum(p.numel() for p in block.parameters())


def main() -> None:
    torch.set_num_threads(1)
    ours, params = saved_mib(True)
    plain, _ = saved_mib(False)
    print(f"{params / 1e6:.1f} M fp8 parameters; saved for backward: per-layer upcast {ours:.1f} MiB, "
          f"autocast alone {plain:.1f} MiB")


if __name__ == "__main__":
    main()
