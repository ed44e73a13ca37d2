"""The headless CLI: trains from a folder of photos on a single-file checkpoint."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT, write_photos
from lib_training.cli import FLAGS, SWITCHES, build_parser, config_from_args, main
from lib_training.lora.io import load_lora
from lib_training.models.single_file import save_checkpoint
from lib_training.models.tiny import build_models, tiny_text_config, tiny_unet_config, tiny_vae_config


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    configs = {"unet": tiny_unet_config(), "vae": tiny_vae_config(), "text": tiny_text_config()}
    unet, vae, text = build_models(configs["unet"], configs["vae"], configs["text"], seed=5)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-sd1.safetensors", unet, vae, text, "sd1", configs)


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "lib_training", *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=600)


def test_cli_trains_a_lora_from_photos_on_a_single_file_checkpoint(tiny_checkpoint, tmp_path):
    data = tmp_path / "data"
    write_photos(data / "3_sks cat", names=("chelsea", "coffee", "astronaut"),
                 captions={"chelsea": "sks cat, on a chair", "coffee": "sks cat, a cup"})
    out = tmp_path / "Lora"
    proc = _run_cli("train", "--checkpoint", str(tiny_checkpoint), "--data", str(data), "--output-dir", str(out),
                    "--name", "cli_lora", "--steps", "12", "--resolution", "64", "--rank", "4", "--alpha", "2",
                    "--lr", "1e-3", "--seed", "7", "--save-every", "1")
    assert proc.returncode == 0, proc.stderr
    assert "Saved" in proc.stdout and "12 steps" in proc.stdout and "final loss" in proc.stdout
    tensors, meta = load_lora(out / "cli_lora.safetensors")
    assert (out / "cli_lora-000001.safetensors").is_file()  # 9 samples an epoch: epoch 1 ended at step 9
    assert meta["ss_sd_model_name"] == "tiny-sd1.safetensors" and len(meta["ss_new_sd_model_hash"]) == 64
    assert meta["ss_seed"] == "7" and meta["ss_network_alpha"] == "2"
    assert sum(k.endswith(".alpha") for k in tensors) == 48 + 12
    assert (out / "lora_studio_runs" / "cli_lora" / "config.toml").is_file()


def test_cli_reports_bad_input_clearly(tiny_checkpoint, tmp_path):
    proc = _run_cli("train", "--checkpoint", str(tiny_checkpoint), "--data", str(tmp_path / "missing"),
                    "--output-dir", str(tmp_path / "out"), "--rank", "4")
    assert proc.returncode == 2
    assert "error:" in proc.stderr and "does not exist" in proc.stderr and "Traceback" not in proc.stderr
    not_safetensors = tmp_path / "model.ckpt"
    not_safetensors.write_bytes(b"PK")
    write_photos(tmp_path / "d" / "1_x", names=("chelsea",))
    proc = _run_cli("train", "--checkpoint", str(not_safetensors), "--data", str(tmp_path / "d"),
                    "--output-dir", str(tmp_path / "out"))
    assert proc.returncode == 2 and "only .safetensors" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_help_explains_every_flag(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for flag in list(FLAGS) + list(SWITCHES) + ["--config", "--resume"]:
        assert flag in text, flag


def test_flags_override_the_config_file(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('[network]\nrank = 64\nalpha = 32\n[optimizer]\nunet_lr = 0.0005\n[output]\nname = "from_file"\n')
    args = build_parser().parse_args(["train", "--config", str(toml), "--rank", "8", "--unet-only"])
    config = config_from_args(args)
    assert config.network.rank == 8 and config.network.alpha == 32.0
    assert config.optimizer.unet_lr == 5e-4 and config.output.name == "from_file"
    assert config.network.train_text_encoder is False
