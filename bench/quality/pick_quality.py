"""Is the pick right? For each method x seed, the judge scores every saved file x weight; the judge's best
admissible cell is the truth. How often do (a) Compare's `recommend` (fed by the judge's penultimate features
as the image embedder) and (b) the validation-loss minimum pick the true file, and what fidelity do they lose?

    python bench/quality/pick_quality.py                                   # instance, 2 methods x 3 seeds
    python bench/quality/pick_quality.py --methods dreambooth_lora --seeds 0 --every 100 --weights 0.5 1

Admissible (issue 24): seen-prompt accuracy >= 0.9 x the base's and leakage <= 0.05; the truth is the
admissible cell of highest fidelity, else the least bad cell (smallest sum of shortfalls, then fidelity).
The validation loss is the engine's own (validation.folder = 8 fresh images of the concept, fixed noise and
timesteps), read from each file's metadata; it says nothing about the weight, so its pick is at weight 1.
Writes results/pick-<time>.{md,json}.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parents[1])]

import numpy as np  # noqa: E402
import torch  # noqa: E402

from concepts import CONCEPTS, DEFAULT_CONCEPT, Concept  # noqa: E402
from lib_training.compare.grid import LoraFile  # noqa: E402
from lib_training.compare.metrics import (GroupMetrics, MetricsReport, diversity_score, drift_score,  # noqa: E402
                                          fidelity_score)
from lib_training.compare.recommend import Bounds, recommend  # noqa: E402
from lib_training.data.importer import TRAIN_DIRNAME  # noqa: E402
from lib_training.demo import world  # noqa: E402
from lib_training.demo.base_model import load_base, sample  # noqa: E402
from lib_training.demo.judge import load_judge, read  # noqa: E402
from lib_training.lora.io import load_lora  # noqa: E402
from lib_training.lora.metadata import VALIDATION_LOSS_KEY  # noqa: E402
from lib_training.train.loop import train  # noqa: E402
from methods import LORA_METHODS, Method, method  # noqa: E402
from metrics import lora_network, seen_accuracy  # noqa: E402
from run_quality import log  # noqa: E402
from teach import Datasets, engine_config, steps_per_epoch, write_dataset  # noqa: E402

SEEN_FACTOR, MAX_LEAKAGE, WITHIN = 0.9, 0.05, 0.05


@dataclass
class Cell:
    step: int
    weight: float
    fidelity: float  # the judge's
    seen_accuracy: float
    leakage: float
    val_loss: float | None
    compare: dict  # Compare's numbers from judge embeddings: fidelity, drift, diversity


@dataclass(frozen=True)
class Job:
    method: Method
    concept: Concept
    dataset: Path
    val_dir: Path
    out: Path
    seed: int
    every: int
    weights: tuple[float, ...]
    samples: int
    per_seen_prompt: int


def scaled(tensors: dict[str, torch.Tensor], weight: float) -> dict[str, torch.Tensor]:
    """The file at `weight` (A1111's <lora:name:weight>): every lora_up scaled."""
    return {k: v * weight if k.endswith("lora_up.weight") else v for k, v in tensors.items()}


def embed(judge, images: torch.Tensor) -> np.ndarray:
    return judge.embed(images).numpy()


def score_cell(model, judge, concept: Concept, job: Job, base_class: torch.Tensor, training: np.ndarray) -> dict:
    """Judge numbers and Compare numbers of the model as it is now (LoRA merged)."""
    seen, _ = seen_accuracy(model, judge, job.per_seen_prompt, seed=1)
    concept_images = sample(model, [concept.prompt] * job.samples, 2)
    class_images = sample(model, [concept.class_prompt] * job.samples, 3)
    rc, rk = read(judge, concept_images), read(judge, class_images)
    ec, ek, eb = embed(judge, concept_images), embed(judge, class_images), embed(judge, base_class)
    return {"fidelity": float(np.mean([concept.is_concept(rc, i) for i in range(job.samples)])),
            "seen_accuracy": seen.both,
            "leakage": float(np.mean([concept.is_leak(rk, i) for i in range(job.samples)])),
            "compare": {"fidelity": float(np.mean([fidelity_score(e[None], training) for e in ec])),
                        "drift": float(np.mean([drift_score(a[None], b[None]) for a, b in zip(ek, eb)])),
                        "diversity": diversity_score(ec)}}


def run_job(job: Job) -> dict:
    """Train one method x seed (a file every `every` steps, validation loss at each), score every file x weight."""
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    model, judge = load_base(), load_judge()
    config = engine_config(job.method, job.dataset, job.out, job.seed, job.every)
    config.validation.folder = str(job.val_dir / TRAIN_DIRNAME)
    config.validation.every_epochs = job.every // steps_per_epoch(job.method)
    started = time.monotonic()
    result = train(config, model)
    seconds = time.monotonic() - started
    training = embed(judge, torch.from_numpy(world.to_unit(np.stack(
        [np.asarray(_world_pixels(p)) for p in sorted((job.dataset / TRAIN_DIRNAME).rglob("*.png"))]))))
    base_class = sample(model, [job.concept.class_prompt] * job.samples, 3)
    base = score_cell(model, judge, job.concept, job, base_class, training)
    cells = []
    for path in result.files:
        tensors, meta = load_lora(path)
        step = int(meta["ss_steps"])
        val_loss = float(meta[VALIDATION_LOSS_KEY]) if VALIDATION_LOSS_KEY in meta else None
        for weight in job.weights:
            network = lora_network(model, scaled(tensors, weight), job.method, str(path))
            with network.merged():
                numbers = score_cell(model, judge, job.concept, job, base_class, training)
            cells.append(Cell(step, weight, val_loss=val_loss, **numbers))
            log(f"{job.method.name} seed {job.seed} step {step} w {weight:g}: judge {numbers['fidelity']:.2f} / "
                f"{numbers['seen_accuracy']:.2f} / {numbers['leakage']:.2f}, val {val_loss}")
    return {"concept": job.concept.name, "method": job.method.name, "seed": job.seed, "train_seconds": seconds,
            "base": base, "validation": result.validation, "cells": [asdict(c) for c in cells]}


def _world_pixels(path: Path):
    """A dataset PNG (64x64, the world upscaled 2x) back to the world's 32x32 pixels."""
    from PIL import Image

    return Image.open(path).convert("RGB").resize((world.SIZE, world.SIZE), Image.NEAREST)


# ---- the picks -------------------------------------------------------------------------------------
def shortfall(c: dict, base_seen: float) -> float:
    return max(0.0, SEEN_FACTOR * base_seen - c["seen_accuracy"]) + max(0.0, c["leakage"] - MAX_LEAKAGE)


def truth(cells: list[dict], base_seen: float) -> dict:
    """The judge's best admissible cell, else the least bad one."""
    return min(cells, key=lambda c: (shortfall(c, base_seen), -c["fidelity"], -c["weight"]))


def compare_pick(cells: list[dict], base: dict, bounds: Bounds) -> dict:
    """Compare's `recommend` on the cells' embedding numbers (the base as weight 0)."""
    groups = [GroupMetrics(LoraFile(Path(f"step{c['step']}.safetensors")), c["weight"], c["compare"]["fidelity"],
                           None, c["compare"]["drift"], c["compare"]["diversity"], 1) for c in cells]
    groups.append(GroupMetrics(None, 0.0, base["compare"]["fidelity"], None, None, base["compare"]["diversity"], 1))
    choice = recommend(MetricsReport((), tuple(groups)), bounds).choice
    return next(c for c in cells if f"step{c['step']}" == choice.file.name and c["weight"] == choice.weight)


def validation_pick(cells: list[dict]) -> dict | None:
    at_one = [c for c in cells if c["weight"] == 1.0 and c["val_loss"] is not None]
    return min(at_one, key=lambda c: (c["val_loss"], c["step"])) if at_one else None


def pick_table(runs: list[dict], bounds: Bounds) -> tuple[str, dict]:
    rows = ["| method | seed | truth (step @ w: fidelity / seen / leakage) | recommend | Δ fidelity | "
            "validation-loss min | Δ fidelity |", "|---|---|---|---|---|---|---|"]
    summary: dict[str, list] = {"recommend": [], "validation": []}
    for run in runs:
        base_seen = run["base"]["seen_accuracy"]
        t, r, v = truth(run["cells"], base_seen), compare_pick(run["cells"], run["base"], bounds), \
            validation_pick(run["cells"])
        cells = [_cell(t), _cell(r), f"{t['fidelity'] - r['fidelity']:+.2f}"]
        summary["recommend"].append(_hit(t, r, base_seen))
        if v is not None:
            cells += [_cell(v), f"{t['fidelity'] - v['fidelity']:+.2f}"]
            summary["validation"].append(_hit(t, v, base_seen))
        else:
            cells += ["—", "—"]
        rows.append(f"| {run['method']} | {run['seed']} | " + " | ".join(cells) + " |")
    totals = {k: {"same file": _share(h, "same_file"), "same cell": _share(h, "same_cell"),
                  f"within {WITHIN} fidelity and admissible as the truth": _share(h, "close")}
              for k, h in summary.items() if h}
    return "\n".join(rows), totals


def _cell(c: dict) -> str:
    return f"{c['step']} @ {c['weight']:g}: {c['fidelity']:.2f} / {c['seen_accuracy']:.2f} / {c['leakage']:.2f}"


def _hit(t: dict, p: dict, base_seen: float) -> dict:
    return {"same_file": p["step"] == t["step"], "same_cell": (p["step"], p["weight"]) == (t["step"], t["weight"]),
            "close": t["fidelity"] - p["fidelity"] <= WITHIN and shortfall(p, base_seen) <= shortfall(t, base_seen)}


def _share(hits: list[dict], key: str) -> str:
    n = sum(h[key] for h in hits)
    return f"{n}/{len(hits)}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--concept", default=DEFAULT_CONCEPT, choices=CONCEPTS)
    p.add_argument("--methods", nargs="+", default=["dreambooth_lora", "lora_te"], choices=LORA_METHODS)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--steps", type=int, help="training steps (default: the method's)")
    p.add_argument("--every", type=int, default=100, help="keep a file every N steps (a whole number of epochs)")
    p.add_argument("--weights", nargs="+", type=float, default=[0.5, 0.75, 1.0])
    p.add_argument("--samples", type=int, default=16, help="samples for fidelity and leakage per cell")
    p.add_argument("--per-seen-prompt", type=int, default=1)
    p.add_argument("--max-drift", type=float, default=Bounds.max_drift, help="recommend's drift bound")
    p.add_argument("--min-diversity", type=float, default=Bounds.min_diversity, help="recommend's diversity bound")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--load", type=Path, nargs="+",
                   help="re-pick from pick-<time>.json or pick-run-*.json files (no training; other bounds)")
    p.add_argument("--out", type=Path, default=HERE / "results")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    bounds = Bounds(max_drift=args.max_drift, min_diversity=args.min_diversity)
    started = time.monotonic()
    if args.load:
        runs = [r for path in args.load for r in _runs_in(json.loads(path.read_text()))]
    else:
        runs = collect(args)
    table, totals = pick_table(runs, bounds)
    total = time.monotonic() - started
    given = {"load": args.load} if args.load else vars(args)  # re-picked: the runs' own settings are in their files
    settings = {k: json.loads(json.dumps(v, default=str)) for k, v in given.items()} | \
        {"total_seconds": round(total), "bounds": asdict(bounds)}
    md = f"{table}\n\n{json.dumps(totals)}\n\n{json.dumps(settings)}\n"
    print(md)
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (args.out / f"pick-{stamp}.md").write_text(md, encoding="utf-8")
    (args.out / f"pick-{stamp}.json").write_text(json.dumps({"settings": settings, "totals": totals, "runs": runs},
                                                            indent=1), encoding="utf-8")
    return 0


def _runs_in(data: dict) -> list[dict]:
    return data["runs"] if "runs" in data else [data]


def collect(args: argparse.Namespace) -> list[dict]:
    """Every job's result; each is also written to results/pick-run-<concept>-<method>-<seed>.json as it comes in, so
    that a run cut short still leaves what it finished (re-pick them with --load)."""
    concept = CONCEPTS[args.concept]
    model = load_base()
    with tempfile.TemporaryDirectory(prefix="quality-pick-") as tmp:
        work = Path(tmp)
        datasets = Datasets()
        val_dir = write_dataset(work / "validation", model, concept, seed=99)
        steps = {"steps": args.steps} if args.steps else {}
        jobs = [Job(method(name, **steps), concept, datasets.get(work, model, method(name), concept), val_dir,
                    work / f"out-{name}-{seed}", seed, args.every, tuple(args.weights), args.samples,
                    args.per_seen_prompt) for name in args.methods for seed in args.seeds]
        args.out.mkdir(parents=True, exist_ok=True)
        runs = []
        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) as pool:
            for run in pool.map(run_job, jobs):
                name = f"pick-run-{run['concept']}-{run['method']}-{run['seed']}.json"
                (args.out / name).write_text(json.dumps(run), encoding="utf-8")
                runs.append(run)
        return runs


if __name__ == "__main__":
    sys.exit(main())
