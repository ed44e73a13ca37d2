"""`lora-studio demo`: the whole loop — Dataset, Train, Compare — on the built-in toy model, in minutes on a CPU.

A toy: a 5 MB text-to-image model pre-trained on 32x32 coloured shapes, taught a shape it never saw
("a sks shape" = a blue star). It proves the installation and shows the loop; the files it writes are
the real formats (a kohya project folder, kohya LoRA files with their metadata, Compare's grid).
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..compare.curves import draw_loss_chart, read_loss_log
from ..data.health import check_dataset
from ..errors import SettingsError
from ..fileio import atomic_write_text
from ..lora.network import NetworkShape
from ..train.console import ConsoleProgress
from ..train.loop import train
from .base_model import load_base
from .compare import CompareOutcome, compare
from .dataset import write_project
from .judge import load_judge
from .recipe import FAST, FULL, TRIGGER, DemoSize, train_config

OURS = ("dataset", "runs", "cache", "grid.png", "loss.png", "report.md")  # what --overwrite may replace


@dataclass
class DemoResult:
    out: Path
    files: list[Path]
    outcome: CompareOutcome
    seconds: float


def run_demo(out: Path, seed: int = 1, fast: bool = False, overwrite: bool = False) -> DemoResult:
    out = Path(out)
    _check_out(out, overwrite)
    started = time.monotonic()
    size = FAST if fast else FULL
    torch.set_flush_denormal(True)  # the toy's tiny weights run into denormals (2x slower without)
    model, judge = load_base(), load_judge()  # both checked by their SHA-256

    print(f"[1/3] Dataset: {size.images} blue stars captioned '{TRIGGER} shape' + class images from the base model")
    dataset = write_project(out / "dataset", model, size, seed)
    print(check_dataset(dataset, resolution=64, trigger=TRIGGER).format_text())

    print("[2/3] Train: the Train tab's DreamBooth-LoRA recipe (Object preset + class images), toy scale")
    config = train_config(dataset, out, seed, size)
    config.output.overwrite = overwrite
    progress = ConsoleProgress()
    try:
        result = train(config, model, on_event=progress)
    finally:
        progress.close()
    loss = read_loss_log(Path(config.output.runs_dir) / config.output.name, "demo")
    draw_loss_chart([loss], title="Training loss (demo)").save(out / "loss.png")

    print("[3/3] Compare: grid of epochs x weights x prompts, the judge's scores, the recommendation")
    n = config.network
    shape = NetworkShape(n.rank, n.alpha, n.conv_rank, n.conv_alpha, n.train_text_encoder)
    training_images = sorted((dataset / "img").glob("*/*.png"))
    outcome = compare(model, judge, result.files, training_images, out, shape, size.judge_samples)
    demo = DemoResult(out, result.files, outcome, time.monotonic() - started)
    atomic_write_text(out / "report.md", report_markdown(demo, size))
    print(summary(demo))
    return demo


def _check_out(out: Path, overwrite: bool) -> None:
    """Refuse a non-empty folder (nothing of the user's is replaced); with --overwrite, clear our own files."""
    if out.exists() and not out.is_dir():
        raise SettingsError(f"{out} is a file; give --out a folder.")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise SettingsError(f"{out} is not empty; choose another --out, or --overwrite to replace a "
                                "previous demo's files there.")
        for name in OURS:
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    out.mkdir(parents=True, exist_ok=True)


def table_lines(demo: DemoResult) -> list[str]:
    o = demo.outcome
    rows = ["| choice | judge: fidelity | judge: P(blue star) | judge: seen prompts right | Compare: fidelity "
            "| Compare: drift |", "|---|---|---|---|---|---|"]
    numbers = {(str(g.file.path) if g.file else None, g.weight): g for g in o.report.groups}
    for s in o.judge_scores:
        g = numbers.get((str(s.file) if s.file else None, s.weight))
        fid = f"{g.fidelity:.2f}" if g is not None and g.fidelity is not None else "-"
        drift = f"{g.drift:.2f}" if g is not None and g.drift is not None else "-"
        rows.append(f"| {s.label} | {s.fidelity:.2f} | {s.belief:.2f} | {s.seen:.2f} | {fid} | {drift} |")
    return rows


def summary(demo: DemoResult) -> str:
    o = demo.outcome
    lines = ["", *table_lines(demo), "",
             f"Compare recommends: {o.pick.choice.label} — {o.pick.reason}",
             f"The judge's best:   {o.judge_best.label} (fidelity {o.judge_best.fidelity:.2f}, "
             f"seen prompts {o.judge_best.seen:.2f})", "",
             f"Done in {demo.seconds:.0f} s. Everything is in {demo.out}/: LoRA files "
             f"({', '.join(p.name for p in demo.files)}), grid.png, loss.png, report.md, dataset/.",
             "This was a toy model: it proves the installation and shows the loop. For a real checkpoint:",
             "  lora-studio train --checkpoint sd15.safetensors --data my_dataset --output-dir models/Lora "
             "--name my_lora"]
    return "\n".join(lines)


def report_markdown(demo: DemoResult, size: DemoSize) -> str:
    o = demo.outcome
    return "\n".join([
        "# LoRA Studio demo", "",
        "A toy text-to-image model (5 MB, 32x32 coloured shapes) learned a shape it never saw: "
        "'a sks shape' = a blue star, from "
        f"{size.images} images, with class images for prior preservation. A judge (a small CNN) reads "
        "what each sample shows.", "",
        *table_lines(demo), "",
        f"* Compare's recommendation: **{o.pick.choice.label}** — {o.pick.reason}",
        f"* The judge's best: **{o.judge_best.label}** (fidelity {o.judge_best.fidelity:.2f}, seen prompts "
        f"{o.judge_best.seen:.2f})",
        "* judge: fidelity = share of 'a sks shape' samples drawn as a blue star; P(blue star) = the judge's mean "
        "probability of a blue star in them (it rises before whole stars appear); seen prompts right = share of "
        "'a red circle' / 'a yellow square' samples right in shape and colour (the base model's drift check).",
        "* Compare: fidelity = similarity to the training images, drift = change of 'a shape' with vs. "
        "without the LoRA, measured on the judge's reading of the images.", "",
        "Files: " + ", ".join(p.name for p in demo.files) + ", grid.png (epochs x weights x prompts x seeds), "
        "loss.png, dataset/ (a kohya project folder).", "",
        f"Time: {demo.seconds:.0f} s.", ""])
