"""install.py: only our missing extras, never what A1111 pins, one line printed, failures tolerated."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("lora_studio_install", ROOT / "install.py")
install = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = install  # dataclasses look their module up while the class is built
spec.loader.exec_module(install)

# A1111 1.10's requirements_versions.txt plus its torch build: none of these may ever reach pip.
A1111_PINNED = {"setuptools", "gitpython", "pillow", "accelerate", "blendmodes", "clean-fid", "diskcache", "einops",
                "facexlib", "fastapi", "gradio", "httpcore", "inflection", "jsonmerge", "kornia", "lark", "numpy",
                "omegaconf", "open-clip-torch", "piexif", "protobuf", "psutil", "pytorch_lightning", "resize-right",
                "safetensors", "scikit-image", "spandrel", "spandrel-extra-arches", "tomesd", "torch", "torchdiffeq",
                "torchsde", "transformers", "httpx", "pillow-avif-plugin", "torchvision", "xformers", "diffusers"}


class FakePip:
    def __init__(self, fail: set = frozenset()):
        self.commands = []
        self.fail = fail

    def __call__(self, command, desc=None):
        self.commands.append(command)
        package = command.split()[-1]
        if package in self.fail:
            raise RuntimeError(f"Couldn't install {package}.\nCommand: pip {command}\nError code: 1")


def run(present: set, system="Linux", python=(3, 10), cuda=True, pip=None, extras=install.EXTRAS):
    pip = pip or FakePip()
    cuda_asked = []

    def has_cuda():
        cuda_asked.append(True)
        return cuda

    line = install.install_missing(lambda name: name in present, pip, system, python, has_cuda, extras)
    return line, pip.commands, cuda_asked


def test_our_extras_never_include_a_package_a1111_pins():
    names = {e.package.lower() for e in install.EXTRAS}
    assert not names & A1111_PINNED
    assert A1111_PINNED - {"gitpython", "blendmodes", "clean-fid", "diskcache", "facexlib", "inflection",
                           "jsonmerge", "lark", "piexif", "psutil", "resize-right", "spandrel-extra-arches", "tomesd",
                           "torchdiffeq", "torchsde", "pillow-avif-plugin"} <= install.NEVER_INSTALL


def test_nothing_missing_installs_nothing():
    line, commands, _ = run({"tomli", "prodigyopt", "bitsandbytes"})
    assert commands == [] and line == "LoRA Studio: nothing to install"


def test_a_missing_extra_is_installed_without_dependencies():
    line, commands, _ = run({"tomli", "bitsandbytes"})
    assert commands == ["install --no-deps prodigyopt"]
    assert line == "LoRA Studio: installed prodigyopt"


def test_bitsandbytes_only_where_cuda_works_and_never_on_macos():
    _, on_linux, _ = run({"tomli", "prodigyopt"}, system="Linux", cuda=True)
    assert on_linux == ["install --no-deps bitsandbytes"]
    _, on_windows, _ = run({"tomli", "prodigyopt"}, system="Windows", cuda=True)
    assert on_windows == ["install --no-deps bitsandbytes"]
    _, cpu_only, _ = run({"tomli", "prodigyopt"}, system="Linux", cuda=False)
    assert cpu_only == []
    _, mac, asked = run({"tomli", "prodigyopt"}, system="Darwin", cuda=True)
    assert mac == [] and asked == []  # not even torch is asked on macOS


def test_tomli_only_on_python_older_than_3_11():
    _, py310, _ = run({"prodigyopt", "bitsandbytes"}, python=(3, 10))
    _, py311, _ = run({"prodigyopt", "bitsandbytes"}, python=(3, 11))
    assert py310 == ["install --no-deps tomli"] and py311 == []


def test_a_failed_install_is_reported_and_the_others_still_go_in():
    pip = FakePip(fail={"prodigyopt"})
    line, commands, _ = run({"tomli"}, pip=pip)
    assert commands == ["install --no-deps prodigyopt", "install --no-deps bitsandbytes"]
    assert line.startswith("LoRA Studio: installed bitsandbytes; could not install prodigyopt")
    assert "Couldn't install prodigyopt." in line and "\n" not in line


def test_a_pinned_package_is_refused_even_if_listed():
    sneaky = install.EXTRAS + (install.Extra("transformers", "newer tokenizer"), install.Extra("Pillow", "x"))
    line, commands, _ = run({"tomli", "prodigyopt", "bitsandbytes"}, extras=sneaky)
    assert commands == []
    assert "transformers (pinned by the WebUI; not touched)" in line and "Pillow" in line


def test_the_script_prints_exactly_one_line_as_a1111_runs_it(tmp_path):
    """Run install.py in a subprocess, as A1111 does, with a fake `launch` whose run_pip prints."""
    fake = tmp_path / "fake_launch"
    fake.mkdir()
    (fake / "launch.py").write_text(
        "from types import SimpleNamespace\n"
        "args = SimpleNamespace(skip_install=False)\n"
        "def is_installed(name):\n"
        "    return name != 'prodigyopt'\n"
        "def run_pip(command, desc=None):\n"
        "    print('Installing ' + str(desc))\n"
        "    with open(r'%s', 'a') as f:\n"
        "        f.write(command + '\\n')\n" % (tmp_path / "pip.log"),
        encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(fake)}
    result = subprocess.run([sys.executable, str(ROOT / "install.py")], capture_output=True, text=True, env=env,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["LoRA Studio: installed prodigyopt"]
    assert (tmp_path / "pip.log").read_text().splitlines() == ["install --no-deps prodigyopt"]


def test_pip_failure_does_not_stop_the_script(tmp_path):
    fake = tmp_path / "fake_launch"
    fake.mkdir()
    (fake / "launch.py").write_text(
        "from types import SimpleNamespace\n"
        "args = SimpleNamespace(skip_install=False)\n"
        "def is_installed(name):\n"
        "    return name != 'prodigyopt'\n"
        "def run_pip(command, desc=None):\n"
        "    raise RuntimeError('Couldn\\'t install prodigyopt: no network')\n", encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(fake)}
    result = subprocess.run([sys.executable, str(ROOT / "install.py")], capture_output=True, text=True, env=env,
                            timeout=120)
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and "could not install prodigyopt" in lines[0] and "no network" in lines[0]


def test_skip_install_is_respected(tmp_path):
    fake = tmp_path / "fake_launch"
    fake.mkdir()
    (fake / "launch.py").write_text(
        "from types import SimpleNamespace\n"
        "args = SimpleNamespace(skip_install=True)\n"
        "def is_installed(name):\n    return False\n"
        "def run_pip(command, desc=None):\n    raise AssertionError('pip must not run')\n", encoding="utf-8")
    result = subprocess.run([sys.executable, str(ROOT / "install.py")], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(fake)}, timeout=120)
    assert result.returncode == 0 and len(result.stdout.splitlines()) == 1 and "--skip-install" in result.stdout
