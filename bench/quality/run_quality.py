"""Teach each concept with each method through the engine and report quality numbers.

    python bench/quality/run_quality.py                       # both concepts, all methods, seeds 0 1 2
    python bench/quality/run_quality.py --concepts instance --methods lora_te --seeds 0 --steps 300 --lr 1e-3

Needs the fixtures (python bench/quality/build_fixtures.py). Writes a Markdown table and JSON to
bench/quality/results/quality-<time>.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import statistics
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
from concepts import CONCEPTS  # noqa: E402
from methods import METHODS, method, scaled_alphas  # noqa: E402
from metrics import EvalSizes, Scores, score  # noqa: E402
from teach import Datasets, Line, run_lines  # noqa: E402

FIELDS = ("fidelity", "seen_accuracy", "leakage", "pixel_change", "train_seconds")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def mean_sd(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def table(rows: dict[str, list[Scores]]) -> str:
    lines = ["| method | " + " | ".join(FIELDS) + " |", "|---" * (len(FIELDS) + 1) + "|"]
    for name, scores in rows.items():
        cells = [mean_sd([getattr(s, f) for s in scores]) for f in FIELDS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def ablation_table(rows: dict[str, list[Scores]]) -> str:
    """Per method and part switched off: fidelity / seen accuracy / leakage (empty without --ablate)."""
    lines = []
    for name, scores in rows.items():
        for part in scores[0].extra:
            cells = [mean_sd([s.extra[part][f] for s in scores]) for f in ("fidelity", "seen_accuracy", "leakage")]
            lines.append(f"| {name} | {part} | " + " | ".join(cells) + " |")
    if not lines:
        return ""
    return "\n\n| method | file | fidelity | seen_accuracy | leakage |\n|---|---|---|---|---|\n" + "\n".join(lines)


def add_setting_args(p: argparse.ArgumentParser) -> None:
    """Flags that change one Method setting for every run (both the table and the sweep take them)."""
    p.add_argument("--rank", type=int, help="LoRA rank (alpha keeps the method's alpha/rank)")
    p.add_argument("--conv-rank", type=int, help="LoCon: also the UNet's 3x3 convs, at this rank")
    p.add_argument("--min-snr", type=float)
    p.add_argument("--prior-weight", type=float)
    p.add_argument("--warmup", type=int, help="warm-up steps")


def setting_overrides(args: argparse.Namespace) -> dict:
    """Method field -> value for the flags of `add_setting_args` that were given."""
    return {k: v for k, v in (("rank", args.rank), ("conv_rank", args.conv_rank), ("min_snr_gamma", args.min_snr),
                              ("prior_loss_weight", args.prior_weight), ("warmup_steps", args.warmup))
            if v is not None}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--concepts", nargs="+", default=list(CONCEPTS), choices=CONCEPTS)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--steps", type=int)
    p.add_argument("--lr", type=float, help="UNet learning rate (the text encoder's keeps the method's ratio)")
    add_setting_args(p)
    p.add_argument("--per-seen-prompt", type=int, default=4)
    p.add_argument("--samples", type=int, default=32, help="samples for fidelity and for leakage")
    p.add_argument("--ablate", action="store_true",
                   help="also score each final file with its text-encoder / UNet-attention / UNet-conv part switched off")
    p.add_argument("--jobs", type=int, default=2, help="training runs at once, one torch thread each")
    p.add_argument("--out", type=Path, default=HERE / "results")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    overrides = setting_overrides(args) | ({"steps": args.steps} if args.steps is not None else {})
    sizes = EvalSizes(args.per_seen_prompt, args.samples, args.samples)
    model, judge = load_base(), load_judge()
    started = time.monotonic()
    rows: dict[str, list[Scores]] = {}
    used: dict[str, dict] = {}  # method -> its settings
    with tempfile.TemporaryDirectory(prefix="quality-") as tmp:
        work = Path(tmp)
        datasets = Datasets()
        lines: list[Line] = []
        for concept in (CONCEPTS[c] for c in args.concepts):
            base_scores, base_seen = score(model, judge, sizes, None, concept)
            rows[f"{concept.name}: base (no LoRA)"] = [base_scores]
            log(f"{concept.name} base: {asdict(base_scores)}")
            for name in args.methods:
                base = METHODS[name]
                lrs = {} if args.lr is None else {"unet_lr": args.lr,  # the text encoder's keeps the method's ratio
                                                  "text_encoder_lr": args.lr * base.text_encoder_lr / base.unet_lr}
                m = method(name, **overrides, **scaled_alphas(base, overrides), **lrs)
                used[name] = asdict(m)
                dataset = datasets.get(work, model, m, concept)
                lines += [Line(m, concept, dataset, work / f"out-{len(lines) + i}", seed, (m.steps,), sizes,
                               base_seen, args.ablate) for i, seed in enumerate(args.seeds)]
        for line, results in zip(lines, run_lines(lines, args.jobs)):
            for _, s in results:
                rows.setdefault(f"{line.concept.name}: {line.method.name}", []).append(s)
                log(f"{line.concept.name} {line.method.name} seed {line.seed}: {asdict(s)}")
    total = time.monotonic() - started
    md = table(rows) + ablation_table(rows)
    settings = {"overrides": overrides, "seeds": args.seeds, "concepts": args.concepts, "sizes": asdict(sizes), "total_seconds": round(total),
                "methods": used}
    print(md)
    print(f"total {total:.0f}s; settings {json.dumps(settings)}")
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (args.out / f"quality-{stamp}.md").write_text(md + f"\n\n{json.dumps(settings)}\n", encoding="utf-8")
    (args.out / f"quality-{stamp}.json").write_text(
        json.dumps({"settings": settings, "rows": {k: [asdict(s) for s in v] for k, v in rows.items()}}, indent=2),
        encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
