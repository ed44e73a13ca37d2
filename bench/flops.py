"""FLOPs of one LoRA training step on our engine's model, and the machine's fp32 GEMM rate.

    python bench/flops.py --checkpoint X.safetensors --configs 128:0 128:1 256:0 [--rank 16 --alpha 16]

Prints one JSON line: step_flops per "<resolution>:<grad-ckpt>" (text encoder + UNet forward and
backward with the LoRA attached, batch 1, counted by torch.utils.flop_counter.FlopCounterMode —
matmuls, convolutions and attention; elementwise ops are not counted), the time of that
fwd+bwd in-process, and a large fp32 GEMM's FLOP/s measured now, on the same threads.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count  # noqa: E402

from lib_training.lora.network import LoraNetwork, NetworkShape  # noqa: E402
from lib_training.models.single_file import load_checkpoint  # noqa: E402
from lib_training.train.guard import frozen, gradient_checkpointing  # noqa: E402

CAPTION = "sks photo, a tabby cat looking to the side"


# FlopCounterMode knows the CUDA SDPA kernels only; on CPU, F.scaled_dot_product_attention runs
# these two ops (same FLOPs as the flash kernels: QK^T and PV, and their backward).
def _cpu_sdpa(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def _cpu_sdpa_backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


def _custom_mapping() -> dict:
    aten = torch.ops.aten
    mapping = {}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        mapping[aten._scaled_dot_product_flash_attention_for_cpu] = _cpu_sdpa
        mapping[aten._scaled_dot_product_flash_attention_for_cpu_backward] = _cpu_sdpa_backward
    return mapping


def step(model, resolution: int) -> None:
    side = resolution // 8
    gen = torch.Generator().manual_seed(0)
    latents = torch.randn(1, 4, side, side, generator=gen)
    timesteps = torch.tensor([500])
    cond = model.encode_prompts([CAPTION])
    prediction = model.predict(latents, timesteps, cond)
    loss = torch.nn.functional.mse_loss(prediction, torch.randn(prediction.shape, generator=gen))
    loss.backward()


def gemm_flops_per_s(n: int, reps: int) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    out = torch.empty(n, n)
    for _ in range(2):
        torch.mm(a, b, out=out)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        torch.mm(a, b, out=out)
        times.append(time.perf_counter() - start)
    return 2 * n ** 3 / statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint", required=True, type=Path)
    parser.add_argument("--configs", nargs="+", required=True, help="<resolution>:<0|1 gradient checkpointing>")
    parser.add_argument("--rank", type=int, default=16)
    parser.add_argument("--alpha", type=float, default=16)
    parser.add_argument("--gemm", type=int, default=4096)
    parser.add_argument("--gemm-reps", type=int, default=5)
    parser.add_argument("--timed-reps", type=int, default=2, help="timed fwd+bwd per config (0 = none)")
    args = parser.parse_args()

    result = {"gemm_n": args.gemm, "gemm_reps": args.gemm_reps, "threads": torch.get_num_threads(),
              "step_flops": {}, "fwd_bwd_s": {}, "flops_by_op": {}}
    result["gemm_flops_per_s"] = gemm_flops_per_s(args.gemm, args.gemm_reps)
    model = load_checkpoint(args.checkpoint, device="cpu", dtype=torch.float32)
    with frozen([model.unet(), model.text_encoder()]):
        network = LoraNetwork.for_model(model, NetworkShape(args.rank, args.alpha, 0, 1.0, True))
        with network.attached():
            for spec in args.configs:
                resolution, gc = (int(x) for x in spec.split(":"))
                with gradient_checkpointing(model.checkpoint_units(), bool(gc)):
                    counter = FlopCounterMode(display=False, custom_mapping=_custom_mapping())
                    with counter:
                        step(model, resolution)
                    network.zero_grad(set_to_none=True)
                    result["step_flops"][spec] = counter.get_total_flops()
                    by_op = counter.get_flop_counts().get("Global", {})
                    result["flops_by_op"][spec] = {str(k): v for k, v in sorted(by_op.items(), key=lambda kv: -kv[1])}
                    times = []
                    for _ in range(args.timed_reps):
                        start = time.perf_counter()
                        step(model, resolution)
                        times.append(time.perf_counter() - start)
                        network.zero_grad(set_to_none=True)
                    if times:
                        result["fwd_bwd_s"][spec] = min(times)
    # once more at the end: the GEMM rate under the same conditions as the steps
    result["gemm_flops_per_s_after"] = gemm_flops_per_s(args.gemm, args.gemm_reps)
    result["gemm_flops_per_s"] = max(result["gemm_flops_per_s"], result["gemm_flops_per_s_after"])
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
