"""`torchrun --nproc_per_node N -m lib_training train ...`: data parallel on PyTorch's own engine, tested
on the CPU with the gloo backend. 2 processes x batch 1 must train the LoRA that 1 process x batch 2
trains (one seed plan, gradients summed), write every file once, and a run cancelled with Ctrl-C
must resume with another number of processes and continue the same loss curve."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT, write_photos
from lib_training.lora.io import load_lora
from lib_training.models.single_file import save_checkpoint
from lib_training.models.tiny import build_models, tiny_text_config, tiny_unet_config, tiny_vae_config

STEPS = 6  # 3 images, global batch 2: batches of 2 and 1 (rank 1 has no row in the short one), 3 epochs


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("ddp")
    configs = {"unet": tiny_unet_config(), "vae": tiny_vae_config(), "text": tiny_text_config()}
    unet, vae, text = build_models(configs["unet"], configs["vae"], configs["text"], seed=5)
    checkpoint = save_checkpoint(root / "tiny-sd1.safetensors", unet, vae, text, "sd1", configs)
    write_photos(root / "data" / "1_sks cat", names=("chelsea", "coffee", "astronaut"), size=64,
                 captions={"chelsea": "sks cat, on a chair", "coffee": "sks cat, a cup"})
    (root / "run.toml").write_text('[output]\nsave_dtype = "fp32"\n')  # compare the LoRAs in full precision
    return {"root": root, "checkpoint": checkpoint}


def _args(setup: dict, out: Path, batch: int, steps: int = STEPS) -> list:
    return ["train", "--config", str(setup["root"] / "run.toml"), "--checkpoint", str(setup["checkpoint"]),
            "--data", str(setup["root"] / "data"), "--output-dir", str(out), "--name", "ddp", "--steps", str(steps),
            "--resolution", "64", "--rank", "4", "--alpha", "2", "--lr", "1e-3", "--seed", "7",
            "--batch-size", str(batch), "--device", "cpu"]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _torchrun(processes: int) -> list:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
            "-m", "lib_training"]


def _losses(out: Path) -> list:
    lines = (out / "lora_studio_runs" / "ddp" / "log.jsonl").read_text().splitlines()
    return [(record["step"], record["loss"]) for record in map(json.loads, lines)]


@pytest.fixture(scope="module")
def one_process(setup) -> Path:
    out = setup["root"] / "one"
    proc = subprocess.run([sys.executable, "-m", "lib_training", *_args(setup, out, batch=2)],
                          capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr
    return out


def test_two_processes_train_the_lora_of_one_process_with_the_whole_batch(setup, one_process):
    out = setup["root"] / "two"
    proc = subprocess.run([*_torchrun(2), *_args(setup, out, batch=1)], capture_output=True, text=True,
                          env=_env(), cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("Saved ") == 1  # rank 0 speaks, rank 1 is silent
    one, two = _losses(one_process), _losses(out)
    assert [s for s, _ in two] == list(range(1, STEPS + 1))  # one log line a step: written once
    assert [x for _, x in two] == pytest.approx([x for _, x in one], rel=1e-5, abs=1e-6)
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(p.name for p in one_process.iterdir()) == [
        "ddp-000001.safetensors", "ddp-000002.safetensors", "ddp.safetensors", "lora_studio_runs"]
    a, b = load_lora(one_process / "ddp.safetensors")[0], load_lora(out / "ddp.safetensors")[0]
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-3, atol=1e-5)
    assert any((a[k] != 0).any() for k in a if "lora_up" in k)  # it did learn something


def test_ctrl_c_then_resume_with_another_number_of_processes_continues_the_curve(setup, one_process):
    out = setup["root"] / "resumed"
    steps = 16
    # Ctrl-C in a terminal signals torchrun and its workers: the whole process group.
    proc = subprocess.Popen([*_torchrun(2), *_args(setup, out, batch=1, steps=steps)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=_env(), cwd=ROOT, start_new_session=True)
    log = out / "lora_studio_runs" / "ddp" / "log.jsonl"
    deadline = time.monotonic() + 300
    while not (log.is_file() and len(log.read_text().splitlines()) >= 2):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGINT)
    output = proc.communicate(timeout=120)[0]
    assert (log.parent / "resume.lsstate").is_file(), output
    stopped_at = len(_losses(out))
    assert 2 <= stopped_at < steps and not (out / "ddp.safetensors").exists()

    # One process with the whole batch continues where the two stopped.
    resumed = subprocess.run([sys.executable, "-m", "lib_training", *_args(setup, out, batch=2, steps=steps),
                              "--resume"], capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    uninterrupted = subprocess.run([sys.executable, "-m", "lib_training",
                                    *_args(setup, setup["root"] / "straight", batch=2, steps=steps)],
                                   capture_output=True, text=True, env=_env(), cwd=ROOT, timeout=600)
    assert uninterrupted.returncode == 0, uninterrupted.stderr
    curve, straight = _losses(out), _losses(setup["root"] / "straight")
    assert [s for s, _ in curve] == list(range(1, steps + 1))
    assert [x for _, x in curve] == pytest.approx([x for _, x in straight], rel=1e-5, abs=1e-6)
