"""Ctrl-C (SIGINT) or SIGTERM during training: stop at the next step and keep a resumable state.

The first signal sets the run's CancelToken, so the loop writes `resume.lsstate` before it stops
(`--resume` continues from there); a second one stops at once, as Ctrl-C usually does. torchrun
passes SIGTERM to its workers when it is interrupted, so every rank stops at the same step.
"""

from __future__ import annotations

import signal
import sys
from contextlib import contextmanager
from typing import Iterator

from .events import CancelToken

SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def cancel_on_signals(token: CancelToken, announce: bool = True) -> Iterator[None]:
    def handler(signum, frame):
        if token.cancelled:
            raise KeyboardInterrupt
        token.cancel()
        if announce:
            print("\nStopping after this step and saving a resumable state (press Ctrl-C again to quit at once).",
                  file=sys.stderr, flush=True)

    previous = {sig: signal.signal(sig, handler) for sig in SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
