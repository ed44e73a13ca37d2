"""HTTP routes: A1111's --api-auth rules, 400 for bad settings, 409 while running, the tab's internal routes."""

from __future__ import annotations

import base64
import threading
from pathlib import Path

import pytest

SKIP_REASON = ("fastapi + httpx are installed in .venv-tests/a1111 only (A1111's pins); run there: "
               ".venv-tests/a1111/bin/python -m pytest tests/test_webui_api.py")
pytest.importorskip("fastapi", reason=SKIP_REASON)
pytest.importorskip("httpx", reason=SKIP_REASON)

from fastapi import FastAPI  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from conftest import small_config, write_photos  # noqa: E402
from lib_training.train import events as ev  # noqa: E402
from lib_training.webui import api  # noqa: E402
from lib_training.webui.backend.service import RunStatus, TrainingService  # noqa: E402


class BlockingRunner:
    """Starts, records one step, then waits until released (or cancelled)."""

    def __init__(self):
        self.running = threading.Event()
        self.release = threading.Event()

    def __call__(self, config, on_event, cancel, resume=False, checked=None):
        on_event(ev.Started(total_steps=3, steps_per_epoch=3, epochs=1, num_train_images=2, num_reg_images=0))
        on_event(ev.StepDone(step=1, total_steps=3, epoch=1, loss=0.5, lr=1e-4, elapsed_s=1, eta_s=2))
        self.running.set()
        self.release.wait(10)
        return type("Result", (), {"path": Path(config.output.output_dir) / "done.safetensors"})()


@pytest.fixture
def setup(tmp_path, photo_dataset):
    runner = BlockingRunner()
    service = TrainingService(runner=runner, lock=threading.Lock())
    lora_dir = tmp_path / "Lora"
    lora_dir.mkdir()
    backend = api.Backend(service=lambda: service, start=service.start, lora_dir=lambda: lora_dir,
                          runs_dir=lambda: tmp_path / "runs")
    yield backend, runner, service, photo_dataset, lora_dir
    runner.release.set()
    service.wait(10)


def client_for(backend, api_auth=None, public_api=True) -> TestClient:
    app = FastAPI()
    api.register(app, backend, api_auth=api_auth, public_api=public_api)
    return TestClient(app)


def basic(user: str, password: str) -> dict:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def start_body(dataset: Path, name: str = "api_lora") -> dict:
    return {"data": {"train_dir": str(dataset), "resolution": 64}, "output": {"name": name}}


def test_api_auth_is_parsed_as_a1111_does():
    assert api.parse_api_auth(None) == {} and api.parse_api_auth("") == {}
    assert api.parse_api_auth("alice:pw1,bob:p:w2") == {"alice": "pw1", "bob": "p:w2"}


@pytest.mark.parametrize("route, method", [("/lora-studio/v1/status", "get"), ("/lora-studio/v1/runs", "get"),
                                           ("/lora-studio/v1/cancel", "post"), ("/lora-studio/v1/start", "post")])
def test_with_api_auth_every_route_needs_the_right_credentials(setup, route, method):
    backend = setup[0]
    client = client_for(backend, api_auth="alice:secret,bob:hunter2")
    call = getattr(client, method)
    kwargs = {"json": {}} if method == "post" else {}
    missing = call(route, **kwargs)
    assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Basic"
    assert call(route, headers=basic("alice", "wrong"), **kwargs).status_code == 401
    assert call(route, headers=basic("mallory", "secret"), **kwargs).status_code == 401
    good = call(route, headers=basic("bob", "hunter2"), **kwargs)
    assert good.status_code != 401


def test_without_api_auth_no_credentials_are_needed(setup):
    client = client_for(setup[0], api_auth=None)
    assert client.get("/lora-studio/v1/status").json()["state"] == "idle"
    assert client.get("/lora-studio/v1/runs").json() == {"runs": []}


def test_v1_routes_exist_only_when_the_webui_serves_its_api(setup):
    client = client_for(setup[0], public_api=False)
    assert client.get("/lora-studio/v1/status").status_code == 404
    assert client.get("/internal/lora-studio/status").status_code == 200


def test_the_tabs_internal_status_needs_no_api_credentials(setup):
    client = client_for(setup[0], api_auth="alice:secret")
    assert client.get("/internal/lora-studio/status").status_code == 200


@pytest.mark.parametrize("change, message", [
    ({"network": {"rank": 0}}, "network.rank is 0"),
    ({"output": {"name": "../../etc/x"}}, "contains a path"),
    ({"data": {"train_dir": "/nonexistent/folder"}}, "does not exist"),
    ({"optimiser": {}}, "Unknown field"),
])
def test_bad_settings_answer_400_with_the_message(setup, change, message):
    backend, runner, service, dataset, _ = setup
    body = start_body(dataset)
    for key, value in change.items():
        body[key] = {**body.get(key, {}), **value} if isinstance(value, dict) else value
    response = client_for(backend).post("/lora-studio/v1/start", json=body)
    assert response.status_code == 400 and message in response.json()["detail"]
    assert service.status().state == "idle"


def test_an_existing_lora_is_not_overwritten_without_asking(setup):
    backend, runner, service, dataset, lora_dir = setup
    (lora_dir / "api_lora.safetensors").write_bytes(b"x")
    client = client_for(backend)
    refused = client.post("/lora-studio/v1/start", json=start_body(dataset))
    assert refused.status_code == 400 and "already exists" in refused.json()["detail"]
    body = start_body(dataset)
    body["output"]["overwrite"] = True
    assert client.post("/lora-studio/v1/start", json=body).status_code == 200


def test_a_second_start_while_running_answers_409(setup):
    backend, runner, service, dataset, _ = setup
    client = client_for(backend)
    first = client.post("/lora-studio/v1/start", json=start_body(dataset))
    assert first.status_code == 200 and first.json()["status"]["state"] == "running"
    assert runner.running.wait(10)
    second = client.post("/lora-studio/v1/start", json=start_body(dataset, "other"))
    assert second.status_code == 409 and "already running" in second.json()["detail"]
    runner.release.set()
    assert service.wait(10).state == "finished"


def test_a_start_that_races_another_answers_409_too(setup):
    backend, runner, service, dataset, _ = setup

    def racing_start(config, resume, checked):
        service.start(config, resume, checked)  # someone else got in first
        return service.start(config, resume, checked)

    raced = api.Backend(service=backend.service, start=racing_start, lora_dir=backend.lora_dir,
                        runs_dir=backend.runs_dir)
    response = client_for(raced).post("/lora-studio/v1/start", json=start_body(dataset))
    assert response.status_code == 409


def test_runs_lists_runs_on_disk(setup, photo_dataset, tmp_path):
    backend = setup[0]
    run_dir = tmp_path / "runs" / "cli_run"
    run_dir.mkdir(parents=True)
    (run_dir / "config.toml").write_text(small_config(photo_dataset, tmp_path).to_toml(), encoding="utf-8")
    (run_dir / "log.jsonl").write_text('{"step": 1, "loss": 0.4}\n', encoding="utf-8")
    runs = client_for(backend).get("/lora-studio/v1/runs").json()["runs"]
    assert [r["name"] for r in runs] == ["cli_run"]
    assert runs[0]["last_loss"] == 0.4 and runs[0]["settings"]["network"]["rank"] == 4


def test_samples_are_served_only_from_the_runs_list(setup, tmp_path):
    backend, runner, service, dataset, _ = setup
    image = write_photos(tmp_path / "samples", names=("coffee",)) / "coffee.png"
    service.add_sample(10, image)
    service.add_sample(20, tmp_path / "gone.png")
    client = client_for(backend, api_auth="alice:secret")
    ok = client.get("/internal/lora-studio/sample/0")
    assert ok.status_code == 200 and ok.content == image.read_bytes()
    assert client.get("/internal/lora-studio/sample/1").status_code == 404
    assert client.get("/internal/lora-studio/sample/2").status_code == 404
    assert client.get("/internal/lora-studio/sample/-1").status_code == 404


def test_status_is_json_safe_when_the_loss_is_not_finite():
    status = RunStatus(loss=float("nan"))
    assert status.to_dict()["loss"] is None
