"""One training run at a time inside the WebUI: start, follow, cancel — for the tab and the API.

A1111-free so it can be tested with the engine faked at its boundary: the runner (normally
`bridge.train_loaded_model`), the lock (normally A1111's `queue_lock`) and the hooks that
mirror progress into A1111's progress bar are passed in.
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, ContextManager, Optional

from ...config import TrainConfig
from ...data.preflight import PreflightReport
from ...errors import LoraStudioError, TrainingCancelled
from ...train import events as ev
from ...train.plan import preflight_for

Runner = Callable[..., object]  # (config, on_event, cancel, resume, checked) -> TrainResult

IDLE, RUNNING, FINISHED, CANCELLED, FAILED = "idle", "running", "finished", "cancelled", "failed"


class AlreadyRunning(LoraStudioError):
    """A start while a run is going on (the API answers 409)."""


@dataclass
class RunStatus:
    """What the Train tab and `/lora-studio/v1/status` show about the current (or last) run."""

    run_id: str = ""
    name: str = ""
    state: str = IDLE
    step: int = 0
    total_steps: int = 0
    epoch: int = 0
    loss: Optional[float] = None
    lr: float = 0.0
    elapsed_s: float = 0.0
    eta_s: float = 0.0
    losses: list = field(default_factory=list)  # [[step, loss], ...]
    val_losses: list = field(default_factory=list)  # [[step, validation loss], ...] when the run computes one
    samples: list = field(default_factory=list)  # [[step, path], ...]
    files: list = field(default_factory=list)
    messages: list = field(default_factory=list)
    left_out: list = field(default_factory=list)  # the pre-flight's [{"path", "code", "reason"}, ...]
    result: str = ""
    error: str = ""
    started_at: float = 0.0
    first_step_s: Optional[float] = None  # seconds from the start request to the first finished step

    @property
    def active(self) -> bool:
        return self.state == RUNNING

    def to_dict(self) -> dict:
        data = asdict(self)
        if data["loss"] is not None and not math.isfinite(data["loss"]):
            data["loss"] = None
        return data


class TrainingService:
    def __init__(self, runner: Runner, lock: ContextManager, make_cancel: Callable[[], ev.CancelToken] = ev.CancelToken,
                 on_event: Callable[[ev.Event, RunStatus], None] | None = None,
                 on_finished: Callable[[RunStatus, TrainConfig], None] | None = None):
        self._runner = runner
        self._lock = lock
        self._make_cancel = make_cancel
        self._on_event = on_event
        self._on_finished = on_finished
        self._guard = threading.Lock()  # protects _status / _cancel / _thread
        self._status = RunStatus()
        self._cancel: ev.CancelToken | None = None
        self._thread: threading.Thread | None = None

    # ---- queries ------------------------------------------------------------------------
    def status(self) -> RunStatus:
        with self._guard:
            return RunStatus(**{k: (list(v) if isinstance(v, list) else v) for k, v in vars(self._status).items()})

    # ---- control ------------------------------------------------------------------------
    def start(self, config: TrainConfig, resume: bool = False, checked: PreflightReport | None = None) -> RunStatus:
        """Start in a background thread (API); it waits for the queue like any generation.

        `checked`: the pre-flight the caller already ran (and answered 400 for); run here when None."""
        config.validate()
        status = self._claim(config)
        self._thread = threading.Thread(target=self._run_locked, args=(config, resume, checked), daemon=True,
                                        name=f"lora-studio-{status.run_id}")
        self._thread.start()
        return status

    def run(self, config: TrainConfig, resume: bool = False, checked: PreflightReport | None = None) -> RunStatus:
        """Run in the calling thread, which already holds the queue (the tab's Start button)."""
        config.validate()
        self._claim(config)
        self._execute(config, resume, checked)
        return self.status()

    def cancel(self) -> bool:
        with self._guard:
            if self._cancel is None or not self._status.active:
                return False
            self._cancel.cancel()
            return True

    def wait(self, timeout: float | None = None) -> RunStatus:
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        return self.status()

    # ---- internals ----------------------------------------------------------------------
    def _claim(self, config: TrainConfig) -> RunStatus:
        with self._guard:
            if self._status.active:
                raise AlreadyRunning(f"A training run ({self._status.name}) is already running; wait for it to "
                                      "finish or cancel it first.")
            self._status = RunStatus(run_id=uuid.uuid4().hex[:12], name=config.output.name, state=RUNNING,
                                     started_at=time.time())
            self._cancel = self._make_cancel()
            return self._status

    def _run_locked(self, config: TrainConfig, resume: bool, checked: PreflightReport | None) -> None:
        with self._lock:
            self._execute(config, resume, checked)

    def _execute(self, config: TrainConfig, resume: bool, checked: PreflightReport | None) -> None:
        try:
            checked = checked if checked is not None else preflight_for(config)  # before the model is touched
            self._record_preflight(checked)
            result = self._runner(config, self._record, self._cancel, resume=resume, checked=checked)
            self._end(FINISHED, result=str(getattr(result, "path", "")))
        except TrainingCancelled as error:
            reason = getattr(self._cancel, "reason", "")
            self._end(CANCELLED, error=f"{error} ({reason})" if reason else str(error))
        except LoraStudioError as error:
            self._end(FAILED, error=str(error))
        except Exception as error:  # an unexpected bug: report it, never leave the run "running"
            self._end(FAILED, error=f"{type(error).__name__}: {error}")
            raise
        finally:
            if self._on_finished is not None:
                self._on_finished(self.status(), config)

    def _end(self, state: str, result: str = "", error: str = "") -> None:
        with self._guard:
            self._status.state, self._status.result, self._status.error = state, result, error

    def _record(self, event: ev.Event) -> None:
        with self._guard:
            s = self._status
            if isinstance(event, ev.Started):
                s.total_steps, s.step = event.total_steps, event.start_step
            elif isinstance(event, ev.StepDone):
                s.step, s.total_steps, s.epoch = event.step, event.total_steps, event.epoch
                s.loss, s.lr, s.elapsed_s, s.eta_s = event.loss, event.lr, event.elapsed_s, event.eta_s
                if math.isfinite(event.loss):
                    s.losses.append([event.step, event.loss])
                if s.first_step_s is None:
                    s.first_step_s = time.time() - s.started_at
            elif isinstance(event, ev.Validated):
                s.val_losses.append([event.step, event.loss])
            elif isinstance(event, ev.EpochSaved):
                s.files.append(str(event.path))
            elif isinstance(event, ev.Finished):
                s.files = [str(p) for p in event.files] or s.files
            elif isinstance(event, ev.Message):
                s.messages.append(event.text)
            snapshot = s
        if self._on_event is not None:
            self._on_event(event, snapshot)

    def _record_preflight(self, checked: PreflightReport) -> None:
        """The one listing of what the run leaves out, for the tab and `/status`."""
        with self._guard:
            self._status.left_out = checked.to_dict()["left_out"]
            self._status.messages.append(checked.summary())

    def note(self, text: str) -> None:
        """A message from outside the engine (e.g. a sample that could not be made)."""
        with self._guard:
            self._status.messages.append(text)

    def add_sample(self, step: int, path: Path) -> None:
        with self._guard:
            self._status.samples.append([step, str(path)])
