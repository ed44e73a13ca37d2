"""Summaries of a torch.profiler run, shared by profile_ours.py and profile_kohya.py (torch only)."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"

# aten op name -> kind of work (first match wins)
KINDS = [
    ("convolution", ("conv", "mkldnn_convolution", "thnn_conv", "slow_conv")),
    ("matmul (linear/bmm)", ("addmm", "aten::mm", "bmm", "matmul", "linear")),
    ("attention (SDPA)", ("scaled_dot_product", "_flash_attention")),
    ("normalization", ("group_norm", "layer_norm", "native_group_norm", "native_layer_norm")),
    ("optimizer (AdamW)", ("_foreach", "adamw", "_fused_adam", "lerp", "addcdiv", "addcmul")),
    ("activation (SiLU/GELU)", ("silu", "gelu")),
    ("copies/layout", ("copy_", "contiguous", "clone", "to_copy", "_to_copy", "cat", "transpose", "permute",
                       "reshape", "view", "empty", "fill_", "zero_", "zeros", "ones", "as_strided")),
    ("elementwise", ("add", "mul", "div", "sub", "sum", "mean", "pow", "sqrt", "rsqrt", "neg", "exp",
                     "where", "clamp", "norm", "sigmoid", "threshold")),
]
PHASE = "phase: "


def kind_of(name: str) -> str:
    low = name.lower()
    for kind, needles in KINDS:
        if any(n in low for n in needles):
            return kind
    return "other"


def _is_op(key: str) -> bool:
    return not key.startswith((PHASE, "ProfilerStep"))


def summarize(prof, steps: int, label: str, title: str, step_times: list[float], row_limit: int = 30) -> str:
    """Write results/profile-<label>.txt/.json and return the text."""
    averages = prof.key_averages()
    ops = [e for e in averages if _is_op(e.key)]
    total_self = sum(e.self_cpu_time_total for e in ops) or 1
    kinds: dict[str, float] = defaultdict(float)
    for e in ops:
        kinds[kind_of(e.key)] += e.self_cpu_time_total
    phases = {e.key[len(PHASE):]: e.cpu_time_total / 1e6 / steps for e in averages if e.key.startswith(PHASE)}
    top = sorted(ops, key=lambda e: -e.self_cpu_time_total)[:row_limit]
    per_step = total_self / 1e6 / steps

    lines = [f"# {title}, {label}, {steps} profiled steps (torch {torch.__version__}, "
             f"{torch.get_num_threads()} threads)", "",
             "wall time of the profiled steps (s): " + ", ".join(f"{s:.2f}" for s in step_times),
             f"self CPU time of all ops per step: {per_step:.2f} s", "",
             "## Where a step goes (inclusive CPU time per step, s)", ""]
    lines += [f"  {k:<28} {v:7.3f}" for k, v in sorted(phases.items(), key=lambda kv: -kv[1])]
    lines += ["", "## Kinds of work (self CPU time: share, s per step)", ""]
    lines += [f"  {k:<24} {v / total_self:6.1%}  {v / 1e6 / steps:7.3f}"
              for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])]
    lines += ["", f"## Top {row_limit} ops by self CPU time", "",
              f"  {'op':<58} {'s/step':>7} {'share':>6} {'calls/step':>10}"]
    for e in top:
        lines.append(f"  {e.key[:58]:<58} {e.self_cpu_time_total / 1e6 / steps:7.3f} "
                     f"{e.self_cpu_time_total / total_self:6.1%} {e.count / steps:10.0f}")
    lines += ["", "## Top op/shape pairs by self CPU time", ""]
    by_shape = [e for e in prof.key_averages(group_by_input_shape=True) if _is_op(e.key)]
    for e in sorted(by_shape, key=lambda e: -e.self_cpu_time_total)[:25]:
        lines.append(f"  {e.key[:34]:<34} {e.self_cpu_time_total / 1e6 / steps:6.3f} s/step "
                     f"x{e.count / steps:<5.0f} {str(e.input_shapes)[:100]}")
    text = "\n".join(lines) + "\n"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"profile-{label}.txt").write_text(text, encoding="utf-8")
    (RESULTS / f"profile-{label}.json").write_text(json.dumps({
        "step_times_s": step_times, "ops_self_cpu_s_per_step": per_step, "phases_s_per_step": phases,
        "kinds_share": {k: v / total_self for k, v in kinds.items()},
        "top": [{"op": e.key, "self_s_per_step": e.self_cpu_time_total / 1e6 / steps, "calls_per_step": e.count / steps}
                for e in top]}, indent=1), encoding="utf-8")
    return text
