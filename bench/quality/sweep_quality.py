"""Learning-rate x steps sweep: concept fidelity against drift, per method, as a table and a PNG.

    python bench/quality/sweep_quality.py                                   # the default grid
    python bench/quality/sweep_quality.py --methods dreambooth_lora --lrs 1e-3 3e-3 --steps 100 200 400

Each (method, lr) is one engine run with a constant learning rate (the preset's scheduler would make a
shorter run differ from an early file of a longer one) that keeps a file every few steps, so the step
counts of one line cost one training run. The text encoder's lr keeps the method's ratio to the UNet's.
Writes results/sweep-<time>.{md,json,png}.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parents[1])]

import torch  # noqa: E402

from lib_training.demo.base_model import load_base  # noqa: E402
from lib_training.demo.judge import load_judge  # noqa: E402
from plot import Point, fidelity_vs_drift  # noqa: E402
from run_quality import add_setting_args, log, setting_overrides  # noqa: E402
from concepts import CONCEPTS, DEFAULT_CONCEPT  # noqa: E402
from methods import LORA_METHODS, METHODS, Method, method, scaled_alphas  # noqa: E402
from metrics import EvalSizes, score  # noqa: E402
from teach import Datasets, Line, run_lines  # noqa: E402


def line_method(name: str, lr: float, te_lr_ratio: float | None, steps: int, fixed: dict, change: str) -> Method:
    """Method `name` at UNet lr `lr` (constant), with `fixed` and one `change` ("field=value") applied."""
    base = METHODS[name]
    extra = dict(fixed)
    if change:
        key, _, text = change.partition("=")
        if key == "te_lr_ratio":
            te_lr_ratio = float(text)
        elif key in Method.__dataclass_fields__ and key != "name":
            extra[key] = type(getattr(base, key))(text)
        else:
            raise SystemExit(f"--vary {change}: use FIELD=VALUE with a field of methods.Method or te_lr_ratio")
    ratio = te_lr_ratio if te_lr_ratio is not None else base.text_encoder_lr / base.unet_lr
    return method(name, unet_lr=lr, text_encoder_lr=lr * ratio, steps=steps, scheduler="constant",
                  **{**scaled_alphas(base, extra), **extra})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--concept", default=DEFAULT_CONCEPT, choices=CONCEPTS)
    p.add_argument("--methods", nargs="+", default=LORA_METHODS, choices=list(METHODS),
                   help="default: the LoRA methods (the default --lrs are a LoRA's)")
    p.add_argument("--lrs", nargs="+", type=float, default=[5e-4, 1e-3, 2e-3, 4e-3], help="UNet learning rates")
    p.add_argument("--steps", nargs="+", type=int, default=[100, 200, 400])
    p.add_argument("--te-lr-ratio", type=float, help="text-encoder lr = this x the UNet lr (default: the method's)")
    add_setting_args(p)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--per-seen-prompt", type=int, default=2)
    p.add_argument("--samples", type=int, default=24, help="samples for fidelity and for leakage")
    p.add_argument("--vary", nargs="+", default=[], metavar="FIELD=VALUE",
                   help="also a line per change of one setting (a Method field, or te_lr_ratio), e.g. min_snr_gamma=0 "
                        "rank=4; the first line keeps the settings as they are")
    p.add_argument("--jobs", type=int, default=2, help="training runs at once, one torch thread each")
    p.add_argument("--out", type=Path, default=HERE / "results")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    fixed = setting_overrides(args)
    steps = tuple(sorted(set(args.steps)))
    sizes = EvalSizes(args.per_seen_prompt, args.samples, args.samples)
    model, judge = load_base(), load_judge()
    concept = CONCEPTS[args.concept]
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="quality-sweep-") as tmp:
        work = Path(tmp)
        base_scores, base_seen = score(model, judge, sizes, None, concept)
        log(f"base: {asdict(base_scores)}")
        datasets = Datasets()
        lines: list[Line] = []
        labels: list[str] = []
        for name in args.methods:
            for lr in args.lrs:
                for change in [""] + args.vary:
                    m = line_method(name, lr, args.te_lr_ratio, steps[-1], fixed, change)
                    label = " ".join(x for x in (f"lr {lr:g}" if len(args.lrs) > 1 or not args.vary else "",
                                                 change or ("as set" if args.vary else "")) if x)
                    labels.append(label)
                    lines.append(Line(m, concept, datasets.get(work, model, m, concept), work / f"out-{len(lines)}",
                                      args.seed, steps, sizes, base_seen))
        points = [Point(line.method.name, label, line.method.unet_lr, step, s.fidelity, s.seen_accuracy, s.leakage,
                        s.pixel_change)
                  for line, label, results in zip(lines, labels, run_lines(lines, args.jobs)) for step, s in results]
    total = time.monotonic() - started
    stamp = time.strftime("%Y%m%d-%H%M%S")
    args.out.mkdir(parents=True, exist_ok=True)
    settings = {"concept": concept.name, "fixed": fixed, "te_lr_ratio": args.te_lr_ratio, "seed": args.seed, "sizes": asdict(sizes),
                "total_seconds": round(total), "lines": {label: asdict(line.method) for line, label in zip(lines, labels)}}
    rows = ["| method | line | UNet lr | steps | fidelity | seen acc. | leakage | pixel Δ |",
            "|---|---|---|---|---|---|---|---|"]
    rows += [f"| {q.method} | {q.label} | {q.lr:g} | {q.steps} | {q.fidelity:.3f} | {q.seen_accuracy:.3f} | {q.leakage:.3f} "
             f"| {q.pixel_change:.3f} |" for q in points]
    md = "\n".join(rows) + f"\n\nbase: fidelity {base_scores.fidelity:.3f}, seen {base_scores.seen_accuracy:.3f}, " \
                           f"leakage {base_scores.leakage:.3f}\n\n{json.dumps(settings)}\n"
    (args.out / f"sweep-{stamp}.md").write_text(md, encoding="utf-8")
    (args.out / f"sweep-{stamp}.json").write_text(json.dumps(
        {"settings": settings, "base": asdict(base_scores), "points": [asdict(q) for q in points]}, indent=2),
        encoding="utf-8")
    title = f"Teaching '{concept.prompt}' = {concept.colour} {concept.fill} {concept.shape}, seed {args.seed}, constant lr"
    if args.te_lr_ratio is not None:
        title += f", TE lr = {args.te_lr_ratio:g} x UNet lr"
    title += f"; {json.dumps(fixed)}" if fixed else ""
    png = fidelity_vs_drift(points, (base_scores.seen_accuracy, base_scores.fidelity), args.out / f"sweep-{stamp}.png",
                            title=title)
    print(md)
    log(f"total {total:.0f}s; chart {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
