"""Refusals that need no model, made before a checkpoint is loaded (which takes 15-20 s for SD1.5).

An output name that is taken, a dataset without usable images or a `--resume` without a saved
state would otherwise only be reported after the load.
"""

from __future__ import annotations

from ..config import TrainConfig
from ..data.preflight import PreflightReport
from .plan import make_plan
from .state import STATE_FILE
from ..errors import CheckpointError


def refuse_before_loading(config: TrainConfig, resume: bool, world_size: int = 1,
                          checked: PreflightReport | None = None) -> None:
    """Raise the error train() would raise for the settings, dataset, output name or resume state.
    `checked` is the dataset's pre-flight when the caller already ran it."""
    config.validate(need_checkpoint=True)
    plan = make_plan(config, resuming=resume, checked=checked, world_size=world_size)
    if resume and not (plan.run_dir / STATE_FILE).is_file():
        raise CheckpointError(f"No resumable state in {plan.run_dir} ({STATE_FILE} is missing): nothing to "
                              "resume. Start the run without --resume.")
