"""Run state that tells the truth: a finished run is never offered for resume, the picker shows names,
and A1111's console progress bar counts the run's own steps (it showed 40/800 for a 20-step run)."""

from __future__ import annotations

import io
from types import SimpleNamespace

from conftest import small_config
from lib_training.train import events as ev
from lib_training.train.loop import train
from lib_training.train.state import STATE_FILE
from lib_training.webui.backend.console_progress import ConsoleProgress
from lib_training.webui.train import actions as train_actions
from lib_training.webui.train.runs import read_run, runs_table_html


def test_cancelled_resumed_and_finished_is_no_longer_resumable(sd1_model, photo_dataset, tmp_path):
    token = ev.CancelToken()
    config = small_config(photo_dataset, tmp_path / "out", train__max_steps=4, network__train_text_encoder=False)
    stop_at_2 = lambda e: token.cancel() if isinstance(e, ev.StepDone) and e.step == 2 else None  # noqa: E731
    try:
        train(config, sd1_model, on_event=stop_at_2, cancel=token)
    except Exception as stopped:
        assert "cancelled at step 2" in str(stopped)
    run_dir = tmp_path / "out" / "lora_studio_runs" / "test_lora"
    assert read_run(run_dir).resumable
    train(small_config(photo_dataset, tmp_path / "out", train__max_steps=4, network__train_text_encoder=False),
          sd1_model, resume=True)
    record = read_run(run_dir)
    assert not record.resumable and not (run_dir / STATE_FILE).exists()
    assert "resumable" not in runs_table_html([record])


def test_the_run_picker_shows_names_and_tells_same_names_apart(tmp_path):
    roots = [tmp_path / "runs", tmp_path / "Lora" / "lora_studio_runs"]
    for root in roots:
        (root / "cat_v1").mkdir(parents=True)
        (root / "cat_v1" / "log.jsonl").write_text('{"step": 1, "loss": 0.5}\n', encoding="utf-8")
    (roots[0] / "dog").mkdir()
    (roots[0] / "dog" / "log.jsonl").write_text('{"step": 1, "loss": 0.5}\n', encoding="utf-8")
    folders = SimpleNamespace(run_roots=roots)
    _, labels = train_actions.run_choices(folders)
    assert "dog" in labels and str(tmp_path) not in labels[labels.index("dog")]
    assert sorted(label for label in labels if label.startswith("cat_v1 (")) == [
        f"cat_v1 ({roots[1]})", f"cat_v1 ({roots[0]})"]


def fake_shared(out: io.StringIO) -> SimpleNamespace:
    class A1111TotalBar:  # A1111's shared_total_tqdm.TotalTQDM, as far as a sample uses it
        def __init__(self):
            self.total, self.n = None, 0

        def update(self):
            self.total = self.total or shared.state.job_count * shared.state.sampling_steps
            self.n += 1

        def clear(self):
            self.total, self.n = None, 0

    shared = SimpleNamespace(state=SimpleNamespace(job_count=0, sampling_steps=0),
                             opts=SimpleNamespace(multiple_tqdm=True),
                             cmd_opts=SimpleNamespace(disable_console_progressbars=False), progress_print_out=out)
    shared.total_tqdm = A1111TotalBar()
    return shared


def test_the_console_bar_counts_the_runs_own_steps_and_samples_stay_off_it():
    out = io.StringIO()
    shared = fake_shared(out)
    console = ConsoleProgress(shared)
    shared.state.job_count = 20  # the browser's bar: step / total
    console.started("cat_v1", total_steps=20, start_step=0)
    for step in range(1, 21):
        if step == 10:  # a sample mid-run: 20 sampler steps
            shared.state.sampling_steps = 20
            with console.samples_kept_off():
                for _ in range(20):
                    shared.total_tqdm.update()
            shared.state.sampling_steps = 0
        console.step(step, 20)
    console.close()
    text = out.getvalue()
    assert "20/20" in text and "/400" not in text and "/800" not in text
    assert shared.total_tqdm.n == 0  # A1111's own bar never counted the sample's steps


def test_the_console_bar_follows_a1111s_switch():
    out = io.StringIO()
    shared = fake_shared(out)
    shared.cmd_opts.disable_console_progressbars = True
    console = ConsoleProgress(shared)
    console.started("cat_v1", total_steps=5, start_step=0)
    console.step(5, 5)
    console.close()
    assert out.getvalue() == ""
