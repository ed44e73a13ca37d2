"""HTTP routes: `/lora-studio/v1/` for scripts, `/internal/lora-studio/` for the tab's own JavaScript.

`/lora-studio/v1/` (registered, like A1111's `/sdapi/v1/`, when the WebUI runs with --api or
--nowebui) follows A1111's --api-auth exactly: HTTP Basic credentials checked against
"user:pass,user2:pass2" with `secrets.compare_digest`; no credentials needed when --api-auth is
unset.

    POST start    body: settings as in run.toml ({"network": {"rank": 16}}) and/or form keys
                  ({"network.rank": 16}), optional "preset", "method", "resume" -> run id + status
                  (400 with the message for bad settings, 409 while a run is going on)
    GET  status   the current or last run: state, step, loss curve, samples, files, error
    POST cancel   stop the run at the next step (it saves a resumable state)
    GET  runs     every run in the runs folder (tab, API or CLI), newest first
    POST class-images  DreamBooth class images for a dataset, made with the loaded model:
                  {"dataset": "my_cat" (a folder of the datasets folder, or a path), "class_word": "cat",
                  "per_image": 10, "prompt": "", "from_captions": false, "trigger": "sks", "sampler": "Euler a",
                  "steps": 20, "cfg_scale": 7, "width": 512, "height": 512, "seed": 1234} -> folder, planned,
                  existing, written, stopped, error (400 for bad settings, 409 while training)
    POST compare  a comparison grid on the loaded model, like the Compare tab's Generate:
                  {"run": "my_lora", "weights": [0, 1], "seeds": [1, 2], "width": 512, ...} or
                  {"files": ["a.safetensors", ...]}; empty prompts come from the run's trigger word and
                  class -> cells (row, column, prompt, seed, base64 PNG), metrics table, recommendation
                  (400 for bad settings, 409 while a training run holds the WebUI)

`/internal/lora-studio/status` and `/internal/lora-studio/sample/{i}` are read-only and unauthenticated,
like A1111's own `/internal/progress` that the tab's progress bar polls: the browser has no API
credentials, and an --api-auth challenge would pop up a login box over the WebUI.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from secrets import compare_digest
from typing import Callable, Optional

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse
from fastapi.security import HTTPBasic, HTTPBasicCredentials

from ..errors import LoraStudioError
from .train import form
from .train.runs import list_runs
from .backend.service import AlreadyRunning, RunStatus, TrainingService

V1_PREFIX = "/lora-studio/v1"
INTERNAL_PREFIX = "/internal/lora-studio"
SAMPLE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


@dataclass(frozen=True)
class Backend:
    """What the routes need from the WebUI (the runtime), passed in so tests can fake it."""

    service: Callable[[], TrainingService]
    start: Callable[..., RunStatus]  # (config, resume, checked): starts in the background, holding the queue
    lora_dir: Callable[[], Path]
    runs_dir: Callable[[], Path]
    # How A1111's own Lora loader reads a file: {"file_modules": n, "matched_modules": m, ...}
    loader_report: Optional[Callable[[str], dict]] = None
    # A comparison (compare/generator.py: compare_from_api): request body -> result JSON; waits for the queue
    compare: Optional[Callable[[dict], dict]] = None
    # Class images for a dataset (class_images.class_images_from_api): body -> result JSON; waits for the queue
    class_images: Optional[Callable[[dict], dict]] = None
    # models/Stable-diffusion: where a full fine-tune ("method": "full") writes its checkpoints
    checkpoint_dir: Optional[Callable[[], Path]] = None


def parse_api_auth(api_auth: Optional[str]) -> dict[str, str]:
    """A1111's --api-auth "user:pass,user2:pass2" as {user: pass}; {} = no authentication."""
    credentials: dict[str, str] = {}
    for entry in (api_auth or "").split(","):
        if entry.strip():
            user, _, password = entry.strip().partition(":")
            credentials[user] = password
    return credentials


def basic_auth(credentials: dict[str, str]) -> Callable:
    """A dependency that accepts only these users, as A1111's `Api.auth` does."""

    def check(given: HTTPBasicCredentials = Depends(HTTPBasic())) -> bool:
        expected = credentials.get(given.username)
        if expected is not None and compare_digest(given.password, expected):
            return True
        raise HTTPException(status_code=401, detail="Incorrect username or password",
                            headers={"WWW-Authenticate": "Basic"})

    return check


async def json_object(request: Request) -> dict:
    """The request body as a JSON object; anything else (empty, not JSON, a list) is a 400 with the reason."""
    raw = await request.body()
    if not raw.strip():
        raise HTTPException(status_code=400, detail="The request body is empty; send a JSON object of settings.")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as error:
        raise HTTPException(status_code=400, detail=f"The request body is not JSON ({error}).") from None
    if not isinstance(body, dict):
        raise HTTPException(status_code=400, detail=f"The request body must be a JSON object of settings, "
                                                    f"not {type(body).__name__}.")
    return body


def v1_router(backend: Backend, credentials: dict[str, str]) -> APIRouter:
    dependencies = [Depends(basic_auth(credentials))] if credentials else []
    router = APIRouter(prefix=V1_PREFIX, dependencies=dependencies, tags=["LoRA Studio"])

    @router.post("/start")
    def start(body: dict = Depends(json_object)):
        """{"preset": "person", "data": {"train_dir": "/data/10_sks woman"}, "output": {"name": "sks_v1"}}"""
        if backend.service().status().active:
            raise HTTPException(status_code=409, detail=_busy_message(backend.service().status()))
        try:
            checkpoints = backend.checkpoint_dir() if backend.checkpoint_dir else None
            request = form.config_from_request(body, backend.lora_dir(), backend.runs_dir(), checkpoints)
            checked = form.check_before_start(request.config, request.resume)  # the pre-flight: 400 with the list
            status = backend.start(request.config, request.resume, checked)
        except AlreadyRunning as error:
            raise HTTPException(status_code=409, detail=str(error)) from None
        except LoraStudioError as error:
            raise HTTPException(status_code=400, detail=str(error)) from None
        return {"run_id": status.run_id, "status": status.to_dict(), "ignored": list(request.ignored)}

    @router.get("/status")
    def status():
        return backend.service().status().to_dict()

    @router.post("/cancel")
    def cancel():
        cancelled = backend.service().cancel()
        return {"cancelled": cancelled, "status": backend.service().status().to_dict()}

    @router.get("/runs")
    def runs():
        return {"runs": [record.to_dict() for record in list_runs([backend.runs_dir()])]}

    @router.get("/lora-check/{name}")
    def lora_check(name: str):
        """Modules in a Lora-folder file vs. modules A1111's loader matched (it logs misses only at debug)."""
        if backend.loader_report is None:
            raise HTTPException(status_code=404, detail="A1111's Lora loader is not available here.")
        try:
            return backend.loader_report(name)
        except LoraStudioError as error:
            raise HTTPException(status_code=400, detail=str(error)) from None

    @router.post("/class-images")
    def class_images(body: dict = Depends(json_object)):
        """{"dataset": "my_cat", "class_word": "cat", "per_image": 10}"""
        if backend.class_images is None:
            raise HTTPException(status_code=404, detail="Class images are not available here.")
        if backend.service().status().active:
            raise HTTPException(status_code=409, detail=_busy_message(backend.service().status()))
        try:
            return backend.class_images(body)
        except LoraStudioError as error:
            raise HTTPException(status_code=400, detail=str(error)) from None

    @router.post("/compare")
    def compare(body: dict = Depends(json_object)):
        """{"run": "sks_v1", "weights": [0, 0.5, 1], "seeds": [1, 2]}"""
        if backend.compare is None:
            raise HTTPException(status_code=404, detail="Comparisons are not available here.")
        if backend.service().status().active:
            raise HTTPException(status_code=409, detail=_busy_message(backend.service().status()))
        try:
            return backend.compare(body)
        except LoraStudioError as error:
            raise HTTPException(status_code=400, detail=str(error)) from None

    return router


def internal_router(backend: Backend) -> APIRouter:
    router = APIRouter(prefix=INTERNAL_PREFIX)

    @router.get("/status")
    def status():
        return backend.service().status().to_dict()

    @router.get("/sample/{index}")
    def sample(index: int):
        samples = backend.service().status().samples
        if not 0 <= index < len(samples):
            raise HTTPException(status_code=404, detail=f"No sample {index}; the run has {len(samples)}.")
        path = Path(samples[index][1])
        if path.suffix.lower() not in SAMPLE_SUFFIXES or not path.is_file():
            raise HTTPException(status_code=404, detail=f"Sample {index} is no longer on disk.")
        return FileResponse(str(path))

    return router


def _busy_message(status: RunStatus) -> str:
    return (f"A training run ({status.name}, step {status.step}/{status.total_steps}) is already running; wait for "
            "it to finish or cancel it first (POST /lora-studio/v1/cancel).")


def register(app: FastAPI, backend: Backend, api_auth: Optional[str], public_api: bool) -> None:
    """Add the internal routes, and the v1 routes when the WebUI serves its API."""
    app.include_router(internal_router(backend))
    if public_api:
        app.include_router(v1_router(backend, parse_api_auth(api_auth)))


def on_app_started(demo, app: FastAPI) -> None:
    """script_callbacks.on_app_started: wire the routes to the running WebUI."""
    from modules import shared

    from .backend import runtime

    from .backend.bridge import a1111_loader_report
    from .dataset.class_images import class_images_from_api
    from .compare.generator import compare_from_api

    backend = Backend(service=runtime.get_service, start=runtime.start_from_api, lora_dir=runtime.lora_dir,
                      runs_dir=runtime.runs_dir, loader_report=a1111_loader_report, compare=compare_from_api,
                      class_images=class_images_from_api, checkpoint_dir=runtime.checkpoint_dir)
    opts = shared.cmd_opts
    register(app, backend, getattr(opts, "api_auth", None),
             public_api=bool(getattr(opts, "api", False) or getattr(opts, "nowebui", False)))
