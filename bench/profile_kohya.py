"""torch.profiler over a few steps of kohya's train_network.py, with the bench's settings.

    KOHYA_DIR=... $KOHYA_PYTHON bench/profile_kohya.py [--resolution 128] [--steps 5] [--grad-ckpt]

Run with kohya's own Python. Imports kohya's train_network from KOHYA_DIR (nothing of it is
copied here), builds the same command line as run_bench.py, labels the phases of a step
(text encoder forward, UNet forward, backward, clipping + optimizer) with record_function,
and steps the profiler from kohya's "steps" progress bar. Writes
bench/results/profile-kohya-<res>px[-gc].txt/.json in the same format as profile_ours.py.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import run_bench  # noqa: E402  (standard library only)
import torch  # noqa: E402
from profile_common import summarize  # noqa: E402
from torch.profiler import ProfilerActivity, profile, record_function, schedule  # noqa: E402


def _label(owner, name: str, label: str) -> None:
    original = getattr(owner, name)

    def wrapped(*a, **kw):
        with record_function("phase: " + label):
            return original(*a, **kw)

    setattr(owner, name, wrapped)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5, help="profiled steps (after 2 warm-up steps)")
    parser.add_argument("--grad-ckpt", action="store_true")
    parser.add_argument("--row-limit", type=int, default=30)
    args = parser.parse_args()
    kdir = Path(os.environ.get("KOHYA_DIR", ""))
    if not (kdir / "train_network.py").is_file():
        sys.exit("Set KOHYA_DIR to an sd-scripts checkout (and run this with its Python).")

    run_bench.prepare_inputs(os.environ.get("OURS_PYTHON") or run_bench.ours_python(), with_kohya=True)
    wait, warmup = 1, 1
    total_steps = wait + warmup + args.steps + 1
    cfg = run_bench.Config(args.resolution, args.grad_ckpt, total_steps)
    out_dir = Path(tempfile.mkdtemp(prefix="kohya-profile-"))
    argv = run_bench.kohya_command(sys.executable, kdir, cfg, out_dir, "profile")[2:]

    os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    os.chdir(kdir)
    sys.path.insert(0, str(kdir))
    import accelerate  # noqa: E402
    import tqdm  # noqa: E402
    import train_network  # noqa: E402
    from library import strategy_sd, train_util  # noqa: E402

    _label(strategy_sd.SdTextEncodingStrategy, "encode_tokens", "text encoder fwd")
    _label(train_network.NetworkTrainer, "call_unet", "unet fwd")
    _label(accelerate.Accelerator, "backward", "backward")
    _label(accelerate.Accelerator, "clip_grad_norm_", "clip + optimizer")
    _label(torch.optim.AdamW, "step", "clip + optimizer")

    prof = profile(activities=[ProfilerActivity.CPU],
                   schedule=schedule(wait=wait, warmup=warmup, active=args.steps, repeat=1),
                   record_shapes=True, with_stack=False)
    marks: list[float] = []
    original_update = tqdm.tqdm.update

    def update(self, n=1):
        result = original_update(self, n)
        if getattr(self, "desc", "") == "steps":
            marks.append(time.perf_counter())
            prof.step()
        return result

    tqdm.tqdm.update = update

    ns = train_network.setup_parser().parse_args(argv)
    train_util.verify_command_line_training_args(ns)
    ns = train_util.read_config_from_file(ns, train_network.setup_parser())
    with prof:
        train_network.NetworkTrainer().train(ns)
    steps = [b - a for a, b in zip(marks, marks[1:])]
    profiled = steps[wait + warmup - 1: wait + warmup - 1 + args.steps]
    label = f"kohya-{args.resolution}px{'-gc' if args.grad_ckpt else ''}"
    print(summarize(prof, args.steps, label, "Profile of kohya train_network.py", profiled, args.row_limit))
    return 0


if __name__ == "__main__":
    sys.exit(main())
