#!/usr/bin/env python3
"""The GPU check: our CLI trained the way a GPU user trains, measured, in one short script.

    python bench/gpu_check.py --out /tmp/gpu_check           # on a lent GPU: <= 8 minutes on one H200
    python bench/gpu_check.py --out /tmp/gpu_dry --dry-run   # the same code on the CPU, tiny models (< 60 s)

On the GPU machine it builds random-weight checkpoints itself (tools/random_checkpoint.py: real SD1.5
and, when this build has the SDXL family, SDXL architectures; nothing large travels), writes a small
synthetic dataset, and trains our CLI (`python -m lib_training train`) ~30 steps per case:

    sd15_fp16   SD1.5, 512 px, fp16 weights + fp16 autocast (GradScaler), UNet + text encoder LoRA
    sd15_fp8    the same on fp8-stored weights (A1111's FP8 weight)
    sd15_8bit   the same with AdamW8bit (only when bitsandbytes imports)
    sdxl_bf16   SDXL, 1024 px, bf16, UNet only, gradient checkpointing (only when the build has SDXL)
    sdxl_fp8    the same on fp8-stored weights: the 8 GB card's set-up

Each case's numbers come from the run's own `stats.json` (lib_training/train/run_stats.py): steady
s/step (after step 1), images/s, peak VRAM (torch.cuda.max_memory_allocated and _reserved), and
the loss curve from its log.jsonl (finite, first -> last). With KOHYA_DIR=<sd-scripts checkout>
(KOHYA_PYTHON: its Python, default this one) kohya's train_network.py / sdxl_train_network.py run
with the same settings, and the table gets the ratio (ours / kohya s/step; kohya's is the rate its
progress bar reports at the end; its peak VRAM is read at its exit).

Results: <out>/gpu_check.json and <out>/gpu_check.md, rewritten after every case; Ctrl-C or SIGTERM
stops the running case, writes what was measured so far, prints the table, and exits 130.
`--budget-s` (default 450) skips cases that no longer fit.

What the GPU machine needs (it has no network):
  * Python >= 3.10 with torch (CUDA), transformers, safetensors, numpy, Pillow (installed there);
  * diffusers, carried as a wheel: `pip install --no-index --no-deps diffusers-<version>-py3-none-any.whl`
    (its own dependencies — huggingface_hub, regex, filelock, requests, importlib_metadata — come with
    transformers; tests/requirements-current.txt pins the version the tests run);
  * this checkout (lib_training/, tools/, bench/); tqdm, bitsandbytes and an sd-scripts checkout are
    optional;
  * CLIP's tokenizer files: open_clip's BPE file when open-clip-torch is installed there, else a folder
    with vocab.json + merges.txt (2.5 MB) made beforehand on a machine that has it and carried along:
        python bench/gpu_check.py --write-tokenizer      # writes bench/.cache/clip_tokenizer (git-ignored:
                                                         # carry it), used by default when present
    or given with --tokenizer-dir.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import re
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TOKENIZER_DIR = ROOT / "bench" / ".cache" / "clip_tokenizer"

STEPS = 30
BUDGET_S = 450
KOHYA_RATE = re.compile(r"(\d+(?:\.\d+)?)(s/it|it/s)")


@dataclass
class Case:
    name: str
    family: str  # sd1 | sdxl
    resolution: int
    weight_dtype: str
    mixed_precision: str
    unet_only: bool = False
    gradient_checkpointing: bool = False
    optimizer: str = "adamw"
    steps: int = STEPS
    min_seconds: int = 45  # skipped when less than this is left of the budget


@dataclass
class Result:
    case: dict
    status: str = "not run"  # ok | failed | skipped | stopped | not run
    reason: str = ""
    seconds: float = 0.0
    stats: dict = field(default_factory=dict)
    loss_first: float | None = None
    loss_last: float | None = None
    loss_finite: bool | None = None
    kohya: dict = field(default_factory=dict)


# ---- what runs ---------------------------------------------------------------------------------

def sdxl_available() -> bool:
    """True when this build's engine accepts an SDXL checkpoint (the model family exists)."""
    from lib_training.models import sd_configs

    return "sdxl" in getattr(sd_configs, "FAMILIES", ())


def bitsandbytes_available() -> bool:
    try:
        import bitsandbytes  # noqa: F401
    except Exception:  # it raises more than ImportError without a usable CUDA set-up
        return False
    return True


def plan_cases(dry_run: bool, only: set[str] | None) -> tuple[list[Case], list[str]]:
    """The cases to run and a note for each left out."""
    res_sd, res_xl, steps = (64, 64, 3) if dry_run else (512, 1024, STEPS)
    cases = [Case("sd15_fp16", "sd1", res_sd, "fp16", "fp16", steps=steps),
             Case("sd15_fp8", "sd1", res_sd, "fp8", "fp16", steps=steps)]
    notes = []
    if bitsandbytes_available() and not dry_run:
        cases.append(Case("sd15_8bit", "sd1", res_sd, "fp16", "fp16", optimizer="adamw8bit", steps=steps))
    else:
        notes.append("AdamW8bit: not run (" + ("dry run" if dry_run else "bitsandbytes does not import") + ")")
    if sdxl_available():
        cases += [Case("sdxl_bf16", "sdxl", res_xl, "bf16", "bf16", unet_only=True, gradient_checkpointing=True,
                       steps=steps, min_seconds=120),
                  Case("sdxl_fp8", "sdxl", res_xl, "fp8", "bf16", unet_only=True, gradient_checkpointing=True,
                       steps=steps, min_seconds=90)]
    else:
        notes.append("SDXL: not available in this build")
    if dry_run:
        from lib_training.train.precision import autocast_works
        import torch

        for case in cases:  # what the CPU can run: fp8 upcasts to bf16 there; fp16 autocast where it exists
            if case.weight_dtype == "fp8" or not autocast_works("cpu", torch.float16):
                case.weight_dtype = "bf16" if case.weight_dtype == "fp16" else case.weight_dtype
                case.mixed_precision = "bf16"
    if only:
        cases = [c for c in cases if c.name in only]
    return cases, notes


# ---- inputs, built on this machine -------------------------------------------------------------

def build_checkpoint(work: Path, family: str, tiny: bool) -> Path:
    from tools.random_checkpoint import make_random_checkpoint

    path = work / f"random-{family}{'-tiny' if tiny else ''}.safetensors"
    if not path.is_file():
        make_random_checkpoint(path, family, seed=0, half=True, tiny_size=tiny)
    return path


def build_dataset(work: Path, size: int, count: int) -> Path:
    """Synthetic photos (coloured shapes on gradients) with captions, kohya layout; Pillow + numpy only."""
    import numpy as np
    from PIL import Image, ImageDraw

    folder = work / f"dataset-{size}" / "1_sks shape"
    if folder.is_dir() and len(list(folder.glob("*.png"))) == count:
        return folder.parent
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        ramp = np.linspace(0, 1, size)[None, :, None] * rng.uniform(0, 255, 3) + rng.uniform(0, 60, 3)
        image = Image.fromarray(np.broadcast_to(ramp.clip(0, 255), (size, size, 3)).astype(np.uint8))
        draw = ImageDraw.Draw(image)
        x, y, r = (int(v) for v in rng.uniform([size * .3, size * .3, size * .1], [size * .7, size * .7, size * .25]))
        color = tuple(int(c) for c in rng.integers(0, 255, 3))
        (draw.ellipse if i % 2 else draw.rectangle)((x - r, y - r, x + r, y + r), fill=color)
        image.save(folder / f"{i:03d}.png")
        (folder / f"{i:03d}.txt").write_text(f"sks shape, a {'circle' if i % 2 else 'square'} on a gradient\n",
                                             encoding="utf-8")
    return folder.parent


# ---- our CLI --------------------------------------------------------------------------------------

def tokenizer_dir(given: str) -> str:
    """The tokenizer folder the runs use: given, carried (TOKENIZER_DIR), or "" (built from open_clip's BPE);
    SystemExit with what to do when there is none."""
    from lib_training.errors import CheckpointError
    from lib_training.models.clip_tokenizer import find_bpe_file

    if given:
        return given
    if (TOKENIZER_DIR / "vocab.json").is_file():
        return str(TOKENIZER_DIR)
    try:
        find_bpe_file()
    except CheckpointError as error:
        raise SystemExit(f"{error}\nOn a machine without open_clip: run `python bench/gpu_check.py "
                         f"--write-tokenizer` where it is installed and carry {TOKENIZER_DIR}.") from None
    return ""


def ours_command(case: Case, checkpoint: Path, dataset: Path, out: Path, device: str, tokenizer: str = "") -> list:
    config = out.parent / f"{case.name}.toml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(f"[model]\ntokenizer_dir = {json.dumps(tokenizer)}\n", encoding="utf-8")
    cmd = [sys.executable, "-m", "lib_training", "train", "--config", str(config),
           "--checkpoint", str(checkpoint), "--data", str(dataset),
           "--output-dir", str(out), "--name", case.name, "--steps", str(case.steps),
           "--resolution", str(case.resolution), "--rank", "16", "--alpha", "8", "--lr", "1e-4",
           "--te-lr", "0" if case.unet_only else "5e-5", "--optimizer", case.optimizer, "--batch-size", "1",
           "--seed", "42", "--save-every", "0", "--weight-dtype", case.weight_dtype,
           "--mixed-precision", case.mixed_precision, "--device", device, "--overwrite"]
    if case.unet_only:
        cmd.append("--unet-only")
    if case.gradient_checkpointing:
        cmd.append("--gradient-checkpointing")
    return cmd


def read_run(out: Path, case: Case, result: Result) -> None:
    from lib_training.train.run_stats import read_stats

    run_dir = out / "lora_studio_runs" / case.name
    result.stats = read_stats(run_dir) or {}
    log = run_dir / "log.jsonl"
    losses = [json.loads(line)["loss"] for line in log.read_text().splitlines()] if log.is_file() else []
    if losses:
        result.loss_first, result.loss_last = losses[0], losses[-1]
        result.loss_finite = all(math.isfinite(v) for v in losses)


# ---- kohya sd-scripts (optional) -----------------------------------------------------------------

KOHYA_WRAPPER = ("import atexit, json, runpy, sys, torch\n"
                 "def _peak():\n"
                 "    if torch.cuda.is_available():\n"
                 "        print('GPU_CHECK_PEAK', json.dumps([torch.cuda.max_memory_allocated() / 2**30, "
                 "torch.cuda.max_memory_reserved() / 2**30]), flush=True)\n"
                 "atexit.register(_peak)\n"
                 "script = sys.argv[1]; sys.argv = sys.argv[1:]\n"
                 "runpy.run_path(script, run_name='__main__')\n")


def kohya_command(kdir: Path, case: Case, checkpoint: Path, dataset: Path, out: Path, tokenizers: Path) -> list:
    script = "sdxl_train_network.py" if case.family == "sdxl" else "train_network.py"
    cmd = [os.environ.get("KOHYA_PYTHON", sys.executable), "-c", KOHYA_WRAPPER, str(kdir / script),
           "--pretrained_model_name_or_path", str(checkpoint), "--train_data_dir", str(dataset),
           "--output_dir", str(out), "--output_name", case.name, "--save_model_as", "safetensors",
           "--max_train_steps", str(case.steps), "--resolution", f"{case.resolution},{case.resolution}",
           "--network_module", "networks.lora", "--network_dim", "16", "--network_alpha", "8",
           "--optimizer_type", "AdamW8bit" if case.optimizer == "adamw8bit" else "AdamW",
           "--learning_rate", "1e-4", "--lr_scheduler", "constant", "--train_batch_size", "1", "--seed", "42",
           "--cache_latents", "--sdpa", "--mixed_precision", case.mixed_precision, "--save_precision", "fp16",
           "--caption_extension", ".txt", "--tokenizer_cache_dir", str(tokenizers),
           "--max_data_loader_n_workers", "0"]
    if case.unet_only:
        cmd.append("--network_train_unet_only")
    else:
        cmd += ["--text_encoder_lr", "5e-5"]
    if case.gradient_checkpointing:
        cmd.append("--gradient_checkpointing")
    if case.weight_dtype == "fp8":
        cmd.append("--fp8_base")  # kohya holds the base in the mixed-precision dtype otherwise, as we do
    return cmd


def kohya_tokenizers(work: Path, tokenizer: str = "") -> Path:
    """CLIP-L (and SDXL's bigG, the same BPE with pad '!') where kohya's --tokenizer_cache_dir looks."""
    from lib_training.models.clip_tokenizer import load_clip_tokenizer

    cache = work / "kohya_tokenizers"
    for name, pad in (("openai_clip-vit-large-patch14", None), ("laion_CLIP-ViT-bigG-14-laion2B-39B-b160k", "!")):
        target = cache / name
        if not (target / "vocab.json").is_file():
            tokenizer = load_clip_tokenizer(tokenizer)
            tokenizer.model_max_length = 77
            if pad:
                tokenizer.pad_token = pad
            tokenizer.save_pretrained(str(target))
    return cache


def parse_kohya(output: str) -> dict:
    found = {}
    rates = KOHYA_RATE.findall(output)
    if rates:
        value, unit = rates[-1]
        found["s_per_step"] = float(value) if unit == "s/it" else 1 / float(value)
    for line in output.splitlines():
        if line.startswith("GPU_CHECK_PEAK"):
            found["peak_allocated_gb"], found["peak_reserved_gb"] = json.loads(line.split(" ", 1)[1])
    return found


# ---- running, with a budget and partial results --------------------------------------------------

class Checker:
    def __init__(self, args: argparse.Namespace):
        self.args, self.out = args, Path(args.out).resolve()
        self.work = self.out / "work"
        self.started = time.monotonic()
        self.results: list[Result] = []
        self.notes: list[str] = []
        self.child: subprocess.Popen | None = None
        self.device = "cpu" if args.dry_run else "cuda"

    def left(self) -> float:
        return self.args.budget_s - (time.monotonic() - self.started)

    def run(self) -> int:
        self.work.mkdir(parents=True, exist_ok=True)
        self.tokenizer = tokenizer_dir(self.args.tokenizer_dir)
        cases, self.notes = plan_cases(self.args.dry_run, set(self.args.only.split(",")) if self.args.only else None)
        self.results = [Result(asdict(c)) for c in cases]
        kdir = os.environ.get("KOHYA_DIR")
        if not kdir:
            self.notes.append("kohya: not run (KOHYA_DIR is not set)")
        self.write()
        for case, result in zip(cases, self.results):
            if self.left() < case.min_seconds:
                result.status, result.reason = "skipped", f"{self.left():.0f} s of the budget left"
                continue
            self.run_case(case, result)
            if kdir and result.status == "ok" and self.left() > case.min_seconds:
                self.run_kohya(Path(kdir), case, result)
            self.write()
        self.write()
        print(self.markdown())
        return 0 if all(r.status in ("ok", "skipped") for r in self.results) else 1

    def inputs(self, case: Case) -> tuple[Path, Path]:
        checkpoint = build_checkpoint(self.work, case.family, tiny=self.args.dry_run)
        size = 96 if self.args.dry_run else case.resolution
        return checkpoint, build_dataset(self.work, size, 4 if self.args.dry_run else 8)

    def run_case(self, case: Case, result: Result) -> None:
        began = time.monotonic()
        try:
            checkpoint, dataset = self.inputs(case)
        except Exception as error:  # a family this build cannot make: say so, go on
            result.status, result.reason = "failed", f"building the inputs: {error}"
            return
        out = self.out / "runs" / case.name
        command = ours_command(case, checkpoint, dataset, out, self.device, self.tokenizer)
        code, output = self.spawn(command, out / "ours.log")
        result.seconds = round(time.monotonic() - began, 1)
        read_run(out, case, result)
        if code == 0 and result.loss_finite:
            result.status = "ok"
        else:
            result.status = "failed"
            result.reason = (f"exit {code}: " if code else "loss not finite: ") + output[-600:].strip()

    def run_kohya(self, kdir: Path, case: Case, result: Result) -> None:
        checkpoint, dataset = self.inputs(case)
        out = self.out / "runs" / f"kohya_{case.name}"
        cmd = kohya_command(kdir, case, checkpoint, dataset, out, kohya_tokenizers(self.work, self.tokenizer))
        code, output = self.spawn(cmd, out / "kohya.log", cwd=kdir)
        result.kohya = {"exit": code, **parse_kohya(output)}
        if code:
            result.kohya["error"] = output[-400:].strip()

    def spawn(self, cmd: list[str], log: Path, cwd: Path = ROOT) -> tuple[int, str]:
        log.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(ROOT)}
        with open(log, "w", encoding="utf-8") as sink:
            self.child = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=sink, stderr=subprocess.STDOUT)
            try:
                code = self.child.wait(timeout=max(1.0, self.left()))
            except subprocess.TimeoutExpired:
                self.child.kill()
                code = self.child.wait()
            finally:
                self.child = None
        return code, log.read_text(encoding="utf-8", errors="replace")

    def stop(self, signum, frame) -> None:
        """Ctrl-C / SIGTERM: stop the running case, keep everything measured so far."""
        if self.child is not None:
            self.child.kill()
        for result in self.results:
            if result.status == "not run":
                result.status, result.reason = "stopped", f"signal {signum}"
        self.write()
        print(self.markdown(), flush=True)
        sys.exit(130)

    # ---- output ----
    def meta(self) -> dict:
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        return {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "dry_run": self.args.dry_run,
                "device": self.device, "gpu": gpu, "torch": torch.__version__, "cuda": torch.version.cuda,
                "python": platform.python_version(), "elapsed_s": round(time.monotonic() - self.started, 1),
                "budget_s": self.args.budget_s}

    def write(self) -> None:
        from lib_training.fileio import atomic_write_text

        self.out.mkdir(parents=True, exist_ok=True)
        data = {"meta": self.meta(), "notes": self.notes, "results": [asdict(r) for r in self.results]}
        atomic_write_text(self.out / "gpu_check.json", json.dumps(data, indent=1))
        atomic_write_text(self.out / "gpu_check.md", self.markdown())

    def markdown(self) -> str:
        meta = self.meta()
        lines = [f"# GPU check — {meta['date']}", "",
                 f"{meta['gpu'] or 'CPU (dry run)'} · torch {meta['torch']} (CUDA {meta['cuda']}) · "
                 f"{meta['elapsed_s']:.0f} s of a {meta['budget_s']} s budget", "",
                 "| case | px | weights | autocast | steps | s/step | images/s | peak alloc GB | peak reserved GB "
                 "| loss first → last | kohya s/step | ours/kohya | status |",
                 "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in self.results:
            c, s, k = r.case, r.stats, r.kohya
            ratio = (s.get("steady_s_per_step") / k["s_per_step"]
                     if s.get("steady_s_per_step") and k.get("s_per_step") else None)
            loss = (f"{r.loss_first:.4f} → {r.loss_last:.4f}" + ("" if r.loss_finite else " (not finite)")
                    if r.loss_first is not None else "–")
            status = r.status + (f": {r.reason[:80]}" if r.reason else "")
            lines.append(f"| {c['name']} | {c['resolution']} | {c['weight_dtype']} | {c['mixed_precision']} | "
                         f"{s.get('steps', '–')} | {_num(s.get('steady_s_per_step'), 3)} | "
                         f"{_num(s.get('images_per_s'), 2)} | {_num(s.get('peak_allocated_gb'), 2)} | "
                         f"{_num(s.get('peak_reserved_gb'), 2)} | {loss} | {_num(k.get('s_per_step'), 3)} | "
                         f"{_num(ratio, 2)} | {status} |")
        lines += [""] + [f"* {note}" for note in self.notes]
        return "\n".join(lines) + "\n"


def _num(value, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="folder for gpu_check.json / .md, the runs and their logs")
    parser.add_argument("--tokenizer-dir", default="", help="CLIP tokenizer folder (vocab.json + merges.txt)")
    parser.add_argument("--write-tokenizer", action="store_true",
                        help=f"write the tokenizer files to {TOKENIZER_DIR} (to carry to the GPU machine) and exit")
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny models, 3 steps: the same code path")
    parser.add_argument("--budget-s", type=float, default=BUDGET_S, help="stop starting cases after this long")
    parser.add_argument("--only", default="", help="comma-separated case names (default: all that apply)")
    args = parser.parse_args(argv)
    if args.write_tokenizer:
        from lib_training.models.clip_tokenizer import find_bpe_file, write_tokenizer_files

        print(write_tokenizer_files(find_bpe_file(), TOKENIZER_DIR))
        return 0
    if not args.out:
        parser.error("--out is required")
    checker = Checker(args)
    signal.signal(signal.SIGTERM, checker.stop)
    signal.signal(signal.SIGINT, checker.stop)
    return checker.run()


if __name__ == "__main__":
    sys.exit(main())
