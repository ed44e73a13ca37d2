"""A messy photo folder (tests/bad_inputs.py: 50 kinds of awkward and broken input beside good photos)
through every entry point: one report from the health check, one listing and a run from training.

Check, preprocess and import run in-process; the CLI in a subprocess as a user runs it; the WebUI's
training service with the real engine on a tiny model. An audit hook proves nothing outside the
dataset is opened.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from bad_inputs import IGNORED, LEFT_OUT, SUBSET, build_corpus
from conftest import ROOT, small_config
from lib_training.data.health import check_dataset
from lib_training.data.importer import import_folder
from lib_training.data.preflight import decide, preflight
from lib_training.data.preprocess import PreprocessOptions, preprocess_dataset
from lib_training.errors import DatasetError
from lib_training.lora.io import load_lora
from lib_training.train.loop import train
from lib_training.webui.backend.service import FINISHED, TrainingService


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build_corpus(tmp_path_factory.mktemp("messy"))


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    from lib_training.models.single_file import save_checkpoint
    from lib_training.models.tiny import build_models, tiny_text_config, tiny_unet_config, tiny_vae_config

    configs = {"unet": tiny_unet_config(), "vae": tiny_vae_config(), "text": tiny_text_config()}
    unet, vae, text = build_models(configs["unet"], configs["vae"], configs["text"], seed=5)
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny-sd1.safetensors", unet, vae, text, "sd1", configs)


class OpenedFiles:
    """Every file this process opens while active (Python's audit hook sees each open())."""

    _active: list = []

    def __init__(self) -> None:
        self.paths: list[str] = []

    def __enter__(self):
        if not OpenedFiles._active:
            sys.addaudithook(OpenedFiles._hook)  # hooks cannot be removed: one for the session, gated
        OpenedFiles._active.append(self)
        return self

    def __exit__(self, *exc) -> None:
        OpenedFiles._active.remove(self)

    @staticmethod
    def _hook(event: str, args: tuple) -> None:
        if event == "open" and OpenedFiles._active and isinstance(args[0], (str, bytes, os.PathLike)):
            for recorder in OpenedFiles._active:
                recorder.paths.append(os.path.realpath(os.fsdecode(args[0])))

    def under(self, folder: Path) -> list[str]:
        root = os.path.realpath(folder)
        return [p for p in self.paths if p == root or p.startswith(root + os.sep)]


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "lib_training", *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=600)


def test_the_corpus_has_at_least_30_kinds_of_bad_input(corpus):
    bad = [k for k in corpus.kinds if not k.name.startswith(("good photos", "class images"))]
    assert len(bad) >= 30, len(bad)
    assert len(corpus.of(LEFT_OUT)) >= 20 and corpus.of(IGNORED)


def test_the_pre_flight_decides_per_file_as_each_kind_says(corpus):
    with OpenedFiles() as opened:
        checked = decide(corpus.project)
    assert {item.path for item in checked.left_out} == corpus.expected_left_out
    assert {item.path for item in checked.spec.train_items} == corpus.expected_train_images
    assert {item.path for item in checked.spec.reg_items} == corpus.expected_class_images
    assert set(checked.sizes) == corpus.expected_train_images | corpus.expected_class_images
    assert all(item.reason and str(item.path) not in item.reason for item in checked.left_out)
    assert opened.paths and not opened.under(corpus.outside)  # nothing outside the dataset was opened


def test_the_dataset_tabs_problem_gallery_opens_nothing_outside(corpus, tmp_path):
    from lib_training.webui.dataset.actions import problem_images

    report = check_dataset(corpus.project, resolution=64)
    with OpenedFiles() as opened:
        images = problem_images(report, tmp_path / "thumbs", limit=1000)
    assert {p.path for p in images} >= corpus.expected_left_out
    assert not opened.under(corpus.outside)


def test_dataset_check_prints_one_report_and_never_stops_on_a_folder_name(corpus):
    proc = _run_cli("dataset", "check", str(corpus.project), "--resolution", "64")
    assert proc.returncode == 1, proc.stderr  # errors in the report; it is a report, not a stop
    assert "Traceback" not in proc.stderr and proc.stdout.count("Dataset check of") == 1
    for path in corpus.expected_left_out:
        assert str(path) in proc.stdout, path
    report = check_dataset(corpus.project, resolution=64)
    codes = {issue.code for issue in report.issues}
    assert {"broken", "too_large", "too_small_to_train", "folder_name", "loose_image", "outside_dataset",
            "broken_link", "unsupported_format", "orphan_caption", "near_duplicate", "cmyk", "exif_rotation",
            "high_bit_depth", "transparency", "caption_not_utf8", "empty_caption", "missing_caption"} <= codes


def test_preprocess_writes_what_training_keeps_and_lists_the_rest(corpus, tmp_path):
    with OpenedFiles() as opened:
        result = preprocess_dataset(corpus.project, tmp_path / "out", PreprocessOptions(resolution=64))
    sources = {image.source for image in result.images}
    assert sources == corpus.expected_train_images | corpus.expected_class_images
    assert {skipped.path for skipped in result.skipped} == corpus.expected_left_out
    assert not opened.under(corpus.outside)


def test_import_copies_nothing_from_outside_and_says_what_it_skipped(corpus, tmp_path):
    with OpenedFiles() as opened:
        result = import_folder(corpus.project, tmp_path / "imported")
    assert not opened.under(corpus.outside)
    skipped = {s.path.name for s in result.skipped}
    assert {"linked.png", "up.png", "captionlink.txt", "5_more", "0_zero", "-1_negative", "holiday photos"} <= skipped
    copied = {p.read_bytes() for p in (tmp_path / "imported").rglob("*") if p.is_file()}
    assert b"private words" not in copied


def test_the_cli_trains_on_the_good_files_after_one_listing(corpus, tiny_checkpoint, tmp_path):
    out = tmp_path / "Lora"
    proc = _run_cli("train", "--checkpoint", str(tiny_checkpoint), "--data", str(corpus.project),
                    "--output-dir", str(out), "--name", "messy", "--steps", "2", "--resolution", "64",
                    "--rank", "4", "--alpha", "4", "--seed", "1", "--save-every", "0")
    assert proc.returncode == 0, proc.stderr
    output = proc.stdout + proc.stderr
    for path in corpus.expected_left_out:
        assert output.count(str(path)) == 1, path  # listed once, together
    assert output.index("Pre-flight:") < output.index("Loading")  # before the checkpoint is loaded
    _, meta = load_lora(out / "messy.safetensors")
    repeats = int(SUBSET.split("_")[0])  # every good image sits in the one "<repeats>_sks cat" folder
    assert int(meta["ss_num_train_images"]) == repeats * len(corpus.expected_train_images)  # kohya: × repeats
    record = json.loads((out / "lora_studio_runs" / "messy" / "preflight.json").read_text(encoding="utf-8"))
    assert {Path(item["path"]) for item in record["left_out"]} == corpus.expected_left_out


def test_the_cli_refuses_once_before_loading_when_nothing_usable_is_left(tmp_path, tiny_checkpoint, corpus):
    folder = tmp_path / "all_bad" / "3_x"
    folder.mkdir(parents=True)
    bad = ("empty.png", "notes.png", "bomb.png", "truncated.jpg", "download.jpg", "pixel.png")
    for name in bad:
        (folder / name).write_bytes((corpus.project / "img" / "10_sks cat" / name).read_bytes())
    proc = _run_cli("train", "--checkpoint", str(tiny_checkpoint), "--data", str(tmp_path / "all_bad"),
                    "--output-dir", str(tmp_path / "out"), "--steps", "1", "--resolution", "64")
    assert proc.returncode == 2 and "Loading" not in proc.stdout and "Traceback" not in proc.stderr
    assert proc.stderr.count("error:") == 1 and "Nothing to train on" in proc.stderr
    for name in bad:
        assert proc.stderr.count(name) == 1, name
    assert not (tmp_path / "out").exists()


def test_strict_refuses_with_the_whole_list_before_loading(corpus, tiny_checkpoint, tmp_path):
    proc = _run_cli("train", "--checkpoint", str(tiny_checkpoint), "--data", str(corpus.project), "--strict",
                    "--output-dir", str(tmp_path / "out"), "--steps", "1", "--resolution", "64")
    assert proc.returncode == 2 and "Loading" not in proc.stdout and "Strict mode" in proc.stderr
    assert all(str(path) in proc.stderr for path in corpus.expected_left_out)
    with pytest.raises(DatasetError, match=f"Strict mode: {len(corpus.expected_left_out)} file"):
        preflight(corpus.project, strict=True)


def test_the_webui_service_lists_what_it_left_out_and_trains(corpus, sd1_model, tmp_path):
    def runner(config, on_event, cancel, resume=False, checked=None):
        return train(config, sd1_model, on_event, cancel, resume=resume, checked=checked)

    service = TrainingService(runner=runner, lock=threading.Lock())
    config = small_config(corpus.project, tmp_path / "Lora", train__max_steps=2, train__save_every_epochs=0,
                          data__cache_latents=False)  # two steps need two images encoded, not all
    status = service.run(config)
    assert status.state == FINISHED, status.error
    assert {Path(item["path"]) for item in status.left_out} == corpus.expected_left_out
    assert any(m.startswith("Pre-flight: training on") for m in status.messages)
    _, meta = load_lora(Path(status.result))
    repeats = int(SUBSET.split("_")[0])  # every good image sits in the one "<repeats>_sks cat" folder
    assert int(meta["ss_num_train_images"]) == repeats * len(corpus.expected_train_images)  # kohya: × repeats
