"""What a running training tells its UI, and how a UI stops it."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Union


@dataclass(frozen=True)
class Started:
    total_steps: int
    steps_per_epoch: int
    epochs: int
    num_train_images: int
    num_reg_images: int
    start_step: int = 0


@dataclass(frozen=True)
class StepDone:
    step: int  # optimizer steps done so far
    total_steps: int
    epoch: int
    loss: float  # mean loss since the previous StepDone (NaN-free: NaN stops training)
    lr: float
    elapsed_s: float
    eta_s: float


@dataclass(frozen=True)
class Validated:
    """The validation loss (held-out images, fixed noise and timesteps) after `step` steps (0: before training)."""

    step: int
    epoch: int
    loss: float


@dataclass(frozen=True)
class EpochSaved:
    epoch: int
    path: Path


@dataclass(frozen=True)
class SampleRequest:
    """Generate these prompts now (the LoRA is attached); seeded so steps are comparable."""

    step: int
    prompts: tuple
    seed: int


@dataclass(frozen=True)
class Finished:
    path: Path
    steps: int
    seconds: float
    final_loss: float
    files: tuple = field(default_factory=tuple)


@dataclass(frozen=True)
class Message:
    text: str


Event = Union[Started, StepDone, Validated, EpochSaved, SampleRequest, Finished, Message]
EventSink = Callable[[Event], None]


class CancelToken:
    """Set from any thread; the loop checks it before every step."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()
