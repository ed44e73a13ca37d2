"""Boot a real A1111 (WEBUI_DIR) with this extension for the live tests, and talk to it.

Prepare a checkout once (README, "Testing against a real WebUI"): A1111 1.10 with its venv,
the offline CLIP tokenizer in the HF cache, and a random-weight SD1.5 checkpoint made with
`tools/random_checkpoint.py`. The extension is linked into `extensions/lora-studio`.
"""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import subprocess
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(__file__).parent / "artifacts"
AUTH = ("tester", "s3cret")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def link_extension(webui: Path) -> None:
    link = webui / "extensions" / "lora-studio"
    if link.is_symlink() and link.resolve() == ROOT:
        return
    if link.exists() or link.is_symlink():
        raise RuntimeError(f"{link} exists and is not a link to {ROOT}; remove it to run the live tests.")
    link.symlink_to(ROOT, target_is_directory=True)


def checkpoint_of(webui: Path) -> Path:
    named = os.environ.get("WEBUI_CKPT")
    if named:
        return Path(named)
    found = sorted((webui / "models" / "Stable-diffusion").glob("*.safetensors"))
    if not found:
        raise RuntimeError("No .safetensors checkpoint in models/Stable-diffusion: make one with "
                           "`python tools/random_checkpoint.py --out <WEBUI_DIR>/models/Stable-diffusion/random-sd15.safetensors`.")
    return found[0]


@contextmanager
def running_webui(log_name: str, options: dict | None = None) -> Iterator["WebUI"]:
    """A1111 from WEBUI_DIR with this checkout linked in, booted and ready, with `options` set (their
    old values put back afterwards); stopped on exit. The console log goes to artifacts/<log_name>."""
    root = Path(os.environ["WEBUI_DIR"])
    link_extension(root)
    ARTIFACTS.mkdir(exist_ok=True)
    server = WebUI(root, ARTIFACTS / log_name)
    try:
        server.wait_ready()
        options = {"lora_studio_sample_steps": 1, **(options or {})}  # samples with one sampling step
        current = server.get("/sdapi/v1/options")
        before = {key: current.get(key, "") for key in options}
        server.post("/sdapi/v1/options", options)
        try:
            yield server
        finally:
            if server.process.poll() is None:  # A1111 keeps options in its config.json
                server.post("/sdapi/v1/options", before)
    finally:
        server.stop()


class WebUI:
    def __init__(self, webui: Path, log_path: Path, extra_args: tuple[str, ...] = (),
                 checkpoint: Path | None = None):
        self.dir = webui
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        python = os.environ.get("WEBUI_PYTHON") or str(webui / "venv" / "bin" / "python")
        args = [python, "launch.py", "--use-cpu", "all", "--no-half", "--skip-prepare-environment",
                "--skip-torch-cuda-test", "--skip-version-check", "--no-download-sd-model", "--api",
                "--port", str(self.port), "--ckpt", str(checkpoint or checkpoint_of(webui)),
                "--api-auth", f"{AUTH[0]}:{AUTH[1]}", *extra_args]
        env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
        self.log_path = log_path
        self.log = open(log_path, "wb")
        self.process = subprocess.Popen(args, cwd=webui, stdout=self.log, stderr=subprocess.STDOUT, env=env)

    def wait_ready(self, timeout: float = 600) -> None:
        """Wait for A1111's "Startup time" line, then for its API. No request may come earlier:
        a request before A1111 adds its API middleware starts the app and A1111 then crashes
        ("Cannot add middleware after an application has started")."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"A1111 exited with {self.process.returncode}; see {self.log_path}")
            if b"Startup time:" not in Path(self.log_path).read_bytes():
                time.sleep(1)
                continue
            try:
                if self.get("/sdapi/v1/sd-models"):
                    return
            except (urllib.error.URLError, ConnectionError, OSError):
                pass
            time.sleep(2)
        raise TimeoutError(f"A1111 did not answer within {timeout:.0f} s; see {self.log_path}")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()

    # ---- HTTP ----------------------------------------------------------------------------
    def request(self, method: str, path: str, body=None, auth: bool = True, timeout: float = 900):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        if auth:
            token = base64.b64encode(f"{AUTH[0]}:{AUTH[1]}".encode()).decode()
            req.add_header("Authorization", f"Basic {token}")
        with urllib.request.urlopen(req, timeout=timeout) as response:
            return json.loads(response.read() or b"null")

    def get(self, path: str, **kw):
        return self.request("GET", path, **kw)

    def post(self, path: str, body=None, **kw):
        return self.request("POST", path, body if body is not None else {}, **kw)

    def txt2img(self, prompt: str, seed: int = 1):
        """One 64x64, 1-step image as a PIL image (CPU: a step of the full-size UNet takes seconds)."""
        from PIL import Image

        result = self.post("/sdapi/v1/txt2img", {"prompt": prompt, "negative_prompt": "", "steps": 1,
                                                 "width": 64, "height": 64, "seed": seed, "cfg_scale": 1,
                                                 "sampler_name": "Euler"})
        return Image.open(io.BytesIO(base64.b64decode(result["images"][0]))).convert("RGB")

    def rss_bytes(self) -> int:
        """Resident memory of the WebUI process (launch.py runs the WebUI in-process)."""
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0
