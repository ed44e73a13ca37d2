"""Hostile requests: A1111's auth on every route, names and paths that try to leave their folders,
wrong JSON types and absurd numbers (400 with the reason, nothing written), 20 concurrent starts.

A1111 1.10 (modules/api/api.py) guards its /sdapi/v1 routes with --api-auth (HTTP Basic, compare_digest)
and registers its own /internal/* routes (modules/progress.py, modules/ui.py) with no dependency at all:
under --gradio-auth they stay reachable without the login cookie (gradio checks its own routes only).
Ours follow that: /lora-studio/v1 needs --api-auth's credentials, /internal/lora-studio is read-only
and unauthenticated like /internal/progress, and serves only the current run's status and samples.
"""

from __future__ import annotations

import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import pytest

SKIP_REASON = ("fastapi + httpx are installed in .venv-tests/a1111 only (A1111's pins); run there: "
               ".venv-tests/a1111/bin/python -m pytest tests/test_webui_hostile.py")
pytest.importorskip("fastapi", reason=SKIP_REASON)
pytest.importorskip("httpx", reason=SKIP_REASON)

from fastapi import FastAPI  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

from conftest import write_photos  # noqa: E402
from lib_training.errors import SettingsError  # noqa: E402
from lib_training.train import events as ev  # noqa: E402
from lib_training.webui import api  # noqa: E402
from lib_training.webui.backend.service import TrainingService  # noqa: E402
from lib_training.webui.compare import form as compare_form  # noqa: E402
from lib_training.webui.dataset import actions as dataset_actions  # noqa: E402
from lib_training.webui.dataset.names import dataset_root  # noqa: E402

AUTH = "alice:secret"


class HeldRunner:
    """A run that holds until released, so concurrent starts meet a running one."""

    def __init__(self):
        self.calls = 0
        self.release = threading.Event()

    def __call__(self, config, on_event, cancel, resume=False, checked=None):
        self.calls += 1
        on_event(ev.Started(total_steps=3, steps_per_epoch=3, epochs=1, num_train_images=2, num_reg_images=0))
        self.release.wait(20)
        return SimpleNamespace(path=Path(config.output.output_dir) / "done.safetensors")


@pytest.fixture
def world(tmp_path):
    runner = HeldRunner()
    service = TrainingService(runner=runner, lock=threading.Lock())
    lora_dir, runs_dir = tmp_path / "Lora", tmp_path / "runs"
    lora_dir.mkdir()
    dataset = tmp_path / "dataset"
    write_photos(dataset / "2_sks cat", names=("chelsea", "coffee"), size=64)
    backend = api.Backend(service=lambda: service, start=service.start, lora_dir=lambda: lora_dir,
                          runs_dir=lambda: runs_dir, compare=lambda body: {"ok": True},
                          class_images=lambda body: {"ok": True}, loader_report=lambda name: {"name": name})
    app = FastAPI()
    api.register(app, backend, api_auth=AUTH, public_api=True)
    world = SimpleNamespace(app=app, client=TestClient(app, raise_server_exceptions=False), runner=runner,
                            service=service, lora_dir=lora_dir, runs_dir=runs_dir, dataset=dataset, tmp=tmp_path)
    yield world
    runner.release.set()
    service.wait(10)


def ours(app: FastAPI, prefix: str) -> list:
    return [r for r in app.routes if getattr(r, "path", "").startswith(prefix)]


def auth() -> tuple:
    return tuple(AUTH.split(":"))


def written(world) -> list:
    return sorted(str(p) for p in (world.lora_dir, world.runs_dir) if p.exists() for p in p.rglob("*"))


def start_body(world, **sections) -> dict:
    body = {"data": {"train_dir": str(world.dataset), "resolution": 64}, "output": {"name": "hostile"}}
    for section, values in sections.items():
        body[section] = {**body.get(section, {}), **values} if isinstance(values, dict) else values
    return body


def test_every_v1_route_follows_api_auth(world):
    routes = ours(world.app, api.V1_PREFIX)
    assert {r.path for r in routes} >= {"/lora-studio/v1/start", "/lora-studio/v1/status", "/lora-studio/v1/cancel",
                                        "/lora-studio/v1/runs", "/lora-studio/v1/compare",
                                        "/lora-studio/v1/class-images", "/lora-studio/v1/lora-check/{name}"}
    for route in routes:
        path = route.path.replace("{name}", "x")
        for method in route.methods:
            kwargs = {"content": b"{}"} if method == "POST" else {}
            for credentials in (None, ("alice", "wrong"), ("mallory", "secret")):
                response = world.client.request(method, path, auth=credentials, **kwargs)
                assert response.status_code == 401, (method, path, credentials)
            assert world.client.request(method, path, auth=auth(), **kwargs).status_code != 401
    assert written(world) == []


def test_internal_routes_are_read_only_like_a1111s_own(world):
    routes = ours(world.app, api.INTERNAL_PREFIX)
    assert routes and all(r.methods == {"GET"} for r in routes)  # nothing writable without credentials
    assert world.client.get("/internal/lora-studio/status").status_code == 200
    for path in ("/internal/lora-studio/status", "/internal/lora-studio/sample/0"):
        assert world.client.post(path, content=b"{}").status_code == 405


@pytest.mark.parametrize("path", ["/etc/passwd", "../../etc/passwd", "..%2F..%2Fetc%2Fpasswd", "%00"])
def test_samples_are_only_the_runs_own_files(world, path):
    world.service.add_sample(1, world.tmp / "not_a_sample.txt")
    response = world.client.get(f"/internal/lora-studio/sample/{path}")
    assert response.status_code in (404, 422) and b"root:" not in response.content
    assert world.client.get("/internal/lora-studio/sample/0").status_code == 404  # a .txt is never served


@pytest.mark.parametrize("body, reason", [
    (b"", "empty"),
    (b"not json", "not JSON"),
    (b"[]", "JSON object"),
    (b"null", "JSON object"),
    (b"\"text\"", "JSON object"),
    (b"{\"data\": \"x\"}", "must be an object"),
    (b"{\"network\": {\"rank\": \"abc\"}}", "must be a number"),
    (b"{\"network\": {\"rank\": 1.5}}", "network.rank"),
    (b"{\"network\": {\"rank\": true}}", "network.rank"),
])
def test_wrong_json_answers_400_with_the_reason_and_writes_nothing(world, body, reason):
    response = world.client.post("/lora-studio/v1/start", content=body, auth=auth(),
                                 headers={"content-type": "application/json"})
    assert response.status_code == 400 and reason in response.json()["detail"], response.text
    assert world.service.status().state == "idle" and written(world) == []


@pytest.mark.parametrize("sections, reason", [
    ({"train": {"max_steps": 10**12}}, "train.max_steps"),
    ({"data": {"resolution": 10**6}}, "data.resolution"),
    ({"network": {"rank": 10**6}}, "network.rank"),
    ({"train": {"batch_size": 10**9}}, "train.batch_size"),
    ({"train": {"seed": 10**30}}, "train.seed"),
    ({"network": {"alpha": 1e309}}, "finite"),
    ({"optimizer": {"unet_lr": -1}}, "negative"),
    ({"data": {"caption_extension": "../../x"}}, "caption_extension"),
    ({"output": {"name": "../../evil"}}, "contains a path"),
    ({"output": {"name": "/etc/evil"}}, "contains a path"),
    ({"output": {"name": "a\x00b"}}, "may only use"),
    ({"output": {"name": "CON"}}, "reserved"),
    ({"output": {"name": "LPT1.txt"}}, "reserved"),
    ({"output": {"name": "x" * 300}}, "at most"),
    ({"output": {"name": ""}}, "empty"),
    ({"data": {"train_dir": "/no/such/folder\x00x"}}, "does not exist"),
    ({"data": {"reg_dir": "\x00"}}, "does not exist"),
])
def test_absurd_values_and_escaping_names_answer_400(world, sections, reason):
    response = world.client.post("/lora-studio/v1/start", content=json.dumps(start_body(world, **sections)),
                                 auth=auth(), headers={"content-type": "application/json"})
    assert response.status_code == 400 and reason in response.json()["detail"], response.text
    assert world.service.status().state == "idle" and written(world) == []


def test_an_output_name_linked_out_of_the_lora_folder_is_refused(world):
    outside = world.tmp / "outside.safetensors"
    outside.write_bytes(b"precious")
    (world.lora_dir / "hostile.safetensors").symlink_to(outside)
    body = json.dumps(start_body(world, output={"overwrite": True}))
    response = world.client.post("/lora-studio/v1/start", content=body, auth=auth(),
                                 headers={"content-type": "application/json"})
    assert response.status_code == 400 and "outside" in response.json()["detail"]
    assert outside.read_bytes() == b"precious"


def test_twenty_concurrent_starts_give_exactly_one_run(world):
    def start(i: int) -> int:
        body = json.dumps(start_body(world, output={"name": f"race_{i}"}))
        return world.client.post("/lora-studio/v1/start", content=body, auth=auth(),
                                 headers={"content-type": "application/json"}).status_code

    with ThreadPoolExecutor(max_workers=20) as pool:
        codes = list(pool.map(start, range(20)))
    assert sorted(codes) == [200] + [409] * 19, codes
    world.runner.release.set()
    assert world.service.wait(10).state == "finished" and world.runner.calls == 1


@pytest.mark.parametrize("name", ["..", "../x", "/etc", "a/b", "a\\b", "a\x00b", "", ".hidden", "x" * 300])
def test_dataset_names_stay_in_the_datasets_folder(tmp_path, name):
    with pytest.raises(SettingsError):
        dataset_root(tmp_path / "datasets", name)


@pytest.mark.parametrize("name", ["../outside.safetensors", "/etc/passwd", "sub/../../outside.safetensors",
                                  "link.safetensors", "nul\x00.safetensors"])
def test_compare_files_stay_in_the_lora_folder(tmp_path, name):
    lora_dir = tmp_path / "Lora"
    lora_dir.mkdir()
    (tmp_path / "outside.safetensors").write_bytes(b"x")
    (lora_dir / "link.safetensors").symlink_to(tmp_path / "outside.safetensors")
    folders = SimpleNamespace(lora_dir=lora_dir, run_roots=[tmp_path / "runs"])
    with pytest.raises(SettingsError):
        compare_form.chosen_files([name], folders)


@pytest.mark.parametrize("name", ["../x", "/etc", "a\x00b"])
def test_compare_runs_are_found_by_name_only(tmp_path, name):
    folders = SimpleNamespace(lora_dir=tmp_path / "Lora", run_roots=[tmp_path / "runs"], runs_dir=tmp_path / "runs")
    with pytest.raises(SettingsError, match="No run named"):
        compare_form.find_run(name, folders)


def test_a_caption_linked_from_outside_is_neither_read_nor_followed_when_saved(tmp_path):
    root = tmp_path / "dataset"
    folder = write_photos(root / "img" / "1_x", names=("chelsea",), size=64)
    (tmp_path / "secret.txt").write_text("private words", encoding="utf-8")
    (folder / "chelsea.txt").symlink_to(tmp_path / "secret.txt")
    text, _ = dataset_actions.read_caption(root, str(folder / "chelsea.png"))
    assert text == ""
    assert dataset_actions.save_caption(root, str(folder / "chelsea.png"), "sks cat").ok
    assert (tmp_path / "secret.txt").read_text(encoding="utf-8") == "private words"
    assert not (folder / "chelsea.txt").is_symlink()


@pytest.mark.parametrize("image", ["../outside.png", "/etc/passwd", "img/1_x/../../../outside.png", "a\x00b.png"])
def test_a_caption_is_only_written_beside_an_image_of_the_dataset(tmp_path, image):
    root = tmp_path / "dataset"
    write_photos(root / "img" / "1_x", names=("chelsea",), size=64)
    before = sorted(p.name for p in tmp_path.iterdir())
    outcome = dataset_actions.save_caption(root, image if image.startswith("/") or "\x00" in image
                                           else str(root / image), "owned")
    assert outcome.ok is False
    assert sorted(p.name for p in tmp_path.iterdir()) == before and not (tmp_path / "outside.txt").exists()
    assert not os.path.exists("/etc/passwd.txt")
