"""TrainingService with the engine faked at its boundary: a runner that emits the engine's events.

The last test drives the same service through the HTTP routes (start -> status -> cancel).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import small_config
from lib_training.errors import TrainingCancelled, TrainingError
from lib_training.train import events as ev
from lib_training.webui.backend.service import CANCELLED, FAILED, FINISHED, IDLE, RUNNING, AlreadyRunning, TrainingService

TIMEOUT = 10


@dataclass
class FakeResult:
    path: Path


class FakeRunner:
    """Emits Started, then one StepDone per step; waits at `pause_at` until released; obeys cancel."""

    def __init__(self, steps: int = 4, pause_at: int | None = None, fail_with: Exception | None = None):
        self.steps, self.pause_at, self.fail_with = steps, pause_at, fail_with
        self.reached_pause = threading.Event()
        self.release = threading.Event()
        self.calls = []

    def __call__(self, config, on_event, cancel, resume=False, checked=None):
        self.calls.append((config, resume))
        out = Path(config.output.output_dir)
        on_event(ev.Started(total_steps=self.steps, steps_per_epoch=2, epochs=2, num_train_images=2,
                            num_reg_images=0))
        on_event(ev.Message("training the UNet only"))
        for step in range(1, self.steps + 1):
            if self.pause_at == step:
                self.reached_pause.set()
                self.release.wait(TIMEOUT)
            if cancel.cancelled:
                raise TrainingCancelled(f"Cancelled at step {step - 1}; resumable state saved.")
            if self.fail_with is not None and step == 2:
                raise self.fail_with
            on_event(ev.StepDone(step=step, total_steps=self.steps, epoch=(step + 1) // 2, loss=1.0 / step,
                                 lr=1e-4, elapsed_s=step * 0.5, eta_s=(self.steps - step) * 0.5))
            if step % 2 == 0:
                on_event(ev.EpochSaved(step // 2, out / f"x-{step // 2:06d}.safetensors"))
        final = out / "test_lora.safetensors"
        on_event(ev.Finished(final, self.steps, 2.0, 0.25, files=(out / "x-000001.safetensors",
                                                                     out / "x-000002.safetensors", final)))
        return FakeResult(final)


@pytest.fixture
def config(photo_dataset, tmp_path):
    return small_config(photo_dataset, tmp_path / "out")


def make_service(runner, finished=None, events=None):
    return TrainingService(runner=runner, lock=threading.Lock(),
                           on_event=(lambda e, s: events.append(type(e).__name__)) if events is not None else None,
                           on_finished=(lambda s, c: finished.append((s.state, c.output.name)))
                           if finished is not None else None)


def test_a_finished_run_reports_every_field(config):
    finished, events = [], []
    service = make_service(FakeRunner(steps=4), finished, events)
    assert service.status().state == IDLE
    status = service.run(config)
    assert status.state == FINISHED and status.name == "test_lora" and len(status.run_id) == 12
    assert (status.step, status.total_steps, status.epoch) == (4, 4, 2)
    assert status.loss == pytest.approx(0.25) and status.eta_s == 0
    assert [s for s, _ in status.losses] == [1, 2, 3, 4]
    assert status.result.endswith("test_lora.safetensors") and len(status.files) == 3
    assert status.messages == ["Pre-flight: training on 2 image(s); nothing left out.", "training the UNet only"]
    assert status.error == "" and status.left_out == []
    assert status.first_step_s is not None and status.first_step_s >= 0
    assert finished == [(FINISHED, "test_lora")]
    assert events[0] == "Started" and events[-1] == "Finished"
    assert status.to_dict()["state"] == FINISHED


def test_status_is_a_snapshot_not_the_live_object(config):
    service = make_service(FakeRunner(steps=2))
    service.run(config)
    snapshot = service.status()
    snapshot.losses.append([99, 9.9])
    assert [s for s, _ in service.status().losses] == [1, 2]


def test_cancel_stops_a_running_run_and_says_how_to_resume(config):
    runner = FakeRunner(steps=6, pause_at=3)
    finished = []
    service = make_service(runner, finished)
    assert service.cancel() is False  # nothing running
    status = service.start(config)
    assert status.state == RUNNING
    assert runner.reached_pause.wait(TIMEOUT)
    assert service.status().step == 2 and service.status().active
    assert service.cancel() is True
    runner.release.set()
    final = service.wait(TIMEOUT)
    assert final.state == CANCELLED and "resumable" in final.error and final.step == 2
    assert finished == [(CANCELLED, "test_lora")]


def test_a_second_start_is_refused_while_one_runs(config):
    runner = FakeRunner(steps=3, pause_at=1)
    service = make_service(runner)
    first = service.start(config)
    assert runner.reached_pause.wait(TIMEOUT)
    with pytest.raises(AlreadyRunning, match="already running"):
        service.start(config)
    with pytest.raises(AlreadyRunning):
        service.run(config)
    runner.release.set()
    assert service.wait(TIMEOUT).state == FINISHED
    assert service.status().run_id == first.run_id
    second = service.run(config, resume=True)  # allowed again once the first ended
    assert second.state == FINISHED and second.run_id != first.run_id
    assert runner.calls[-1][1] is True


def test_an_engine_error_fails_the_run_with_its_message(config):
    finished = []
    service = make_service(FakeRunner(fail_with=TrainingError("Loss became NaN at step 2; kept epoch 1.")), finished)
    status = service.run(config)
    assert status.state == FAILED and status.error == "Loss became NaN at step 2; kept epoch 1."
    assert status.step == 1 and not status.active
    assert finished == [(FAILED, "test_lora")]


def test_a_bug_is_reported_and_never_leaves_the_run_running(config):
    service = make_service(FakeRunner(fail_with=KeyError("oops")))
    with pytest.raises(KeyError):
        service.run(config)
    status = service.status()
    assert status.state == FAILED and "KeyError" in status.error


def test_bad_settings_are_refused_before_a_run_is_claimed(config):
    runner = FakeRunner()
    service = make_service(runner)
    config.network.rank = 0
    with pytest.raises(Exception, match="network.rank"):
        service.start(config)
    assert service.status().state == IDLE and not runner.calls


def test_the_api_flow_start_status_cancel(config, tmp_path):
    reason = ("fastapi + httpx are installed in .venv-tests/a1111 only (A1111's pins); run there: "
              ".venv-tests/a1111/bin/python -m pytest tests/test_webui_service.py")
    pytest.importorskip("fastapi", reason=reason)
    pytest.importorskip("httpx", reason=reason)
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from lib_training.webui import api

    runner = FakeRunner(steps=5, pause_at=3)
    service = make_service(runner)
    lora_dir = tmp_path / "Lora"
    lora_dir.mkdir()
    backend = api.Backend(service=lambda: service, start=service.start, lora_dir=lambda: lora_dir,
                          runs_dir=lambda: tmp_path / "runs")
    app = FastAPI()
    api.register(app, backend, api_auth=None, public_api=True)
    client = TestClient(app)

    body = {"data": {"train_dir": config.data.train_dir, "resolution": 64, "bucketing": False},
            "output": {"name": "api_lora", "trigger_word": "sks"}, "network.rank": 4, "network.alpha": 2}
    started = client.post("/lora-studio/v1/start", json=body)
    assert started.status_code == 200, started.text
    run_id = started.json()["run_id"]
    assert started.json()["status"]["state"] == RUNNING
    assert runner.reached_pause.wait(TIMEOUT)
    status = client.get("/lora-studio/v1/status").json()
    assert status["run_id"] == run_id and status["step"] == 2 and status["total_steps"] == 5
    assert client.post("/lora-studio/v1/start", json=body).status_code == 409
    cancelled = client.post("/lora-studio/v1/cancel").json()
    assert cancelled["cancelled"] is True
    runner.release.set()
    service.wait(TIMEOUT)
    deadline = time.time() + TIMEOUT
    while client.get("/lora-studio/v1/status").json()["state"] == RUNNING and time.time() < deadline:
        time.sleep(0.05)
    final = client.get("/lora-studio/v1/status").json()
    assert final["state"] == CANCELLED and final["name"] == "api_lora"
    used = runner.calls[0][0]
    assert used.output.output_dir == str(lora_dir) and used.network.rank == 4
    assert client.post("/lora-studio/v1/cancel").json()["cancelled"] is False
