"""Fault injection: a killed process, a full disk, out of memory, NaN and 20 cancels at random points.

Each fault ends with the base model bit-identical, no partial `.safetensors` in the output folder,
the previous epoch files intact and, where the run was interrupted, a resumable state whose resume
reproduces the uninterrupted run's loss curve. kill -9 needs a real process (the CLI, in a
subprocess); the others run in-process on the session's tiny model.

The run: 2 images x 1 repeat, batch 1 = 2 steps an epoch, 6 steps, an epoch file after steps 2 and 4,
samples requested at steps 3 and 6. The tallies (runs, crashes, files lost, model bit-identical)
are written to tests/artifacts/faults.json for the README's reliability table.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import ROOT, small_config, write_photos
from lib_training.errors import TrainingCancelled, TrainingError
from lib_training.lora.io import load_lora
from lib_training.train import events as ev
from lib_training.train import loop
from lib_training.train.state import STATE_FILE, load_state
from lib_training.webui.train.runs import read_run

TOTAL_STEPS = 6
EPOCH_STEPS = (2, 4)  # epoch files written after these steps
SAMPLE_STEPS = (3, 6)
CHAINS, CANCELS_PER_CHAIN = 5, 4  # 20 cancels
ARTIFACTS = Path(__file__).parent / "artifacts"
TALLY = {"runs": 0, "crashes": 0, "files_lost": 0, "model_bit_identical": 0, "model_checked": 0,
         "resumes_matching_loss_curve": 0, "resumes": 0, "kinds": []}


@pytest.fixture(scope="module", autouse=True)
def tally():
    yield TALLY
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "faults.json").write_text(json.dumps(TALLY, indent=2), encoding="utf-8")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("faults_data")
    write_photos(root / "1_sks cat", captions={"chelsea": "sks cat, sitting", "astronaut": "sks cat, astronaut"})
    return root


def fault_config(dataset: Path, out: Path):
    return small_config(dataset, out, train__max_steps=TOTAL_STEPS, train__save_every_epochs=1,
                        train__sample_every_steps=3, train__sample_prompts=["sks"],
                        network__train_text_encoder=False)


@pytest.fixture(scope="module")
def reference(sd1_model, dataset, tmp_path_factory):
    """The uninterrupted run every fault is compared with."""
    out = tmp_path_factory.mktemp("reference")
    result = loop.train(fault_config(dataset, out), sd1_model)
    epochs = {step: (out / f"test_lora-{step // 2:06d}.safetensors").read_bytes() for step in EPOCH_STEPS}
    return {"losses": result.losses, "final": load_lora(result.path)[0], "epochs": epochs}


def model_state(model) -> dict:
    return {f"{prefix}.{name}": p.detach().clone() for prefix, module in (("unet", model.unet()),
                                                                          ("te", model.text_encoder()))
            for name, p in module.named_parameters()}


def check_aftermath(model, before: dict, out: Path, reference: dict, done_step: int) -> None:
    """The model as found, every .safetensors complete, the epoch files written so far intact."""
    TALLY["runs"] += 1
    TALLY["model_checked"] += 1
    now = model_state(model)
    assert all(torch.equal(now[k], v) for k, v in before.items()), "the base model changed"
    TALLY["model_bit_identical"] += 1
    for path in out.glob("*.safetensors"):
        load_lora(path)  # complete, readable
    assert not list(out.glob(".*.tmp")), "a temp file was left beside the LoRA files"
    for step in EPOCH_STEPS:
        path = out / f"test_lora-{step // 2:06d}.safetensors"
        if step <= done_step:
            if not path.is_file():
                TALLY["files_lost"] += 1
            assert path.is_file(), f"epoch file of step {step} lost"
            tensors, reference_tensors = load_lora(path)[0], _tensors(reference["epochs"][step])
            assert all(torch.equal(tensors[k], reference_tensors[k]) for k in reference_tensors)


def _tensors(blob: bytes) -> dict:
    import safetensors.torch

    return safetensors.torch.load(blob)


def finish_by_resuming(model, dataset: Path, out: Path, reference: dict):
    result = loop.train(fault_config(dataset, out), model, resume=True)
    TALLY["resumes"] += 1
    assert [s for s, _ in result.losses] == list(range(1, TOTAL_STEPS + 1))
    expected = [x for _, x in reference["losses"]]
    assert [x for _, x in result.losses] == pytest.approx(expected, rel=1e-5, abs=1e-6)
    final = load_lora(result.path)[0]
    assert all(torch.allclose(final[k], v, rtol=1e-5, atol=1e-6) for k, v in reference["final"].items())
    TALLY["resumes_matching_loss_curve"] += 1
    assert not (out / "lora_studio_runs" / "test_lora" / STATE_FILE).exists()
    assert read_run(out / "lora_studio_runs" / "test_lora").resumable is False  # finished: never offered
    return result


class Faults:
    """Sets the cancel token (or raises) at one moment of a run: caching, a step, a save, a sample."""

    def __init__(self, model, monkeypatch, token: ev.CancelToken, start_step: int):
        self.model, self.token, self.start_step = model, token, start_step
        self.point: tuple = ()
        self.encodes = self.predicts = 0
        self.raise_at_step: tuple = ()
        original_encode, original_predict, original_save = model.encode_images, model.predict, loop.save_lora

        def encode(pixels):
            self.encodes += 1
            if self.point == ("caching", self.encodes):
                token.cancel()
            return original_encode(pixels)

        def predict(*args):
            self.predicts += 1
            step = self.start_step + self.predicts
            if self.point == ("step", step):
                token.cancel()
            if self.raise_at_step and self.raise_at_step[0] == step:
                error = self.raise_at_step[1]
                if error == "nan":
                    return original_predict(*args) * float("nan")
                raise error
            return original_predict(*args)

        def save(path, tensors, metadata):
            epoch_file = f"test_lora-{self.point[1] // 2:06d}.safetensors" if self.point else ""
            if self.point and self.point[0] == "save" and Path(path).name == epoch_file:
                token.cancel()
            return original_save(path, tensors, metadata)

        monkeypatch.setattr(model, "encode_images", encode)
        monkeypatch.setattr(model, "predict", predict)
        monkeypatch.setattr(loop, "save_lora", save)

    def on_event(self, event) -> None:
        if isinstance(event, ev.SampleRequest) and self.point == ("sample", event.step):
            self.token.cancel()


def random_point(rng: random.Random, done: int) -> tuple:
    """A moment of a run resumed at step `done` where a cancel stops it: caching an image, a step, an epoch
    save, a sample (not the last step: a cancel there comes after the last check, and the run finishes)."""
    moments = {"caching": [1, 2], "step": list(range(done + 1, TOTAL_STEPS)),
               "save": [s for s in EPOCH_STEPS if s > done],
               "sample": [s for s in SAMPLE_STEPS if done < s < TOTAL_STEPS]}
    phase = rng.choice([phase for phase, values in moments.items() if values])  # each phase as likely
    return phase, rng.choice(moments[phase])


def cancel_step(point: tuple, done: int) -> int:
    """The step a cancel at `point` stops at: the loop checks before each step, the cache before each image."""
    kind, value = point
    return done if kind == "caching" else value


@pytest.mark.parametrize("chain", range(CHAINS))
def test_cancels_at_random_points_then_resume_reproduce_the_run(sd1_model, dataset, reference, tmp_path,
                                                                 monkeypatch, chain):
    rng = random.Random(1900 + chain)
    out = tmp_path / "out"
    before = model_state(sd1_model)
    done = 0
    for _ in range(CANCELS_PER_CHAIN):
        token = ev.CancelToken()
        faults = Faults(sd1_model, monkeypatch, token, done)
        faults.point = random_point(rng, done)
        expected = cancel_step(faults.point, done)
        try:
            with pytest.raises(TrainingCancelled, match=f"at step {expected} of {TOTAL_STEPS}"):
                loop.train(fault_config(dataset, out), sd1_model, on_event=faults.on_event, cancel=token,
                           resume=(out / "lora_studio_runs" / "test_lora" / STATE_FILE).exists())
        except BaseException as error:
            TALLY["crashes"] += not isinstance(error, pytest.fail.Exception)
            raise
        finally:
            monkeypatch.undo()
        done = load_state(out / "lora_studio_runs" / "test_lora").step
        assert done == expected
        TALLY["kinds"].append(f"cancel during {faults.point[0]}")
        check_aftermath(sd1_model, before, out, reference, done)
    finish_by_resuming(sd1_model, dataset, out, reference)
    check_aftermath(sd1_model, before, out, reference, TOTAL_STEPS)


def test_disk_full_during_a_save_keeps_the_last_epoch_and_a_resumable_state(sd1_model, dataset, reference,
                                                                            tmp_path, monkeypatch):
    out = tmp_path / "out"
    before = model_state(sd1_model)
    real_fsync = os.fsync

    def full_disk(fd):
        if "test_lora-000002.safetensors" in os.readlink(f"/proc/self/fd/{fd}"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(TrainingError) as stop:
        loop.train(fault_config(dataset, out), sd1_model)
    monkeypatch.undo()
    message = str(stop.value)
    assert "No space left on device" in message and "test_lora-000001.safetensors, is intact" in message
    assert "resumable state at step 4" in message
    assert not (out / "test_lora-000002.safetensors").exists()
    TALLY["kinds"].append("disk full (ENOSPC) during a save")
    check_aftermath(sd1_model, before, out, reference, 2)
    finish_by_resuming(sd1_model, dataset, out, reference)  # writes the epoch file the full disk refused
    check_aftermath(sd1_model, before, out, reference, TOTAL_STEPS)


def test_out_of_memory_at_a_random_step_says_what_to_lower(sd1_model, dataset, reference, tmp_path, monkeypatch):
    out = tmp_path / "out"
    before = model_state(sd1_model)
    step = random.Random(7).randint(2, TOTAL_STEPS)
    faults = Faults(sd1_model, monkeypatch, ev.CancelToken(), 0)
    faults.raise_at_step = (step, torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    with pytest.raises(TrainingError) as stop:
        loop.train(fault_config(dataset, out), sd1_model)
    monkeypatch.undo()
    message = str(stop.value)
    assert f"Out of memory at step {step}" in message
    assert all(word in message for word in ("batch size", "resolution", "gradient checkpointing"))
    assert f"resumable state at step {step - 1}" in message
    TALLY["kinds"].append("out of memory at a random step")
    check_aftermath(sd1_model, before, out, reference, step - 1)
    finish_by_resuming(sd1_model, dataset, out, reference)
    check_aftermath(sd1_model, before, out, reference, TOTAL_STEPS)


def test_nan_loss_stops_and_keeps_the_epoch_files(sd1_model, dataset, reference, tmp_path, monkeypatch):
    out = tmp_path / "out"
    before = model_state(sd1_model)
    faults = Faults(sd1_model, monkeypatch, ev.CancelToken(), 0)
    faults.raise_at_step = (5, "nan")
    with pytest.raises(TrainingError, match=r"loss became nan at step 5.*test_lora-000002\.safetensors"):
        loop.train(fault_config(dataset, out), sd1_model)
    monkeypatch.undo()
    TALLY["kinds"].append("NaN loss")
    check_aftermath(sd1_model, before, out, reference, 4)
    assert not (out / "test_lora.safetensors").exists()


def test_kill_9_during_a_save_leaves_no_partial_file_and_resumes(dataset, tmp_path):
    checkpoint = _tiny_checkpoint(tmp_path)
    digest = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    args = ["train", "--checkpoint", str(checkpoint), "--data", str(dataset), "--resolution", "64", "--rank", "4",
            "--alpha", "4", "--steps", str(TOTAL_STEPS), "--save-every", "1", "--unet-only", "--seed", "3",
            "--name", "test_lora"]
    whole = _cli(args + ["--output-dir", str(tmp_path / "whole")])
    assert whole.returncode == 0, whole.stderr
    out = tmp_path / "killed"
    killed = _cli(args + ["--output-dir", str(out)], kill_when_saving="test_lora-000002.safetensors")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert sorted(p.name for p in out.glob("*.safetensors")) == ["test_lora-000001.safetensors"]
    load_lora(out / "test_lora-000001.safetensors")  # the previous epoch file is intact
    assert load_state(out / "lora_studio_runs" / "test_lora").step == 2  # resumable from epoch 1
    resumed = _cli(args + ["--output-dir", str(out), "--resume"])
    assert resumed.returncode == 0, resumed.stderr
    assert not list(out.glob(".*.tmp"))  # the killed write's temp file is gone
    losses = [_log(folder) for folder in (tmp_path / "whole", out)]
    assert [s for s, _ in losses[1]] == list(range(1, TOTAL_STEPS + 1))
    # Two processes: the CPU layer tuner may time another, equally exact, kernel (train/cpu_tuning.py).
    assert [x for _, x in losses[1]] == pytest.approx([x for _, x in losses[0]], rel=1e-4, abs=1e-6)
    assert hashlib.sha256(checkpoint.read_bytes()).hexdigest() == digest  # the model file is untouched
    TALLY["runs"] += 2
    TALLY["resumes"] += 1
    TALLY["resumes_matching_loss_curve"] += 1
    TALLY["kinds"].append("kill -9 during a save")


def _cli(args: list, kill_when_saving: str = "") -> subprocess.CompletedProcess:
    """The CLI in a child process; with `kill_when_saving`, it SIGKILLs itself while that file is written."""
    code = ("import os, signal, sys\n"
            "name = os.environ.get('KILL_WHEN_SAVING')\n"
            "real = os.fsync\n"
            "def fsync(fd):\n"
            "    if name and name in os.readlink(f'/proc/self/fd/{fd}'):\n"
            "        os.kill(os.getpid(), signal.SIGKILL)\n"
            "    return real(fd)\n"
            "os.fsync = fsync\n"
            "from lib_training.cli import main\n"
            "sys.exit(main(sys.argv[1:]))\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "KILL_WHEN_SAVING": kill_when_saving}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=600)


def _log(output_dir: Path) -> list:
    lines = (output_dir / "lora_studio_runs" / "test_lora" / "log.jsonl").read_text(encoding="utf-8").splitlines()
    return [(r["step"], r["loss"]) for r in map(json.loads, lines)]


def _tiny_checkpoint(folder: Path) -> Path:
    from lib_training.models.single_file import save_checkpoint
    from lib_training.models.tiny import build_models, tiny_text_config, tiny_unet_config, tiny_vae_config

    configs = {"unet": tiny_unet_config(), "vae": tiny_vae_config(), "text": tiny_text_config()}
    unet, vae, text = build_models(configs["unet"], configs["vae"], configs["text"], seed=5)
    return save_checkpoint(folder / "tiny-sd1.safetensors", unet, vae, text, "sd1", configs)
