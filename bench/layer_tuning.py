"""What the CPU layer tuner (lib_training/train/cpu_tuning.py) buys: one training step's
forward + backward (text encoder + UNet with the LoRA, batch 1) with and without it, alternating.

    python bench/layer_tuning.py --resolutions 128 256 [--rounds 3 --steps 4]

Prints per resolution the median step time both ways, their ratio, the time the first tuned
step took (it times each new shape), and how many shapes chose the weight-first matmul.
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

from flops import step  # noqa: E402
from lib_training.lora.network import LoraNetwork, NetworkShape  # noqa: E402
from lib_training.models.single_file import load_checkpoint  # noqa: E402
from lib_training.train.cpu_tuning import tuned_layers  # noqa: E402
from lib_training.train.guard import frozen  # noqa: E402

CHECKPOINT = Path(__file__).resolve().parent / ".cache" / "random-sd15-seed0.safetensors"


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint", type=Path, default=CHECKPOINT)
    parser.add_argument("--resolutions", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--rounds", type=int, default=3, help="alternations of plain / tuned")
    parser.add_argument("--steps", type=int, default=4, help="timed steps per round (after one warm-up)")
    args = parser.parse_args()
    model = load_checkpoint(args.checkpoint, device="cpu", dtype=torch.float32)
    base = [model.unet(), model.text_encoder()]
    report = {}
    with frozen(base):
        network = LoraNetwork.for_model(model, NetworkShape(16, 16, 0, 1.0, True))
        with network.attached():
            for resolution in args.resolutions:
                times = {"pytorch": [], "tuned": []}
                first_tuned, chosen = [], ""
                for _ in range(args.rounds):
                    for label in ("pytorch", "tuned"):
                        with tuned_layers(base, enabled=label == "tuned") as tuner:
                            start = time.perf_counter()
                            step(model, resolution)  # warm-up (the tuned one times its shapes here)
                            if tuner:
                                first_tuned.append(time.perf_counter() - start)
                                picks = list(tuner.choice.values())
                                chosen = f"{sum(1 for p in picks if p)} of {len(picks)}"
                            for _ in range(args.steps):
                                start = time.perf_counter()
                                step(model, resolution)
                                times[label].append(time.perf_counter() - start)
                            network.zero_grad(set_to_none=True)
                plain, tuned = statistics.median(times["pytorch"]), statistics.median(times["tuned"])
                report[resolution] = {"pytorch_s": plain, "tuned_s": tuned, "ratio": tuned / plain,
                                      "first_tuned_step_s": statistics.median(first_tuned),
                                      "weight_first_shapes": chosen}
                print(f"{resolution} px: fwd+bwd {plain:.2f} s → {tuned:.2f} s tuned (×{tuned / plain:.2f}); "
                      f"first tuned step {statistics.median(first_tuned):.1f} s; weight-first for {chosen} shapes",
                      flush=True)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
