"""bench/gpu_check.py --dry-run: the GPU check's own code on the CPU with tiny models (the real run
needs a lent GPU; see the script's docstring)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_dry_run_trains_each_case_and_writes_json_and_markdown(tmp_path):
    out = tmp_path / "gpu_check"
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--dry-run", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    data = json.loads((out / "gpu_check.json").read_text())
    results = {r["case"]["name"]: r for r in data["results"]}
    assert {"sd15_fp16", "sd15_fp8"} <= results.keys()
    for result in results.values():
        assert result["status"] == "ok", result["reason"]
        stats = result["stats"]
        assert stats["steps"] == 3 and stats["steady_s_per_step"] > 0 and stats["images_per_s"] > 0
        assert result["loss_finite"] and math.isfinite(result["loss_first"])
        assert (out / "runs" / result["case"]["name"] / f"{result['case']['name']}.safetensors").is_file()
    assert results["sd15_fp8"]["case"]["weight_dtype"] == "fp8"
    notes = " ".join(data["notes"])
    assert "SDXL: not available in this build" in notes or {"sdxl_bf16", "sdxl_fp8"} <= results.keys()
    table = (out / "gpu_check.md").read_text()
    assert "| sd15_fp16 | 64 |" in table and "peak alloc GB" in table and table in done.stdout


def test_a_stopped_check_keeps_and_prints_what_it_has(tmp_path):
    """SIGTERM (a lease running out) while a case trains: the child is stopped, the JSON and the table
    are written with every unfinished case marked 'stopped', and the exit status says so."""
    import signal
    import time

    out = tmp_path / "gpu_check"
    process = subprocess.Popen([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--dry-run", "--out", str(out)],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while not (out / "runs" / "sd15_fp16" / "ours.log").is_file() and time.monotonic() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 130, output[-2000:]
    data = json.loads((out / "gpu_check.json").read_text())
    assert [r["status"] for r in data["results"]][:2] == ["stopped", "stopped"]
    assert "| sd15_fp16 | 64 |" in output and "stopped: signal 15" in (out / "gpu_check.md").read_text()
