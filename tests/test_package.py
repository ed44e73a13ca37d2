"""`pip install .` in a fresh venv gives a working `lora-studio` (README, "Standalone trainer").

The venv is built once per dependency list (tests/.cache/package-venv-<hash>: torch 2.13 CPU from this
machine's disk, then `pip install .`, which fetches the CLI's dependencies); later runs reinstall only
the package itself. From the package's own copy (no checkout on the path, no open_clip: the bundled
CLIP vocabulary), it shows --help and trains 2 steps on a tiny single-file checkpoint.
Cold: ~3-4 min on 2 cores (most of it unpacking torch); warm: ~30 s.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, write_photos
from lib_training.lora.io import load_lora
from lib_training.models.single_file import save_checkpoint
from lib_training.models.tiny import build_models, tiny_text_config, tiny_unet_config, tiny_vae_config

pytestmark = pytest.mark.skipif(
    Path(sys.prefix).name == "a1111",
    reason="the fresh venv does not depend on the test env, so it runs once, from .venv-tests/current "
           "(by hand: .venv-tests/current/bin/python -m pytest tests/test_package.py)")
TORCH = "torch==2.13.0"  # lies on this machine's disk (/opt/wheels): no multi-GB CUDA download


def _dependencies_key() -> str:
    """The venv is rebuilt when the dependencies (or Python) change, not for every edit of pyproject.toml."""
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    start = text.index("dependencies = [")
    deps = text[start:text.index("]", start)]
    return hashlib.sha256((deps + sys.version).encode()).hexdigest()[:12]


def _source_copy(folder: Path) -> Path:
    """What `pip install .` reads, apart from the checkout, so the build leaves no build/ or egg-info there."""
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, folder / name)
    shutil.copytree(ROOT / "lib_training", folder / "lib_training",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return folder


def _pip(venv: Path, *args: str) -> None:
    proc = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", *args],
                          capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    venv = ROOT / "tests" / ".cache" / f"package-venv-{_dependencies_key()}"
    source = _source_copy(tmp_path_factory.mktemp("src"))
    if (venv / ".built").is_file():
        _pip(venv, "--no-deps", "--no-build-isolation", "--force-reinstall", str(source))  # today's code only
        return venv
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    _pip(venv, TORCH)
    _pip(venv, str(source))
    (venv / ".built").write_text("ok\n")
    return venv


def _run(venv: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(XDG_CACHE_HOME=str(cwd / "cache"), OMP_NUM_THREADS="1")  # the tokenizer is built from the bundled file
    return subprocess.run([str(venv / "bin" / "lora-studio"), *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=600)


def test_pip_install_gives_a_lora_studio_command_that_trains(installed, tmp_path):
    assert not (installed / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
                / "open_clip").exists()  # CLIP's vocabulary comes with the package
    shown = _run(installed, tmp_path, "--help")
    assert shown.returncode == 0 and "train" in shown.stdout and "demo" in shown.stdout, shown.stderr
    site = installed / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"
    for data in ("lib_training/demo/fixtures/base.safetensors", "lib_training/demo/fixtures/SHA256SUMS",
                 "lib_training/models/clip_bpe/LICENSE"):
        assert (site / data).is_file(), f"{data} is not in the installed package"
    assert not (site / "lib_training" / "webui").exists()  # the WebUI side stays out of the package
    configs = {"unet": tiny_unet_config(), "vae": tiny_vae_config(), "text": tiny_text_config()}
    unet, vae, text = build_models(configs["unet"], configs["vae"], configs["text"], seed=5)
    checkpoint = save_checkpoint(tmp_path / "tiny-sd1.safetensors", unet, vae, text, "sd1", configs)
    write_photos(tmp_path / "data" / "2_sks cat", names=("chelsea", "coffee"), size=64)
    checked = _run(installed, tmp_path, "dataset", "check", "data", "--resolution", "64")
    assert "2 images" in checked.stdout, checked.stdout + checked.stderr
    trained = _run(installed, tmp_path, "train", "--checkpoint", str(checkpoint), "--data", "data",
                   "--output-dir", "Lora", "--name", "packaged", "--steps", "2", "--resolution", "64", "--rank", "4")
    assert trained.returncode == 0, trained.stdout + trained.stderr
    tensors, meta = load_lora(tmp_path / "Lora" / "packaged.safetensors")
    assert meta["ss_steps"] == "2" and meta["ss_num_train_images"] == "4"  # kohya: images x repeats
    assert (tmp_path / "cache" / "lora_studio" / "clip_tokenizer" / "vocab.json").is_file()
