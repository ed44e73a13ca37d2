#!/usr/bin/env python3
"""LoRA Studio vs kohya sd-scripts: the same LoRA training run, timed side by side on this machine.

    python bench/run_bench.py            # 128 and 256 px, gradient checkpointing off/on, 2 repetitions
    python bench/run_bench.py --quick    # 128 px only, 1 repetition
    python bench/run_bench.py --family sdxl --checkpoint random-sdxl.safetensors --resolutions 128 256

Our CLI always runs. kohya's train_network.py (sdxl_train_network.py with --family sdxl) runs as
well when KOHYA_DIR (an sd-scripts checkout) and KOHYA_PYTHON (the Python of its environment) are
set; see bench/README.md.
OURS_PYTHON picks the Python for our CLI (default: .venv-tests/a1111/bin/python, else this one).

Inputs are built once into bench/.cache/: a random-weight SD1.5 checkpoint (real architecture,
seed 0, fp16; SDXL with --family sdxl unless --checkpoint names one), eight scikit-image photos
with captions in kohya layout, and the CLIP tokenizers (CLIP-L, and OpenCLIP bigG for SDXL) for
kohya's --tokenizer_cache_dir. Run outputs and timestamped logs go to bench/out/; the
results to bench/results/bench-<time>.json and .md (the table is also printed).

Only the standard library is used here; the tools themselves run as child processes.
"""

from __future__ import annotations

import argparse
import codecs
import datetime as dt
import json
import os
import platform
import re
import shutil
import statistics
import struct
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
CACHE = BENCH / ".cache"
OUT = BENCH / "out"
RESULTS = BENCH / "results"
CHECKPOINT = CACHE / "random-sd15-seed0.safetensors"
SDXL_CHECKPOINT = CACHE / "random-sdxl-seed0.safetensors"
DATASET = CACHE / "dataset"
KOHYA_TOKENIZERS = CACHE / "kohya_tokenizers"
NUM_IMAGES = 8  # bench/prepare.py PHOTOS

# The settings both tools get (the brief of the [bench] issue).
RANK, ALPHA, LR, BATCH, SEED = 16, 16, 1e-4, 1, 42
STEPS_FULL, STEPS_QUICK = 20, 20
SKIP_STEPS = 2  # steady step time excludes the first two steps



@dataclass(frozen=True)
class Family:
    """What differs between the SD1.5 bench and the SDXL one."""
    name: str  # tools/random_checkpoint.py --family
    title: str
    checkpoint: Path  # built on first use when --checkpoint is not given
    kohya_script: str
    unet_only: bool  # SDXL: UNet-only LoRA (kohya --network_train_unet_only, ours --unet-only)
    steps: int
    grad_ckpt: str  # default --grad-ckpt
    resolutions: tuple[int, ...]
    flops: bool  # count FLOPs by default (bench/flops.py: UNet + text-encoder LoRA)
    webui_options: tuple[tuple[str, object], ...] = ()  # A1111 options for the WebUI case
    webui_boot_s: float = 600.0


FAMILIES = {
    "sd1": Family("sd1", "SD1.5", CHECKPOINT, "train_network.py", unet_only=False, steps=STEPS_FULL, grad_ckpt="both",
                  resolutions=(128, 256), flops=True),
    # The issue: UNet only, gradient checkpointing on, fp32 on the CPU, 10 steps.
    # Live previews would download vaeapprox-sdxl.pt at the first SDXL image (A1111 ships SD1's only).
    "sdxl": Family("sdxl", "SDXL", SDXL_CHECKPOINT, "sdxl_train_network.py", unet_only=True, steps=10,
                   grad_ckpt="on", resolutions=(128,), flops=False,
                   webui_options=(("live_previews_enable", False),), webui_boot_s=1200.0),
}

# tqdm's "  7/20 [" - the training bar of both tools (caching bars count images, not steps).
PROGRESS = re.compile(r"(\d+)/(\d+) \[")


# ------------------------------------------------------------------------------------------
# inputs
# ------------------------------------------------------------------------------------------
def ours_python() -> str:
    env = os.environ.get("OURS_PYTHON")
    if env:
        return env
    venv = ROOT / ".venv-tests" / "a1111" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def kohya_setup() -> tuple[Path, str] | None:
    kdir, kpy = os.environ.get("KOHYA_DIR"), os.environ.get("KOHYA_PYTHON")
    if not kdir or not kpy:
        return None
    kdir_path = Path(kdir)
    if not (kdir_path / "train_network.py").is_file():
        sys.exit(f"KOHYA_DIR={kdir} has no train_network.py (it should be an sd-scripts checkout).")
    if not Path(kpy).exists():
        sys.exit(f"KOHYA_PYTHON={kpy} does not exist.")
    return kdir_path, kpy


def prepare_inputs(py: str, with_kohya: bool, checkpoint: Path = CHECKPOINT, family: str = "sd1") -> None:
    CACHE.mkdir(parents=True, exist_ok=True)
    if not checkpoint.is_file():
        if checkpoint.resolve() != FAMILIES[family].checkpoint.resolve():
            sys.exit(f"--checkpoint {checkpoint} does not exist.")
        print(f"building {checkpoint.name} (random {FAMILIES[family].title} weights, seed 0) ...", flush=True)
        subprocess.run([py, str(ROOT / "tools" / "random_checkpoint.py"), "--family", family,
                        "--out", str(checkpoint), "--seed", "0"], check=True, cwd=ROOT)
    subprocess.run([py, str(BENCH / "prepare.py"), "dataset", str(DATASET)], check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL)
    if with_kohya:
        subprocess.run([py, str(BENCH / "prepare.py"), "kohya-tokenizer", str(KOHYA_TOKENIZERS)], check=True,
                       cwd=ROOT, stdout=subprocess.DEVNULL)


def warm_caches(pythons: list[tuple[str, Path]], checkpoint: Path = CHECKPOINT) -> None:
    """Same starting point for every run: checkpoint and libraries in the page cache."""
    with open(checkpoint, "rb") as f:
        while f.read(1 << 24):
            pass
    for py, cwd in pythons:
        subprocess.run([py, "-c", "import torch, diffusers, transformers, safetensors"], cwd=cwd,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)


# ------------------------------------------------------------------------------------------
# commands
# ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Config:
    resolution: int
    grad_ckpt: bool
    steps: int
    family: str = "sd1"
    checkpoint: Path = CHECKPOINT

    @property
    def label(self) -> str:
        label = f"{self.resolution}px gc={'on' if self.grad_ckpt else 'off'}"
        return label if self.family == "sd1" else f"{FAMILIES[self.family].title} {label}"

    @property
    def key(self) -> str:
        key = f"{self.resolution}_gc{int(self.grad_ckpt)}"
        return key if self.family == "sd1" else f"{self.family}_{key}"

    @property
    def unet_only(self) -> bool:
        return FAMILIES[self.family].unet_only


def ours_command(py: str, cfg: Config, out_dir: Path, name: str) -> list[str]:
    cmd = [py, "-m", "lib_training", "train",
           "--checkpoint", str(cfg.checkpoint), "--data", str(DATASET),
           "--output-dir", str(out_dir), "--name", name,
           "--steps", str(cfg.steps), "--resolution", str(cfg.resolution),
           "--rank", str(RANK), "--alpha", str(ALPHA),
           "--optimizer", "adamw", "--lr", str(LR),
           # kohya: TE lr = lr when unset; SDXL: UNet only (kohya --network_train_unet_only)
           *(["--unet-only"] if cfg.unet_only else ["--te-lr", str(LR)]),
           "--scheduler", "constant", "--warmup-steps", "0",
           "--batch-size", str(BATCH), "--seed", str(SEED),
           "--save-every", "0",  # kohya saves only the final file by default
           "--mixed-precision", "no", "--device", "cpu", "--overwrite"]
    # latents are cached in memory by default (kohya: --cache_latents); attention is SDPA
    # (diffusers' AttnProcessor2_0, kohya: --sdpa); the LoRA file is saved as fp16 (kohya: --save_precision fp16)
    if cfg.grad_ckpt:
        cmd.append("--gradient-checkpointing")
    return cmd


def kohya_command(py: str, kdir: Path, cfg: Config, out_dir: Path, name: str) -> list[str]:
    cmd = [py, str(kdir / FAMILIES[cfg.family].kohya_script),
           "--pretrained_model_name_or_path", str(cfg.checkpoint), "--train_data_dir", str(DATASET),
           "--output_dir", str(out_dir), "--output_name", name, "--save_model_as", "safetensors",
           "--max_train_steps", str(cfg.steps), "--resolution", f"{cfg.resolution},{cfg.resolution}",
           "--network_module", "networks.lora", "--network_dim", str(RANK), "--network_alpha", str(ALPHA),
           "--optimizer_type", "AdamW", "--learning_rate", str(LR), "--lr_scheduler", "constant",
           "--train_batch_size", str(BATCH), "--seed", str(SEED),
           "--cache_latents", "--sdpa", "--mixed_precision", "no", "--save_precision", "fp16",
           "--caption_extension", ".txt", "--tokenizer_cache_dir", str(KOHYA_TOKENIZERS),
           # kohya's default is min(8, cpu_count) DataLoader worker processes, re-spawned every
           # epoch; our engine loads in-process. 0 = in-process for kohya too (its faster setting
           # for cached latents on a small CPU; see README).
           "--max_data_loader_n_workers", "0"]
    if cfg.unet_only:
        # No --cache_text_encoder_outputs: kohya runs both frozen text encoders on every step's
        # caption, ours on each caption the first time it comes (8 captions, so steps 1-8; see README).
        cmd.append("--network_train_unet_only")
    if cfg.grad_ckpt:
        cmd.append("--gradient_checkpointing")
    return cmd


def webui_request(cfg: Config, name: str) -> dict:
    """The same settings as `ours_command`, as a /lora-studio/v1/start body (the WebUI trains its
    loaded model: no checkpoint, no device, and A1111's --no-half keeps it fp32)."""
    return {
        # the WebUI's request defaults come from a preset: name every setting the CLI leaves at its default
        "data": {"train_dir": str(DATASET), "resolution": cfg.resolution, "bucketing": False,
                 "shuffle_captions": False, "keep_tokens": 0, "flip": False},
        "network": {"rank": RANK, "alpha": ALPHA, "train_text_encoder": not cfg.unet_only},
        "optimizer": {"optimizer": "adamw", "unet_lr": LR, "text_encoder_lr": 0.0 if cfg.unet_only else LR,
                      "scheduler": "constant",
                      "warmup_steps": 0},
        "train": {"max_steps": cfg.steps, "batch_size": BATCH, "seed": SEED, "save_every_epochs": 0,
                  "mixed_precision": "no", "gradient_checkpointing": cfg.grad_ckpt, "sample_every_steps": 0,
                  "min_snr_gamma": 0.0, "noise_offset": 0.0},
        "output": {"name": name, "overwrite": True},
    }


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update(PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               PYTHONPATH=str(ROOT))
    env.update(extra or {})
    return env


# ------------------------------------------------------------------------------------------
# measuring one run
# ------------------------------------------------------------------------------------------
def _cpu_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine from /proc/stat."""
    with open("/proc/stat") as f:
        parts = [int(x) for x in f.readline().split()[1:]]
    idle = parts[3] + (parts[4] if len(parts) > 4 else 0)
    return sum(parts) - idle, sum(parts)


def _tree_rss_kb(root_pid: int) -> int:
    """Summed VmRSS of root_pid and all its descendants."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
            with open(f"/proc/{entry}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss[int(entry)] = int(line.split()[1])
                        break
        except (OSError, IndexError, ValueError):
            continue
    total, stack = 0, [root_pid]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, []))
    return total


def _tree_cpu_s(root_pid: int) -> float:
    """user + system CPU seconds of root_pid (with its waited-for children)."""
    try:
        with open(f"/proc/{root_pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def others_cpu_cores(seconds: float = 3.0) -> float:
    """Cores' worth of CPU the rest of the machine uses right now (nothing of ours is running)."""
    b0, t0 = _cpu_jiffies()
    time.sleep(seconds)
    b1, t1 = _cpu_jiffies()
    return (b1 - b0) / max(t1 - t0, 1) * os.cpu_count()


def wait_for_quiet(limit_s: float, threshold: float) -> float:
    """Wait (up to limit_s) until other processes used under `threshold` cores for 10 s; return their use."""
    deadline = time.monotonic() + limit_s
    while True:
        busy = others_cpu_cores(5.0)
        if busy <= threshold:
            second = others_cpu_cores(5.0)
            if second <= threshold:
                return max(busy, second)
            busy = second
        if time.monotonic() >= deadline:
            return busy
        time.sleep(5)


@dataclass
class RunResult:
    tool: str
    config: str
    rep: int
    returncode: int
    wall_s: float
    first_step_s: float | None  # process start -> step 1 done
    loop_start_s: float | None  # process start -> training bar at 0 (model loaded, latents cached)
    step_times_s: list[float] = field(default_factory=list)  # step k done - step k-1 done, k = 1..N
    steady_step_s: float | None = None  # median over steps > SKIP_STEPS
    step_cpu_s: list[float] = field(default_factory=list)  # CPU seconds (all threads) per step
    steady_step_cpu_s: float | None = None
    first_step_cpu_s: float | None = None  # CPU seconds used from start to step 1 done
    peak_rss_mb: float = 0.0  # max(summed RSS of the process tree polled every 0.2 s, kernel ru_maxrss)
    ru_maxrss_mb: float = 0.0
    cpu_s: float = 0.0  # user + system of the tool's processes
    others_cores: float = 0.0  # other processes' CPU use during the run, in cores (noise)
    others_before: float = 0.0
    lora_bytes: int | None = None
    lora_tensor_bytes: int | None = None
    lora_header_bytes: int | None = None
    lora_keys: list[str] | None = None
    log: str = ""
    discarded: bool = False  # noisy, replaced by a rerun
    aborted: bool = False  # stopped early because other processes took the CPU


def run_measured(tool: str, cfg: Config, rep: int, cmd: list[str], cwd: Path, out_dir: Path, name: str,
                 log_path: Path, others_before: float, abort_after_s: float = 0.0,
                 abort_limit: float = 0.0, extra_env: dict[str, str] | None = None) -> RunResult:
    """Run one training; with abort_after_s, kill it once other processes used more than
    abort_limit cores over the last abort_after_s seconds (the caller runs it again later)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    marks: dict[int, float] = {}
    cpu_marks: dict[int, float] = {}  # CPU seconds the tool had used at each mark (less noise-sensitive)
    peak = [0]
    busy0, total0 = _cpu_jiffies()
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=cwd, env=child_env(extra_env), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    done = threading.Event()

    aborted = [False]

    def poll() -> None:
        """Peak RSS of the tree; and stop the run when other processes keep the CPU busy."""
        window: list[tuple[float, int, int, float]] = []  # (time, busy, total, our cpu s)
        while not done.is_set():
            peak[0] = max(peak[0], _tree_rss_kb(proc.pid))
            if abort_after_s:
                now_t = time.monotonic()
                if not window or now_t - window[-1][0] >= 1.0:
                    window.append((now_t, *_cpu_jiffies(), _tree_cpu_s(proc.pid)))
                    while window and now_t - window[0][0] > abort_after_s:
                        window.pop(0)
                    t0, b0, j0, c0 = window[0]
                    if now_t - t0 >= abort_after_s * 0.9:
                        others = (window[-1][1] - b0) / max(window[-1][2] - j0, 1) * os.cpu_count() \
                            - (window[-1][3] - c0) / (now_t - t0)
                        if others > abort_limit:
                            aborted[0] = True
                            proc.kill()
                            return
            done.wait(0.2)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pending, pending_t = "", 0.0
    with open(log_path, "w", encoding="utf-8") as log:
        log.write(f"# {' '.join(cmd)}\n")
        while True:
            chunk = os.read(proc.stdout.fileno(), 65536)
            now = time.monotonic() - start
            if not chunk:
                break
            started_at = pending_t if pending else now
            pending += decoder.decode(chunk)
            *segments, pending = re.split(r"[\r\n]", pending)
            pending_t = now if segments else started_at
            # tqdm writes "\r<bar>" and flushes: the bar's text is complete before the next "\r"
            # arrives, so the unterminated tail is parsed now, not when the next write ends it.
            for segment in segments + [pending]:
                match = PROGRESS.search(segment)
                if match and int(match.group(2)) == cfg.steps and int(match.group(1)) not in marks:
                    marks[int(match.group(1))] = now
                    cpu_marks[int(match.group(1))] = _tree_cpu_s(proc.pid)
            for i, segment in enumerate(segments):  # stamped with the time its text arrived
                if segment.strip():
                    log.write(f"[{started_at if i == 0 else now:9.3f}] {segment}\n")
        if pending.strip():
            log.write(f"[{pending_t:9.3f}] {pending}\n")
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    done.set()
    poller.join()
    busy1, total1 = _cpu_jiffies()
    machine_busy_s = (busy1 - busy0) / max(total1 - total0, 1) * os.cpu_count() * wall
    cpu_s = usage.ru_utime + usage.ru_stime
    result = RunResult(tool=tool, config=cfg.key, rep=rep, returncode=proc.returncode, wall_s=wall,
                       first_step_s=marks.get(1), loop_start_s=marks.get(0),
                       peak_rss_mb=max(peak[0], usage.ru_maxrss) / 1024, ru_maxrss_mb=usage.ru_maxrss / 1024,
                       cpu_s=cpu_s, others_cores=max(machine_busy_s - cpu_s, 0.0) / wall,
                       others_before=others_before, log=str(log_path.relative_to(ROOT)), aborted=aborted[0])
    result.step_times_s = _step_times(marks, cfg.steps)
    steady = [t for k, t in enumerate(result.step_times_s, start=1) if k > SKIP_STEPS and t is not None]
    result.steady_step_s = statistics.median(steady) if steady else None
    result.step_cpu_s = _step_times(cpu_marks, cfg.steps)
    steady_cpu = [t for k, t in enumerate(result.step_cpu_s, start=1) if k > SKIP_STEPS and t is not None]
    result.steady_step_cpu_s = statistics.median(steady_cpu) if steady_cpu else None
    result.first_step_cpu_s = cpu_marks.get(1)
    lora = out_dir / f"{name}.safetensors"
    if lora.is_file():
        result.lora_bytes = lora.stat().st_size
        result.lora_header_bytes, result.lora_tensor_bytes, result.lora_keys = safetensors_layout(lora)
    if proc.returncode != 0 and not aborted[0]:
        print(f"  !! {tool} exited with {proc.returncode}; see {log_path}", flush=True)
    return result


def _step_times(marks: dict[int, float], steps: int) -> list[float | None]:
    """Duration of each step from the bar's timestamps; a step the bar skipped shares the gap evenly."""
    times: list[float | None] = [None] * steps
    seen = sorted(k for k in marks if 0 <= k <= steps)
    for prev, cur in zip(seen, seen[1:]):
        per = (marks[cur] - marks[prev]) / (cur - prev)
        for k in range(prev + 1, cur + 1):
            times[k - 1] = per
    return times


def safetensors_layout(path: Path) -> tuple[int, int, list[str]]:
    """(header bytes, tensor bytes, sorted tensor names) of a .safetensors file."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    tensor_bytes = sum(v["data_offsets"][1] - v["data_offsets"][0] for v in header.values())
    keys = sorted(f"{k}:{v['dtype']}:{'x'.join(map(str, v['shape']))}" for k, v in header.items())
    return 8 + n, tensor_bytes, keys


# ------------------------------------------------------------------------------------------
# FLOPs / GEMM
# ------------------------------------------------------------------------------------------
def measure_flops(py: str, configs: list[Config]) -> dict | None:
    cmd = [py, str(BENCH / "flops.py"), "--checkpoint", str(configs[0].checkpoint), "--rank", str(RANK),
           "--alpha", str(ALPHA), "--configs", *[f"{c.resolution}:{int(c.grad_ckpt)}" for c in configs]]
    print("counting FLOPs of one training step and timing a 4096x4096 fp32 GEMM ...", flush=True)
    proc = subprocess.run(cmd, cwd=ROOT, env=child_env(), capture_output=True, text=True)
    if proc.returncode != 0:
        print(f"  !! flops.py failed:\n{proc.stderr[-2000:]}", flush=True)
        return None
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------
# summary
# ------------------------------------------------------------------------------------------
def _median(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _ratios(ours: list[RunResult], kohya: list[RunResult], attr: str) -> tuple[float, float, float] | None:
    """(ratio of medians, min, max) of ours/kohya over all pairs of repetitions."""
    a = [getattr(r, attr) for r in ours if getattr(r, attr)]
    b = [getattr(r, attr) for r in kohya if getattr(r, attr)]
    if not a or not b:
        return None
    pairs = [x / y for x in a for y in b]
    return statistics.median(a) / statistics.median(b), min(pairs), max(pairs)


METRICS = [
    ("first_step_s", "start → step 1 done (s)", "{:.1f}"),
    ("loop_start_s", "start → training loop (s)", "{:.1f}"),
    ("steady_step_s", "steady step (s, median, steps 3+)", "{:.2f}"),
    ("steady_step_cpu_s", "steady step CPU time (s, all threads)", "{:.2f}"),
    ("first_step_cpu_s", "start → step 1 CPU time (s)", "{:.1f}"),
    ("peak_rss_mb", "peak RSS (MB)", "{:.0f}"),
    ("lora_bytes", "LoRA file (bytes)", "{:.0f}"),
    ("lora_tensor_bytes", "LoRA tensors (bytes)", "{:.0f}"),
    ("others_cores", "other processes' CPU (cores, noise)", "{:.2f}"),
]


def summarize(results: list[RunResult], configs: list[Config], flops: dict | None) -> dict:
    summary: dict = {}
    for cfg in configs:
        rows = {}
        runs = {tool: [r for r in results if r.config == cfg.key and r.tool == tool and r.returncode == 0]
                for tool in ("ours", "kohya")}
        for attr, _, _ in METRICS:
            row = {tool: _median([getattr(r, attr) for r in runs[tool]]) for tool in runs}
            row.update({f"{tool}_all": [getattr(r, attr) for r in runs[tool]] for tool in runs})
            ratio = _ratios(runs["ours"], runs["kohya"], attr)
            row["ratio"] = ratio
            rows[attr] = row
        same_keys = None
        if runs["ours"] and runs["kohya"] and runs["ours"][0].lora_keys and runs["kohya"][0].lora_keys:
            same_keys = runs["ours"][0].lora_keys == runs["kohya"][0].lora_keys
        entry = {"label": cfg.label, "metrics": rows, "same_tensor_names_dtypes_shapes": same_keys}
        if flops:
            step_flops = flops["step_flops"].get(f"{cfg.resolution}:{int(cfg.grad_ckpt)}")
            gemm = flops["gemm_flops_per_s"]
            entry["step_gflop"] = step_flops / 1e9 if step_flops else None
            for tool in ("ours", "kohya"):
                step = rows["steady_step_s"][tool]
                if step_flops and step:
                    entry[f"{tool}_achieved_gflops"] = step_flops / step / 1e9
                    entry[f"{tool}_gemm_fraction"] = step_flops / step / gemm
        summary[cfg.key] = entry
    return summary


WEBUI_METRICS = [
    # target (WebUI / kohya standalone); SDXL's issue sets only the peak RSS one (webui_target)
    ("first_step_s", "first_step_s", "train request → step 1 done (s)", "{:.1f}", 0.1),
    ("steady_step_s", "steady_step_s", "steady step (s, median, steps 3+)", "{:.2f}", None),
    ("peak_rss_mb", "peak_rss_mb", "peak RSS of the whole process while training (MB)", "{:.0f}", 1.0),
    ("rss_before_mb", None, "RSS before the request (WebUI idle, model loaded; MB)", "{:.0f}", None),
    ("lora_bytes", "lora_bytes", "LoRA file (bytes)", "{:.0f}", None),
]


def webui_target(attr: str, target: float | None, family: str) -> float | None:
    return None if family == "sdxl" and attr != "peak_rss_mb" else target


def summarize_webui(webui_runs: list, results: list[RunResult], configs: list[Config]) -> dict:
    """Per config: the WebUI's medians against kohya standalone's from the same bench run."""
    summary = {}
    for cfg in configs:
        ours = [r for r in webui_runs if r.config == cfg.key and r.state == "finished"]
        kohya = [r for r in results if r.config == cfg.key and r.tool == "kohya" and r.returncode == 0]
        rows = {}
        for attr, kohya_attr, _, _, target in WEBUI_METRICS:
            a = [getattr(r, attr) for r in ours if getattr(r, attr)]
            b = [getattr(r, kohya_attr) for r in kohya if getattr(r, kohya_attr)] if kohya_attr else []
            row = {"webui": _median(a), "kohya": _median(b), "webui_all": a, "kohya_all": b, "ratio": None,
                   "target": webui_target(attr, target, cfg.family)}
            if a and b:
                pairs = [x / y for x in a for y in b]
                row["ratio"] = (statistics.median(a) / statistics.median(b), min(pairs), max(pairs))
            rows[attr] = row
        summary[cfg.key] = {"label": cfg.label, "metrics": rows}
    return summary


def markdown_webui(summary: dict) -> list[str]:
    lines = ["## The WebUI case (A1111 with the checkpoint already loaded) vs kohya standalone", "",
             "Our numbers are the A1111 process (`launch.py`, fp32 `--no-half`, CPU) training through "
             "`/lora-studio/v1/start`; kohya's are its standalone runs above, same checkpoint and settings.", ""]
    if any(entry["metrics"]["first_step_s"]["target"] is None for entry in summary.values()):
        lines += ["SDXL: the one target is the whole process's peak RSS ≤ kohya's standalone peak; "
                  "request → step 1 is reported without one.", ""]
    for entry in summary.values():
        lines += [f"### {entry['label']}", "", "| metric | WebUI | kohya | WebUI/kohya (min–max) | target |",
                  "|---|---|---|---|---|"]
        for attr, _, label, fmt, _ in WEBUI_METRICS:
            row = entry["metrics"][attr]
            ratio, target = row["ratio"], row["target"]
            ratio_text = "" if ratio is None else f"{ratio[0]:.2f} ({ratio[1]:.2f}–{ratio[2]:.2f})"
            verdict = "" if target is None or ratio is None else (
                f"≤ {target}: {'MET' if ratio[0] <= target else 'not met'}")
            lines.append(f"| {label} | {_fmt(row['webui'], fmt)} | {_fmt(row['kohya'], fmt)} | {ratio_text} | {verdict} |")
        lines.append("")
    return lines


def _fmt(value, fmt: str) -> str:
    return "–" if value is None else fmt.format(value)


def markdown(summary: dict, flops: dict | None, meta: dict) -> str:
    family = FAMILIES[meta.get("family", "sd1")]
    lines = [f"# LoRA Studio vs kohya sd-scripts — {meta['date']}", "",
             f"Machine: {meta['machine']}. torch threads: default. Reps per config: {meta['reps']}; "
             f"{meta['steps']} steps, rank {RANK}, alpha {ALPHA}, AdamW lr {LR}, batch {BATCH}, "
             f"cached latents, SDPA, fp32 on CPU, {'UNet-only' if family.unet_only else 'UNet+TE'} LoRA, "
             "LoRA saved fp16.", ""]
    if meta.get("family") or meta.get("kohya_commit") or meta.get("torch"):
        checkpoint = Path(meta["checkpoint"]).name if meta.get("checkpoint") else "?"
        torch_text = ", ".join(f"{tool} {version}" for tool, version in (meta.get("torch") or {}).items())
        lines += [f"Model: {family.title}, `{checkpoint}`; kohya: `{family.kohya_script}` at "
                  f"{(meta.get('kohya_commit') or 'no checkout')[:8]}; torch: {torch_text or '?'}.", ""]
    lines += [f"Command: `{meta['command']}`; {meta['bench_minutes']} min; noisy runs repeated: "
              f"{meta['noisy_reruns']}.", ""]
    if meta.get("ours_env"):
        lines += ["**What-if run**: our CLI ran with extra environment "
                  + ", ".join(f"`{k}={v}`" for k, v in meta["ours_env"].items()) + " (kohya without).", ""]
    lines += [
             "Ratio = ours / kohya (ratio of medians; min–max over all pairs of repetitions).", ""]
    for key, entry in summary.items():
        lines += [f"## {entry['label']}", "", "| metric | ours | kohya | ours/kohya (min–max) |",
                  "|---|---|---|---|"]
        for attr, title, fmt in METRICS:
            row = entry["metrics"][attr]
            ratio = row["ratio"]
            ratio_text = "–" if ratio is None else f"{ratio[0]:.2f} ({ratio[1]:.2f}–{ratio[2]:.2f})"
            if attr == "others_cores":
                ratio_text = ""
            lines.append(f"| {title} | {_fmt(row['ours'], fmt)} | {_fmt(row['kohya'], fmt)} | {ratio_text} |")
        if entry.get("same_tensor_names_dtypes_shapes") is not None:
            lines.append(f"| same tensor names/dtypes/shapes | {entry['same_tensor_names_dtypes_shapes']} | | |")
        if flops and entry.get("step_gflop"):
            lines.append(f"| step FLOPs (GFLOP, fwd+bwd) | {entry['step_gflop']:.1f} | | |")
            lines.append("| achieved GFLOP/s / fraction of fp32 GEMM | "
                         f"{_fmt(entry.get('ours_achieved_gflops'), '{:.1f}')} / "
                         f"{_fmt(entry.get('ours_gemm_fraction'), '{:.0%}')} | "
                         f"{_fmt(entry.get('kohya_achieved_gflops'), '{:.1f}')} / "
                         f"{_fmt(entry.get('kohya_gemm_fraction'), '{:.0%}')} | |")
        lines.append("")
    if flops:
        lines += [f"fp32 GEMM {flops['gemm_n']}×{flops['gemm_n']}: {flops['gemm_flops_per_s'] / 1e9:.1f} GFLOP/s "
                  f"(median of {flops['gemm_reps']}; torch threads {flops['threads']}). "
                  "In-process fwd+bwd of one step (no optimizer, no data): "
                  + ", ".join(f"{k.split(':')[0]} px gc {'on' if k.endswith(':1') else 'off'}: {v:.2f} s"
                              for k, v in flops.get("fwd_bwd_s", {}).items()), ""]
    rss_target = "; peak RSS ≤ 1.0 × kohya" if family.name == "sdxl" else ""
    lines += [f"Targets: steady step ≤ 0.9 × kohya; start → step 1 ≤ 1.0 × kohya{rss_target}; "
              "identical LoRA size.", ""]
    lines += _targets(summary, rss=family.name == "sdxl")
    if meta.get("webui_summary"):
        lines += [""] + markdown_webui(meta["webui_summary"])
    return "\n".join(lines) + "\n"


def _targets(summary: dict, rss: bool = False) -> list[str]:
    out = []
    for entry in summary.values():
        m = entry["metrics"]
        if m["steady_step_s"]["ours"] is None or m["steady_step_s"]["kohya"] is None:
            continue  # one tool only (--only): nothing to compare
        checks = []
        r = m["steady_step_s"]["ratio"]
        checks.append(f"steady step {'MET' if r and r[0] <= 0.9 else 'not met'} ({_fmt(r and r[0], '{:.2f}')})")
        r = m["first_step_s"]["ratio"]
        checks.append(f"start→step 1 {'MET' if r and r[0] <= 1.0 else 'not met'} ({_fmt(r and r[0], '{:.2f}')})")
        if rss:
            r = m["peak_rss_mb"]["ratio"]
            checks.append(f"peak RSS {'MET' if r and r[0] <= 1.0 else 'not met'} ({_fmt(r and r[0], '{:.2f}')})")
        a, b = m["lora_bytes"]["ours"], m["lora_bytes"]["kohya"]
        ta, tb = m["lora_tensor_bytes"]["ours"], m["lora_tensor_bytes"]["kohya"]
        if a and b:
            checks.append(f"LoRA size {'identical' if a == b else f'differs by {a - b:+.0f} B'}"
                          f" (tensor bytes {'identical' if ta == tb else 'differ'})")
        out.append(f"* {entry['label']}: " + "; ".join(checks))
    return out


# ------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=tuple(FAMILIES), default="sd1",
                        help="sd1 (default): SD1.5, UNet + text-encoder LoRA, kohya's train_network.py; sdxl: "
                             "UNet-only LoRA, kohya's sdxl_train_network.py, 10 steps, checkpointing on, 128 px")
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help="the single-file checkpoint both tools train on (default: a random one built into "
                             "bench/.cache/ for --family)")
    parser.add_argument("--quick", action="store_true", help="128 px only, 1 repetition")
    parser.add_argument("--reps", type=int, help="repetitions per config and tool (default 2, --quick 1)")
    parser.add_argument("--resolutions", type=int, nargs="+",
                        help="default 128 256 (--quick, --family sdxl: 128)")
    parser.add_argument("--grad-ckpt", choices=("off", "on", "both"), default=None,
                        help="gradient checkpointing (default both, --quick off, --family sdxl on)")
    parser.add_argument("--steps", type=int, default=None,
                        help=f"steps per run (default {STEPS_FULL}, --family sdxl {FAMILIES['sdxl'].steps})")
    parser.add_argument("--only", choices=("ours", "kohya", "webui"), nargs="+",
                        help="run these only (webui = the WebUI case, needs WEBUI_DIR)")
    parser.add_argument("--ours-env", nargs="+", default=[], metavar="KEY=VALUE",
                        help="what-if experiments: extra environment for our CLI only (recorded in the results)")
    parser.add_argument("--no-flops", action="store_true",
                        help="skip the FLOP count and GEMM timing (always skipped for --family sdxl: bench/flops.py "
                             "counts a UNet + text-encoder LoRA)")
    parser.add_argument("--quiet-wait", type=float, default=120.0,
                        help="before each run wait up to this many seconds for other processes to go quiet")
    parser.add_argument("--quiet-threshold", type=float, default=0.3,
                        help="'quiet' = other processes use fewer cores than this")
    parser.add_argument("--noise-limit", type=float, default=0.3,
                        help="a run during which other processes used more cores than this on average is noisy")
    parser.add_argument("--noisy-retries", type=int, default=1, help="run a noisy run again up to this many times")
    parser.add_argument("--abort-window", type=float, default=30.0,
                        help="stop a run (not the last attempt) early when other processes used more than "
                             "2 x --noise-limit cores over this many seconds (0 = never)")
    return parser


def plan(args: argparse.Namespace) -> tuple[Family, list[Config], int]:
    """(family, configs, repetitions) the arguments ask for, with each family's defaults."""
    family = FAMILIES[args.family]
    checkpoint = (args.checkpoint or family.checkpoint).resolve()
    reps = args.reps or (1 if args.quick else 2)
    resolutions = args.resolutions or ([128] if args.quick else list(family.resolutions))
    gc_mode = args.grad_ckpt or ("off" if args.quick and family.name == "sd1" else family.grad_ckpt)
    gcs = {"off": [False], "on": [True], "both": [False, True]}[gc_mode]
    steps = args.steps or (STEPS_QUICK if args.quick and family.name == "sd1" else family.steps)
    if steps == NUM_IMAGES:
        sys.exit(f"--steps {NUM_IMAGES} would be confused with the latent-caching bar; pick another count.")
    return family, [Config(r, g, steps, family.name, checkpoint) for r in resolutions for g in gcs], reps


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    family, configs, reps = plan(args)
    checkpoint, steps = configs[0].checkpoint, configs[0].steps

    ours_env = dict(item.split("=", 1) for item in args.ours_env)
    py = ours_python()
    kohya = kohya_setup()
    tools = ["ours"] + (["kohya"] if kohya else [])
    webui_dir = os.environ.get("WEBUI_DIR")
    with_webui = bool(webui_dir) and (not args.only or "webui" in args.only)
    if args.only:
        if "kohya" in args.only and not kohya:
            sys.exit("--only kohya needs KOHYA_DIR and KOHYA_PYTHON.")
        if "webui" in args.only and not webui_dir:
            sys.exit("--only webui needs WEBUI_DIR (an A1111 1.10 checkout prepared as in README).")
        tools = [t for t in args.only if t != "webui"]
    if not webui_dir:
        print("WEBUI_DIR not set: no WebUI case.", flush=True)
    if not kohya:
        print("KOHYA_DIR / KOHYA_PYTHON not set: timing our CLI only.", flush=True)
    prepare_inputs(py, with_kohya="kohya" in tools, checkpoint=checkpoint, family=family.name)
    warm_caches([(py, ROOT)] + ([(kohya[1], kohya[0])] if kohya and "kohya" in tools else []), checkpoint)

    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    bench_start = time.monotonic()
    results: list[RunResult] = []
    discarded: list[RunResult] = []
    for cfg in configs:
        for rep in range(reps):
            order = tools if rep % 2 == 0 else list(reversed(tools))
            for tool in order:
                for attempt in range(1 + args.noisy_retries):
                    others = wait_for_quiet(args.quiet_wait, args.quiet_threshold)
                    name = f"{tool}_{cfg.key}_r{rep}" + (f"_a{attempt}" if attempt else "")
                    out_dir = OUT / stamp / name
                    if tool == "ours":
                        cmd, cwd = ours_command(py, cfg, out_dir, name), ROOT
                    else:
                        cmd, cwd = kohya_command(kohya[1], kohya[0], cfg, out_dir, name), kohya[0]
                    print(f"[{cfg.label} rep {rep + 1}/{reps}] {tool} (others using {others:.2f} cores) ...",
                          flush=True)
                    last = attempt == args.noisy_retries
                    r = run_measured(tool, cfg, rep, cmd, cwd, out_dir, name,
                                     OUT / stamp / "logs" / f"{name}.log", others,
                                     abort_after_s=0.0 if last else args.abort_window,
                                     abort_limit=args.noise_limit * 2,
                                     extra_env=ours_env if tool == "ours" else None)
                    print(f"    start→step1 {_fmt(r.first_step_s, '{:.1f}')} s, steady step "
                          f"{_fmt(r.steady_step_s, '{:.2f}')} s, peak RSS {r.peak_rss_mb:.0f} MB, "
                          f"LoRA {r.lora_bytes} B, others {r.others_cores:.2f} cores, wall {r.wall_s:.0f} s",
                          flush=True)
                    if (r.others_cores <= args.noise_limit and not r.aborted) or last:
                        break
                    r.discarded = True
                    discarded.append(r)
                    print(f"    other processes used {r.others_cores:.2f} cores"
                          f"{' (stopped early)' if r.aborted else ''}: run again", flush=True)
                results.append(r)

    webui_runs = run_webui_case(configs, reps, OUT / stamp, Path(webui_dir)) if with_webui else []

    flops = None if args.no_flops or not family.flops else measure_flops(py, configs)
    summary = summarize(results, configs, flops)
    meta = {"date": dt.datetime.now().isoformat(timespec="seconds"),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
            "reps": reps, "steps": steps, "ours_python": py, "family": family.name, "checkpoint": str(checkpoint),
            "torch": {"ours": _torch_version(py), **({"kohya": _torch_version(kohya[1])} if kohya else {})},
            "kohya_dir": str(kohya[0]) if kohya else None, "kohya_commit": _git_head(kohya[0]) if kohya else None,
            "command": " ".join(["python", "bench/run_bench.py"] + (argv if argv is not None else sys.argv[1:])),
            "ours_env": ours_env, "webui_summary": summarize_webui(webui_runs, results, configs) if webui_runs else None,
            "noisy_reruns": len(discarded), "bench_minutes": round((time.monotonic() - bench_start) / 60, 1)}
    table = markdown(summary, flops, meta)
    RESULTS.mkdir(parents=True, exist_ok=True)
    for r in results + discarded:
        r.lora_keys = None if r.lora_keys is None else len(r.lora_keys)  # keep the JSON small
    payload = {"meta": meta, "summary": summary, "flops": flops, "runs": [asdict(r) for r in results],
               "webui_runs": [asdict(r) for r in webui_runs],
               "discarded_noisy_runs": [asdict(r) for r in discarded]}
    (RESULTS / f"bench-{stamp}.json").write_text(json.dumps(payload, indent=1), encoding="utf-8")
    (RESULTS / f"bench-{stamp}.md").write_text(table, encoding="utf-8")
    print()
    print(table)
    print(f"results: {RESULTS / f'bench-{stamp}.json'} and .md", flush=True)
    return 0 if all(r.returncode == 0 for r in results) else 1


def run_webui_case(configs: list[Config], reps: int, out_dir: Path, webui_dir: Path) -> list:
    from webui_case import WebUIBench

    family, checkpoint = FAMILIES[configs[0].family], configs[0].checkpoint
    print(f"starting A1111 from {webui_dir} on {checkpoint.name} ...", flush=True)
    runs = []
    with WebUIBench(webui_dir, checkpoint, out_dir, options=dict(family.webui_options),
                    boot_timeout_s=family.webui_boot_s) as bench:
        for cfg in configs:
            for rep in range(reps):
                print(f"[{cfg.label} rep {rep + 1}/{reps}] webui ...", flush=True)
                r = bench.run(cfg.key, rep, webui_request(cfg, f"webui_{cfg.key}_r{rep}"))
                print(f"    {r.state}: request→step1 {_fmt(r.first_step_s, '{:.1f}')} s, steady step "
                      f"{_fmt(r.steady_step_s, '{:.2f}')} s, RSS {r.rss_before_mb:.0f} → peak {r.peak_rss_mb:.0f} MB"
                      f"{', ' + r.error if r.error else ''}", flush=True)
                runs.append(r)
    return runs


def _torch_version(py: str) -> str | None:
    try:
        return subprocess.run([py, "-c", "import torch; print(torch.__version__)"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def _git_head(path: Path) -> str | None:
    try:
        return subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


if __name__ == "__main__":
    sys.exit(main())
