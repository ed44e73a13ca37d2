"""The WebUI case of the benchmark: train through a running A1111 whose model is already loaded.

Boots A1111 (`WEBUI_DIR`, set up as in README "Testing against a real WebUI") on the bench's
checkpoint with this extension linked in, LoRAs written to the bench's output folder
(`--lora-dir`), then for each request: the WebUI process's resident memory before, its peak
while training (polled from /proc every 0.2 s, no HTTP), the time from the train request to
the first finished step, and the steady step time from the run's own step clock
(`elapsed_s` at each step, read from the status route every 0.5 s so polling costs little CPU).
"""

from __future__ import annotations

import os
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from webui_server import WebUI, link_extension  # noqa: E402

POLL_S = 0.5
SKIP_STEPS = 2  # as the standalone runs: steps 1-2 warm up


@dataclass
class WebUIResult:
    config: str
    rep: int
    state: str
    first_step_s: float | None  # train request -> step 1 done
    steady_step_s: float | None
    rss_before_mb: float  # WebUI idle, model loaded
    peak_rss_mb: float  # WebUI process while training
    lora_bytes: int
    step_clock: list = field(default_factory=list)  # [step, elapsed_s] as seen by polling
    error: str = ""


def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def steady_step(clock: list) -> float | None:
    """Median seconds per step between polled (step, elapsed) points past the warm-up steps."""
    points = [(s, e) for s, e in clock if s > SKIP_STEPS]
    rates = [(e2 - e1) / (s2 - s1) for (s1, e1), (s2, e2) in zip(points, points[1:]) if s2 > s1]
    return statistics.median(rates) if rates else None


class WebUIBench:
    def __init__(self, webui_dir: Path, checkpoint: Path, out_dir: Path, options: dict | None = None,
                 boot_timeout_s: float = 600.0):
        """options: A1111 settings set for the bench (and put back after it), beside the defaults below."""
        self.options = dict(options or {})
        self.boot_timeout_s = boot_timeout_s
        link_extension(webui_dir)
        os.environ["WEBUI_CKPT"] = str(checkpoint)  # the checkpoint both CLIs train on
        self.lora_dir = out_dir / "webui-Lora"
        self.lora_dir.mkdir(parents=True, exist_ok=True)
        # SDPA, as both CLIs use (A1111 on the CPU would pick InvokeAI's attention otherwise)
        self.server = WebUI(webui_dir, out_dir / "webui.log",
                            extra_args=("--lora-dir", str(self.lora_dir), "--opt-sdp-attention"))

    def __enter__(self) -> "WebUIBench":
        try:
            self.server.wait_ready(timeout=self.boot_timeout_s)
            self._wait_for_model(timeout=self.boot_timeout_s)
            # The preview sample at the end: one sampler step (CPU). Emphasis "No norm": with
            # random weights the text encoder's output has a mean near 0, and A1111's default
            # re-normalisation z·mean/mean' then gives inf gradients (NaN at step 4); the CLIs
            # have no emphasis, and for captions without (x:1.2) "No norm" is plain CLIP.
            changed = {"lora_studio_sample_steps": 1, "emphasis": "No norm", **self.options}
            current = self.server.get("/sdapi/v1/options")
            self._restore = {key: current[key] for key in changed if key in current}
            self.server.post("/sdapi/v1/options", changed)
        except BaseException:
            self.server.stop()
            raise
        return self

    def _wait_for_model(self, timeout: float = 600) -> None:
        """A1111 loads the checkpoint in the background after start-up: the bench starts when
        the model is in memory, as a user's request would."""
        deadline = time.time() + timeout
        while b"Model loaded in" not in Path(self.server.log_path).read_bytes():
            if time.time() > deadline or self.server.process.poll() is not None:
                raise RuntimeError(f"A1111 did not load the checkpoint; see {self.server.log_path}")
            time.sleep(1)

    def __exit__(self, *exc) -> None:
        try:
            if getattr(self, "_restore", None):  # A1111 saves options to its config.json
                self.server.post("/sdapi/v1/options", self._restore)
        finally:
            self.server.stop()

    def run(self, config: str, rep: int, body: dict, timeout_s: float = 1800) -> WebUIResult:
        pid = self.server.process.pid
        time.sleep(2)  # let the previous run's memory settle
        rss_before = _rss_mb(pid)
        peak = [rss_before]
        done = threading.Event()

        def sample_rss():
            while not done.is_set():
                peak[0] = max(peak[0], _rss_mb(pid))
                done.wait(0.2)

        sampler = threading.Thread(target=sample_rss, daemon=True)
        sampler.start()
        clock: list = []
        try:
            self.server.post("/lora-studio/v1/start", body)
            deadline = time.time() + timeout_s
            status = self.server.get("/lora-studio/v1/status")
            while status["state"] == "running" and time.time() < deadline:
                if status["step"] and (not clock or clock[-1][0] != status["step"]):
                    clock.append([status["step"], status["elapsed_s"]])
                time.sleep(POLL_S)
                status = self.server.get("/lora-studio/v1/status")
        finally:
            done.set()
            sampler.join()
        name = body["output"]["name"]
        lora = self.lora_dir / f"{name}.safetensors"
        return WebUIResult(config=config, rep=rep, state=status["state"], first_step_s=status["first_step_s"],
                           steady_step_s=steady_step(clock), rss_before_mb=rss_before, peak_rss_mb=peak[0],
                           lora_bytes=lora.stat().st_size if lora.exists() else 0, step_clock=clock,
                           error=status.get("error") or "")
