"""Ctrl-C (SIGINT) or SIGTERM during training: stop at the next step and keep a resumable state.

The first signal sets the run's CancelToken, so the loop writes `resume.lsstate` before it stops
(`--resume` continues from there); a second one stops at once, as Ctrl-C usually does.
Under torchrun a Ctrl-C reaches each worker twice (from the terminal, then passed on by torchrun),
so there repeats are ignored: the ranks agree to stop at the next step, rank 0 saves the state,
and torchrun's own timeout (30 s) ends a worker that does not stop.
"""

from __future__ import annotations

import signal
import sys
from contextlib import contextmanager
from typing import Iterator

from .distributed import launched_by_torchrun
from .events import CancelToken

SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def cancel_on_signals(token: CancelToken, announce: bool = True) -> Iterator[None]:
    escalate = not launched_by_torchrun()

    def handler(signum, frame):
        if token.cancelled:
            if escalate:
                raise KeyboardInterrupt
            return
        token.cancel()
        if announce:
            again = " (press Ctrl-C again to quit at once)" if escalate else ""
            print(f"\nStopping after this step and saving a resumable state{again}.", file=sys.stderr, flush=True)

    previous = {sig: signal.signal(sig, handler) for sig in SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
