"""torch.profiler over a few steps of our engine's training loop, as the CLI runs it.

    python bench/profile_ours.py [--resolution 128] [--steps 5] [--grad-ckpt]

Builds the bench inputs if needed (run bench/run_bench.py once, or this builds the same
checkpoint/dataset), trains with the bench's settings through lib_training.train.loop.train
(what `python -m lib_training train` calls), profiles `--steps` steps after two warm-up
steps, and writes bench/results/profile-ours-<res>px[-gc].txt (top ops by self CPU time, the same
grouped into kinds of work, and where in the step the time goes) plus a .json summary.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH.parent))
sys.path.insert(0, str(BENCH))

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile, record_function, schedule  # noqa: E402

import run_bench  # noqa: E402
from profile_common import summarize  # noqa: E402
from lib_training.config import TrainConfig  # noqa: E402
from lib_training.models.single_file import load_checkpoint  # noqa: E402
from lib_training.train import events as ev  # noqa: E402
from lib_training.train import loop as loop_module  # noqa: E402

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5, help="profiled steps (after 2 warm-up steps)")
    parser.add_argument("--grad-ckpt", action="store_true")
    parser.add_argument("--row-limit", type=int, default=30)
    args = parser.parse_args()

    run_bench.prepare_inputs(sys.executable, with_kohya=False)
    warmup, wait = 1, 1
    total_steps = wait + warmup + args.steps + 1
    out_dir = Path(tempfile.mkdtemp(prefix="lora-profile-"))
    config = TrainConfig()
    config.model.checkpoint = str(run_bench.CHECKPOINT)
    config.data.train_dir = str(run_bench.DATASET)
    config.data.resolution = args.resolution
    config.network.rank, config.network.alpha = run_bench.RANK, float(run_bench.ALPHA)
    config.optimizer.optimizer, config.optimizer.unet_lr = "adamw", run_bench.LR
    config.optimizer.text_encoder_lr, config.optimizer.scheduler = run_bench.LR, "constant"
    config.train.max_steps, config.train.batch_size, config.train.seed = total_steps, run_bench.BATCH, run_bench.SEED
    config.train.save_every_epochs, config.train.mixed_precision = 0, "no"
    config.train.gradient_checkpointing = args.grad_ckpt
    config.output.output_dir, config.output.name, config.output.overwrite = str(out_dir), "profile", True
    config.validate(need_checkpoint=True)

    model = load_checkpoint(Path(config.model.checkpoint), device="cpu", dtype=torch.float32)

    # Label the phases of a step so the profile says where the time goes.
    trainer = loop_module._Trainer
    originals = {}
    for method, label in (("_conditioning", "phase: text encoder fwd"), ("_backward", "phase: backward"),
                          ("_optimizer_step", "phase: clip + optimizer"), ("_read_back", "phase: loss read-back+log")):
        originals[method] = getattr(trainer, method)

        def wrapped(self, *a, _orig=originals[method], _label=label, **kw):
            with record_function(_label):
                return _orig(self, *a, **kw)

        setattr(trainer, method, wrapped)
    original_predict = model.predict

    def predict(*a, **kw):
        with record_function("phase: unet fwd"):
            return original_predict(*a, **kw)

    model.predict = predict

    step_marks: list[float] = []
    prof = profile(activities=[ProfilerActivity.CPU], schedule=schedule(wait=wait, warmup=warmup, active=args.steps,
                                                                          repeat=1),
                   record_shapes=True, with_stack=False)

    def on_event(event: ev.Event) -> None:
        if isinstance(event, ev.StepDone):
            step_marks.append(time.perf_counter())
            prof.step()

    with prof:
        loop_module.train(config, model, on_event=on_event)
    steps = [b - a for a, b in zip(step_marks, step_marks[1:])]
    profiled = steps[wait + warmup - 1: wait + warmup - 1 + args.steps]

    label = f"ours-{args.resolution}px{'-gc' if args.grad_ckpt else ''}"
    text = summarize(prof, args.steps, label, "Profile of LoRA Studio's training loop", profiled, args.row_limit)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
