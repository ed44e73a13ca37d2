"""A1111's progress bar and Interrupt button for the Dataset tab's jobs (preprocess, captions, class images).

Inside `wrap_gradio_gpu_call` (which began the job), `StateProgress` writes (done, total) into
`shared.state.job_no / job_count` and a line into `textinfo`: `/internal/progress` turns them into
the bar that the tab's JavaScript shows. When the user pressed Interrupt (`shared.state.interrupt()`),
the next call raises `JobStopped`, which the action turns into "stopped after n of m".
`shared.state` is looked up lazily, so this file imports without A1111; tests pass a fake state.
"""

from __future__ import annotations

from typing import Any


class JobStopped(Exception):
    """The user pressed Interrupt/Stop; work finished so far is kept (or rolled back, for preprocess)."""


class StateProgress:
    def __init__(self, label: str, state: Any = None, raise_when_stopped: bool = True) -> None:
        self.label = label
        self._state = state
        self.raise_when_stopped = raise_when_stopped

    @property
    def state(self):
        if self._state is None:
            from modules import shared

            self._state = shared.state
        return self._state

    def stopped(self) -> bool:
        state = self.state
        return bool(getattr(state, "interrupted", False) or getattr(state, "stopping_generation", False))

    def __call__(self, done: int, total: int, text: str = "") -> None:
        state = self.state
        state.job_count, state.job_no = max(int(total), 1), int(done)
        state.textinfo = f"LoRA Studio: {self.label}: {text}" if text else f"LoRA Studio: {self.label} {done}/{total}"
        if self.raise_when_stopped and self.stopped():
            raise JobStopped(f"{self.label}: stopped after {done} of {total}")
