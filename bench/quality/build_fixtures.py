"""Rebuild the quality benchmark's fixtures (judge + base model) with fixed seeds.

    python bench/quality/build_fixtures.py --only judge                # ~3-5 min, one thread
    python bench/quality/build_fixtures.py --only base --threads 2     # 5000 steps, ~41 min on 2 free cores
    python bench/quality/build_fixtures.py --only eval                 # score the base (seen prompts)

Writes lib_training/demo/fixtures/{judge,base}.safetensors, their sha256 in fixtures/SHA256SUMS and
the measured accuracies in fixtures/REPORT.json. Bit-identical output needs the same torch build
and thread count (the committed judge used one thread, the base two; REPORT.json records them).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parents[1])]

import torch  # noqa: E402

from lib_training.demo import base_model  # noqa: E402
from lib_training.demo import judge as judge_mod  # noqa: E402
from lib_training.demo.fixtures_io import FIXTURES, fixture_available, save_fixture  # noqa: E402

REPORT = FIXTURES / "REPORT.json"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def update_report(key: str, value: dict) -> None:
    FIXTURES.mkdir(parents=True, exist_ok=True)
    data = json.loads(REPORT.read_text()) if REPORT.is_file() else {}
    data[key] = value
    REPORT.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def build_judge(seed: int, steps: int) -> None:
    judge, report = judge_mod.train_judge(seed=seed, steps=steps, log=log)
    save_fixture(judge_mod.JUDGE_FILE, judge.state_dict(), {"seed": seed, "steps": steps})
    update_report("judge", asdict(report))
    log(f"judge: {report.seconds:.0f}s, accuracy {json.dumps(report.accuracy)}")


def build_base(settings: base_model.BaseTrainSettings, eval_per_prompt: int) -> None:
    def save(model: base_model.QualityAdapter, steps_done: int, seconds: float) -> None:
        meta = {**asdict(settings), "steps_done": steps_done, "train_seconds": round(seconds),
                "torch_threads": torch.get_num_threads(), "torch": torch.__version__}
        save_fixture(base_model.BASE_FILE, base_model.base_tensors(model), meta)
        update_report("base", {"steps_done": steps_done, "train_seconds": round(seconds),
                               "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                               "settings": asdict(settings), "accuracy": None})
        log(f"base: saved after {steps_done} steps ({seconds:.0f}s)")

    model, seconds, steps = base_model.train_base(settings, log=log, on_snapshot=save)
    save(model, steps, seconds)
    if eval_per_prompt and fixture_available(judge_mod.JUDGE_FILE):
        evaluate_base(eval_per_prompt)


def evaluate_base(per_prompt: int) -> dict:
    from metrics import seen_accuracy

    started = time.monotonic()
    acc, _ = seen_accuracy(base_model.load_base(), judge_mod.load_judge(), per_prompt=per_prompt, seed=1)
    result = {**asdict(acc), "sampler": f"DDIM 20 steps, CFG {base_model.CFG:g}", "eval_seconds": round(time.monotonic() - started)}
    data = json.loads(REPORT.read_text())
    data["base"]["accuracy"] = result
    REPORT.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    log(f"base seen-prompt accuracy: {json.dumps(result)}")
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", choices=("judge", "base", "eval"), help="build one fixture (eval: score the base)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--judge-steps", type=int, default=1200)
    p.add_argument("--base-steps", type=int, default=base_model.BaseTrainSettings.steps)
    p.add_argument("--base-stop-after", type=int, default=0,
                   help="stop the base model's training after this many steps (its schedule still spans --base-steps)")
    p.add_argument("--eval-per-prompt", type=int, default=8, help="samples per seen prompt (12 prompts)")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    if args.only in (None, "judge"):
        build_judge(args.seed, args.judge_steps)
    if args.only in (None, "base"):
        build_base(base_model.BaseTrainSettings(seed=args.seed, steps=args.base_steps,
                                                              stop_after=args.base_stop_after), args.eval_per_prompt)
    if args.only == "eval":
        evaluate_base(args.eval_per_prompt)
    return 0


if __name__ == "__main__":
    sys.exit(main())
