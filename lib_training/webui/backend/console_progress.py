"""A1111's console "Total progress" bar during a training run: the run's own steps.

A1111's `shared.total_tqdm` sizes its bar as `state.job_count * state.sampling_steps` and every sampler
step advances it. A training run sets `job_count` to its step total for the browser's progress bar, so
a sample image made mid-run (20 sampler steps) opened a bar of 20 x 20 = 400 (or 40/800) for a
20-step run. Here the run gets its own bar — steps done of the run's real total — and the samples'
sampler steps are kept off it. A1111's switches are honoured (Settings → multiple_tqdm,
--disable-console-progressbars). `shared` is looked up lazily; tests pass a fake.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator


class _Silent:
    """Stands in for A1111's total bar while a sample is made: sampler steps are not training steps."""

    def update(self) -> None:
        pass

    def updateTotal(self, new_total) -> None:  # noqa: N802 (A1111's name)
        pass

    def clear(self) -> None:
        pass

    def reset(self) -> None:
        pass


class ConsoleProgress:
    def __init__(self, shared: Any = None) -> None:
        self._shared = shared
        self.bar = None

    @property
    def shared(self):
        if self._shared is None:
            from modules import shared

            self._shared = shared
        return self._shared

    def _enabled(self) -> bool:
        opts, cmd_opts = self.shared.opts, self.shared.cmd_opts
        quiet = getattr(cmd_opts, "disable_console_progressbars", False)
        return bool(getattr(opts, "multiple_tqdm", True)) and not quiet

    def started(self, name: str, total_steps: int, start_step: int) -> None:
        """A new bar for the run: steps done of its real total (A1111's own bar is closed first)."""
        self.close()
        total_tqdm = getattr(self.shared, "total_tqdm", None)
        if total_tqdm is not None:
            total_tqdm.clear()
        if not self._enabled():
            return
        import tqdm

        self.bar = tqdm.tqdm(desc=f"LoRA Studio: {name}", total=total_steps, initial=start_step, unit="step",
                             position=1, file=getattr(self.shared, "progress_print_out", None))

    def step(self, step: int, total_steps: int) -> None:
        if self.bar is not None:
            self.bar.total = total_steps
            self.bar.n = step
            self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    @contextmanager
    def samples_kept_off(self) -> Iterator[None]:
        """While a sample image is made, A1111's sampler steps go nowhere instead of into a bogus total."""
        shared = self.shared
        saved = getattr(shared, "total_tqdm", None)
        shared.total_tqdm = _Silent()
        try:
            yield
        finally:
            shared.total_tqdm = saved
