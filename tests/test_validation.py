"""The validation loss (lib_training/train/validation.py): held-out images at fixed noise and timesteps,
deterministic, on the schedule asked for, in the log, the events, the files' metadata and the result,
without changing what the run trains."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from conftest import small_config, write_photos
from lib_training.data.folders import scan_dataset
from lib_training.errors import DatasetError, SettingsError, TrainingCancelled
from lib_training.lora.io import load_lora
from lib_training.lora.metadata import VALIDATION_LOSS_KEY
from lib_training.train import events as ev
from lib_training.train import validation as val
from lib_training.train.validation_log import VALIDATION_LOG
from lib_training.train.loop import train
from lib_training.train.plan import make_plan


@pytest.fixture
def four_photos(tmp_path):
    root = tmp_path / "four"
    write_photos(root / "1_sks thing", names=("chelsea", "astronaut", "coffee", "rocket"),
                 captions={n: f"sks thing, {n}" for n in ("chelsea", "astronaut", "coffee", "rocket")})
    return root


def test_the_split_holds_out_a_share_by_seed_never_all_and_refuses_one_image(four_photos, tmp_path):
    items = scan_dataset(four_photos).train_items
    kept, held = val.split_items(items, 0.25, seed=1)
    assert len(held) == 1 and len(kept) == 3 and {i.path for i in kept + held} == {i.path for i in items}
    assert val.split_items(list(reversed(items)), 0.25, seed=1)[1] == held  # by name, not by listing order
    assert len(val.split_items(items, 0.99, seed=1)[1]) == 3  # never all
    assert val.split_items(items, 0.0, seed=1) == (items, [])
    with pytest.raises(DatasetError, match="at least 2 training images"):
        val.split_items(items[:1], 0.5, seed=1)
    plan = make_plan(small_config(four_photos, tmp_path / "o", validation__split=0.25))
    assert len(plan.train_samples) == 3 and len(plan.val_samples) == 1
    assert plan.val_samples[0].item.path not in {s.item.path for s in plan.train_samples}


def test_the_cli_flags_set_the_validation_settings(photo_dataset):
    from lib_training.cli import build_parser, config_from_args

    args = build_parser().parse_args(["train", "--validation-split", "0.2", "--validate-every-steps", "50",
                                      "--validation-data", str(photo_dataset)])
    v = config_from_args(args).validation
    assert (v.split, v.every_steps, v.folder, v.every_epochs) == (0.2, 50, str(photo_dataset), 1)


def test_fixed_timesteps_spread_over_the_schedule():
    assert val.fixed_timesteps(4, 1000) == [125, 375, 625, 875]
    assert val.fixed_timesteps(1, 1000) == [500]


@pytest.mark.parametrize("overrides, message", [
    ({"validation__split": 1.0}, "validation.split"),
    ({"validation__folder": "/no/such/folder"}, "validation folder"),
    ({"validation__split": 0.5, "validation__every_epochs": 0}, "never computed"),
    ({"validation__timesteps": 0}, "validation.timesteps"),
])
def test_bad_validation_settings_say_what_to_do(photo_dataset, tmp_path, overrides, message):
    with pytest.raises(SettingsError, match=message):
        small_config(photo_dataset, tmp_path / "o", **overrides).validate()


def test_an_empty_validation_folder_is_refused_before_training(sd1_model, photo_dataset, tmp_path):
    (tmp_path / "empty" / "1_x").mkdir(parents=True)
    config = small_config(photo_dataset, tmp_path / "o", validation__folder=str(tmp_path / "empty"))
    with pytest.raises(DatasetError):
        train(config, sd1_model)
    assert not (tmp_path / "o" / "test_lora.safetensors").exists()


def test_validation_changes_nothing_the_run_trains_and_is_deterministic(sd1_model, photo_dataset, tmp_path):
    plain = train(small_config(photo_dataset, tmp_path / "plain"), sd1_model)
    config = dict(validation__folder=str(photo_dataset), validation__every_steps=2)
    first = train(small_config(photo_dataset, tmp_path / "a", **config), sd1_model)
    second = train(small_config(photo_dataset, tmp_path / "b", **config), sd1_model)
    assert plain.losses == first.losses  # same training randomness, bit for bit
    a, b = load_lora(plain.path)[0], load_lora(first.path)[0]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert first.validation == second.validation and [s for s, _ in first.validation] == [0, 2, 4, 6]
    assert plain.validation == []


def test_validation_loss_on_the_training_images_falls_as_the_lora_learns(sd1_model, photo_dataset, tmp_path):
    # The training images as the validation folder: the LoRA's fit to them must show. (Measured 1.125 -> 1.065
    # at lr 1e-3, rank 4; here 3e-3, rank 8 as test_training's loss test.)
    config = small_config(photo_dataset, tmp_path / "o", train__max_steps=30, validation__folder=str(photo_dataset),
                          validation__every_epochs=0, validation__every_steps=15, optimizer__unet_lr=3e-3,
                          network__rank=8, network__alpha=8.0)
    result = train(config, sd1_model)
    (s0, before), (_, middle), (s30, after) = result.validation
    assert (s0, s30) == (0, 30)
    assert after < middle < before and after < 0.9 * before, result.validation


def test_schedule_log_events_and_file_metadata(sd1_model, four_photos, tmp_path):
    seen = []
    # 3 training images, batch 1: 3 steps per epoch, 7 steps = 2 epochs and a bit; every epoch and every 5 steps
    config = small_config(four_photos, tmp_path / "o", train__max_steps=7, validation__split=0.25,
                          validation__every_steps=5, train__save_every_epochs=1)
    result = train(config, sd1_model, on_event=seen.append)
    assert [s for s, _ in result.validation] == [0, 3, 5, 6, 7]  # before, epochs 1 and 2, step 5, the end
    events = [e for e in seen if isinstance(e, ev.Validated)]
    assert [(e.step, e.loss) for e in events] == result.validation
    assert [e.epoch for e in events] == [0, 1, 1, 2, 2]
    logged = [json.loads(line) for line in (tmp_path / "o" / "lora_studio_runs" / "test_lora" /
                                            VALIDATION_LOG).read_text().splitlines()]
    assert [(r["step"], r["val_loss"]) for r in logged] == result.validation
    by_step = dict(result.validation)
    for path in result.files:  # epochs 1 and 2 (steps 3 and 6), the final file (step 7)
        meta = load_lora(path)[1]
        assert float(meta[VALIDATION_LOSS_KEY]) == pytest.approx(by_step[int(meta["ss_steps"])], rel=1e-5)


def test_a_resumed_run_continues_the_same_validation_curve(sd1_model, photo_dataset, tmp_path):
    settings = dict(train__max_steps=8, validation__folder=str(photo_dataset), validation__every_steps=2)
    full = train(small_config(photo_dataset, tmp_path / "full", **settings), sd1_model)
    cancel = ev.CancelToken()

    def cancel_at_step_4(event):
        if isinstance(event, ev.StepDone) and event.step == 4:
            cancel.cancel()

    with pytest.raises(TrainingCancelled):
        train(small_config(photo_dataset, tmp_path / "split", **settings), sd1_model, on_event=cancel_at_step_4,
              cancel=cancel)
    resumed = train(small_config(photo_dataset, tmp_path / "split", **settings), sd1_model, resume=True)
    assert [s for s, _ in resumed.validation] == [0, 2, 4, 6, 8]
    assert [v for _, v in resumed.validation] == pytest.approx([v for _, v in full.validation], rel=1e-4)


# ---- offered to Compare: the loss chart and the files' metadata -----------------------------------
def test_compare_reads_the_validation_log_beside_the_loss_log(tmp_path):
    import numpy as np

    from lib_training.compare import curves

    run = tmp_path / "runs" / "v1"
    run.mkdir(parents=True)
    (run / curves.LOG_FILE).write_text("".join(json.dumps({"step": s, "loss": 0.3}) + "\n" for s in range(1, 11)))
    lines = [{"step": 0, "epoch": 0, "val_loss": 0.5}, {"step": 5, "epoch": 1, "val_loss": 0.2},
             {"step": 10, "epoch": 2, "val_loss": 0.25}]
    (run / VALIDATION_LOG).write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"step": 11, "va')
    series = curves.read_loss_log(run)
    assert series.validation == ((0, 0.5), (5, 0.2), (10, 0.25)) and series.lowest_validation == (5, 0.2)
    with_val = np.asarray(curves.draw_loss_chart([series], size=(640, 400)))
    without = np.asarray(curves.draw_loss_chart([dataclasses.replace(series, validation=())], size=(640, 400)))
    assert (with_val != without).any()  # the validation line and its dots are drawn


def test_compare_reads_the_validation_log_without_loading_torch(tmp_path):
    """Compare and the run list read the log in a process that has not loaded the engine (or torch)."""
    import subprocess
    import sys

    run = tmp_path / "run"
    run.mkdir()
    (run / "log.jsonl").write_text(json.dumps({"step": 1, "loss": 0.3}) + "\n")
    (run / VALIDATION_LOG).write_text(json.dumps({"step": 1, "epoch": 1, "val_loss": 0.2}) + "\n")
    code = ("import sys; from lib_training.compare import curves; "
            f"print(curves.read_loss_log({str(run)!r}).validation, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["((1,", "0.2),)", "False"]


def test_the_train_tabs_status_carries_the_validation_loss_for_its_chart(photo_dataset, tmp_path):
    import threading
    from types import SimpleNamespace

    from lib_training.webui.backend.service import FINISHED, TrainingService

    def runner(config, on_event, cancel, resume=False, checked=None):
        on_event(ev.Started(total_steps=2, steps_per_epoch=1, epochs=2, num_train_images=2, num_reg_images=0))
        on_event(ev.Validated(0, 0, 0.5))
        for step in (1, 2):
            on_event(ev.StepDone(step, 2, step, 0.3, 1e-4, step, 2 - step))
            on_event(ev.Validated(step, step, 0.5 - 0.1 * step))
        final = tmp_path / "out" / "test_lora.safetensors"
        on_event(ev.Finished(final, 2, 1.0, 0.3, files=(final,)))
        return SimpleNamespace(path=final)

    service = TrainingService(runner=runner, lock=threading.Lock())
    status = service.run(small_config(photo_dataset, tmp_path / "out"))
    assert status.state == FINISHED
    assert status.val_losses == [[0, 0.5], [1, 0.4], [2, pytest.approx(0.3)]]
    assert status.to_dict()["val_losses"][0] == [0, 0.5]


def test_compare_offers_the_files_validation_loss(sd1_model, photo_dataset, tmp_path):
    from lib_training.compare.grid import LoraFile
    from lib_training.compare.validation_signal import VALIDATION_LOSS_KEY as COMPARE_KEY
    from lib_training.compare.validation_signal import validation_losses, validation_note

    assert COMPARE_KEY == VALIDATION_LOSS_KEY
    result = train(small_config(photo_dataset, tmp_path / "o", train__max_steps=8, validation__folder=str(photo_dataset)),
                   sd1_model)
    plain = train(small_config(photo_dataset, tmp_path / "p", train__max_steps=1), sd1_model)
    files = [LoraFile(p) for p in result.files] + [LoraFile(plain.path)]
    losses = validation_losses(files)
    by_step = dict(result.validation)
    # the file keeps 6 significant digits (metadata.py): equal to that precision, not to a rounding edge
    assert list(losses.values()) == [pytest.approx(by_step[4], rel=1e-5), pytest.approx(by_step[8], rel=1e-5)]
    best = min(losses, key=losses.get)
    assert best.display in validation_note(files) and "2 file(s)" in validation_note(files)
    assert validation_note([LoraFile(plain.path)]) == ""


def test_the_tab_and_the_api_carry_the_validation_settings(photo_dataset, tmp_path):
    from lib_training.config import tomllib
    from lib_training.webui.train import form

    values = form.default_values()
    values.update({"data.train_dir": str(photo_dataset), "validation.split": 0.25, "validation.every_steps": 10})
    config = form.config_from_values(values)
    assert (config.validation.split, config.validation.every_steps) == (0.25, 10)
    exported = tomllib.loads(form.export_toml(config))
    assert exported["validation"]["split"] == 0.25
    request = form.config_from_request({"validation": {"split": 0.2, "every_steps": 7}},
                                       tmp_path / "Lora", tmp_path / "runs")
    assert (request.config.validation.split, request.config.validation.every_steps) == (0.2, 7)
