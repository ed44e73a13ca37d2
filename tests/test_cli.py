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


# ---- help, refusals before the load, Ctrl-C, determinism (issue cli-package) ----------------------

def test_help_shows_defaults_and_a_word_on_every_toml_only_setting(capsys):
    import dataclasses

    from lib_training.cli_help import TOML_ONLY
    from lib_training.config import TrainConfig

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "LoRA rank (network_dim), typical 8-128 (default: 32)" in text
    assert "torchrun --nproc_per_node N -m lib_training train" in text
    flagged = {f"{section}.{field}" for section, field, *_ in list(FLAGS.values()) + list(SWITCHES.values())}
    config = TrainConfig()
    for section in dataclasses.fields(config):
        for setting in dataclasses.fields(getattr(config, section.name)):
            key = f"{section.name}.{setting.name}"
            assert key in flagged or key in TOML_ONLY, f"{key} has neither a flag nor a word in --help"
    for key in TOML_ONLY:
        section, field = key.split(".")
        assert f"[{section}] {field} = " in text


@pytest.mark.parametrize("case", ["name taken", "no images", "nothing to resume"])
def test_refusals_that_need_no_model_come_before_the_checkpoint_load(case, tiny_checkpoint, tmp_path, monkeypatch,
                                                                     capsys):
    from lib_training.models import single_file

    def no_load(*args, **kwargs):
        raise AssertionError("the checkpoint was loaded before the refusal")

    monkeypatch.setattr(single_file, "load_checkpoint", no_load)
    data, out = tmp_path / "data", tmp_path / "Lora"
    write_photos(data / "1_sks cat", names=("chelsea",))
    args = ["train", "--checkpoint", str(tiny_checkpoint), "--data", str(data), "--output-dir", str(out),
            "--name", "taken", "--resolution", "64"]
    expected = {"name taken": "already exists", "no images": "No images found",
                "nothing to resume": "No resumable state"}[case]
    if case == "name taken":
        out.mkdir()
        (out / "taken.safetensors").write_bytes(b"mine")
    elif case == "no images":
        (data / "1_sks cat" / "chelsea.png").unlink()
    else:
        args.append("--resume")
    assert main(args) == 2
    assert expected in capsys.readouterr().err
    if case == "name taken":
        assert (out / "taken.safetensors").read_bytes() == b"mine"


def test_ctrl_c_keeps_a_resumable_state_and_resume_finishes_the_run(tiny_checkpoint, tmp_path):
    import signal
    import time

    data, out = tmp_path / "data", tmp_path / "Lora"
    write_photos(data / "2_sks cat", names=("chelsea", "coffee"), size=64)
    args = ["train", "--checkpoint", str(tiny_checkpoint), "--data", str(data), "--output-dir", str(out),
            "--name", "ctrl_c", "--steps", "40", "--resolution", "64", "--rank", "4", "--seed", "3",
            "--save-every", "0", "--unet-only"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "lib_training", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    log = out / "lora_studio_runs" / "ctrl_c" / "log.jsonl"
    deadline = time.monotonic() + 300
    while not (log.is_file() and len(log.read_text().splitlines()) >= 2):
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Resume it later" in err and "Traceback" not in err
    assert (log.parent / "resume.lsstate").is_file() and not (out / "ctrl_c.safetensors").exists()
    stopped_at = len(log.read_text().splitlines())
    assert stopped_at < 40

    resumed = _run_cli(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert f"Resuming at step {stopped_at} of 40" in resumed.stdout + resumed.stderr
    steps = [int(line.split('"step": ')[1].split(",")[0]) for line in log.read_text().splitlines()]
    assert steps == list(range(1, 41)) and (out / "ctrl_c.safetensors").is_file()


def test_same_seed_and_settings_give_a_bit_identical_lora(tiny_checkpoint, tmp_path):
    """Each run is a new process: without the saved kernel choices, timing could pick others."""
    data = tmp_path / "data"
    write_photos(data / "2_sks cat", names=("chelsea", "coffee"))
    cache = tmp_path / "xdg-cache"
    files = []
    for run in ("a", "b"):
        env = {**os.environ, "PYTHONPATH": str(ROOT), "XDG_CACHE_HOME": str(cache)}
        proc = subprocess.run([sys.executable, "-m", "lib_training", "train", "--checkpoint", str(tiny_checkpoint),
                               "--data", str(data), "--output-dir", str(tmp_path / run), "--name", "same",
                               "--steps", "6", "--resolution", "64", "--rank", "4", "--seed", "11"],
                              capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
        assert proc.returncode == 0, proc.stderr
        files.append(load_lora(tmp_path / run / "same.safetensors")[0])
    assert list((cache / "lora_studio" / "cpu_tuning").glob("choices-*.json"))  # the first run's choices
    assert files[0].keys() == files[1].keys()
    assert all(torch_equal(files[0][k], files[1][k]) for k in files[0])


def torch_equal(a, b) -> bool:
    return bool((a == b).all()) and a.dtype == b.dtype
