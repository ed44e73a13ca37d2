"""A1111 runs this with its own venv before loading the extension: add only what is missing.

Never touches what A1111 pins (gradio, torch, transformers, accelerate, diffusers, Pillow, ...):
every package is installed with --no-deps, and the list below holds only our own additions.
Failures are reported in the one line this prints; the extension starts without the extras.
"""

from __future__ import annotations

import contextlib
import io
import platform
import sys
from dataclasses import dataclass
from typing import Callable, Optional

# Packages A1111 installs and pins (requirements_versions.txt) or that its torch build owns:
# install_missing() refuses to pass any of these to pip, whatever EXTRAS says.
NEVER_INSTALL = frozenset({
    "gradio", "gradio_client", "torch", "torchvision", "torchaudio", "xformers", "transformers", "accelerate",
    "diffusers", "pillow", "numpy", "safetensors", "fastapi", "pydantic", "starlette", "httpx", "httpcore",
    "open-clip-torch", "pytorch_lightning", "omegaconf", "einops", "protobuf", "tokenizers", "huggingface_hub",
    "kornia", "scikit-image", "spandrel", "setuptools",
})


@dataclass(frozen=True)
class Extra:
    package: str  # pip name (also what launch.is_installed looks up)
    why: str
    required: bool = False  # the extension cannot start without it
    needs_cuda: bool = False  # only where CUDA works (and never on macOS)
    python_below: Optional[tuple] = None  # only for Pythons older than this


EXTRAS = (
    Extra("tomli", "reads run.toml on Python 3.10", required=True, python_below=(3, 11)),
    Extra("prodigyopt", "the Prodigy optimizer"),
    Extra("bitsandbytes", "the AdamW8bit optimizer", needs_cuda=True),
)
# Lion needs no package: lib_training/train/optim.py has its own.


def wanted(extra: Extra, system: str, python: tuple, has_cuda: Callable[[], bool]) -> bool:
    if extra.python_below is not None and python >= extra.python_below:
        return False
    if extra.needs_cuda:
        return system in ("Linux", "Windows") and has_cuda()
    return True


def install_missing(is_installed: Callable[[str], bool], run_pip: Callable[..., object],
                    system: str, python: tuple, has_cuda: Callable[[], bool],
                    extras: tuple = EXTRAS) -> str:
    """Install the extras this machine lacks; return the one line to print. Never raises."""
    installed, failed = [], []
    missing = [e for e in extras if not is_installed(e.package)]
    for extra in missing:
        if extra.package.lower() in NEVER_INSTALL:
            failed.append(f"{extra.package} (pinned by the WebUI; not touched)")
            continue
        try:
            if not wanted(extra, system, python, has_cuda):
                continue
            run_pip(f"install --no-deps {extra.package}", f"LoRA Studio: {extra.package} ({extra.why})")
            installed.append(extra.package)
        except Exception as error:  # noqa: BLE001 - any pip failure must leave the WebUI starting
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            failed.append(f"{extra.package} ({'required' if extra.required else extra.why}: {first_line})")
    return summary_line(installed, failed)


def summary_line(installed: list, failed: list) -> str:
    parts = []
    if installed:
        parts.append("installed " + ", ".join(installed))
    if failed:
        parts.append("could not install " + "; ".join(failed) + " — the extension starts without it; "
                     "install it by hand in the WebUI's venv to use it")
    return "LoRA Studio: " + ("; ".join(parts) if parts else "nothing to install")


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def quietly(run_pip: Callable[..., object]) -> Callable[..., object]:
    """run_pip without its "Installing ..." line, so the summary stays the only line printed."""

    def run(command: str, desc: str) -> object:
        with contextlib.redirect_stdout(io.StringIO()):
            return run_pip(command, desc)

    return run


def main() -> None:
    import launch

    if getattr(launch.args, "skip_install", False):
        print("LoRA Studio: --skip-install is set; optional extras were not checked")
        return
    print(install_missing(launch.is_installed, quietly(launch.run_pip), platform.system(), sys.version_info[:2],
                          _cuda_available))


if __name__ == "__main__":
    main()
