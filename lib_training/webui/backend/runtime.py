"""The training service wired into the running WebUI (A1111 modules imported lazily).

- the run holds A1111's `queue_lock` (a Generate click waits until training ends);
- progress goes to `shared.state`, so A1111's own progress bar and Interrupt work;
- sample images are made with A1111's processing, on the loaded model with the LoRA
  being trained attached, pinned to the checkpoint the run started on;
- a finished run gets its user-metadata JSON and preview, and the Lora list is refreshed.
"""

from __future__ import annotations

import dataclasses
import os
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from ...config import LIMITS, TrainConfig
from ...data.preflight import PreflightReport
from ...fileio import atomic_write_bytes
from ...train import events as ev
from ...train.full import extracted_lora_path, is_full
from . import bridge
from .console_progress import ConsoleProgress
from .service import FINISHED, RunStatus, TrainingService

OPTION_DATASETS_DIR = "lora_studio_datasets_dir"
OPTION_RUNS_DIR = "lora_studio_runs_dir"
OPTION_SAMPLE_STEPS = "lora_studio_sample_steps"
JOB_NAME = "lora_studio_train"

_service: TrainingService | None = None
_service_guard = threading.Lock()
_console = ConsoleProgress()  # A1111's console bar: the run's real step total


def _opt(name: str, default=None):
    from modules import shared

    value = getattr(shared.opts, name, None) if shared.opts is not None else None
    return value if value not in (None, "") else default


def lora_dir() -> Path:
    from modules import paths, shared

    return Path(getattr(shared.cmd_opts, "lora_dir", None) or os.path.join(paths.models_path, "Lora"))


def checkpoint_dir() -> Path:
    """A1111's models/Stable-diffusion (or --ckpt-dir): where a full fine-tune's checkpoints go."""
    from modules import paths, shared

    return Path(getattr(shared.cmd_opts, "ckpt_dir", None) or os.path.join(paths.models_path, "Stable-diffusion"))


def runs_dir() -> Path:
    """Runs (resume state, log, config, samples) live outside the Lora folder: A1111's Lora page
    would show every run folder as a filter button."""
    from modules import paths_internal

    return Path(_opt(OPTION_RUNS_DIR) or os.path.join(paths_internal.data_path, "lora_studio", "runs"))


def datasets_dir() -> Path:
    from modules import paths_internal

    return Path(_opt(OPTION_DATASETS_DIR) or os.path.join(paths_internal.data_path, "lora_studio", "datasets"))


def get_service() -> TrainingService:
    global _service
    with _service_guard:
        if _service is None:
            _service = TrainingService(runner=_run, lock=_queued_job(), make_cancel=_make_cancel,
                                       on_event=_mirror_progress, on_finished=_finish)
        return _service


def run_from_ui(config: TrainConfig, resume: bool = False, checked: PreflightReport | None = None) -> RunStatus:
    """For the Start button: `wrap_gradio_gpu_call` already holds the queue and began the job."""
    return get_service().run(for_webui(config), resume=resume, checked=checked)


def start_from_api(config: TrainConfig, resume: bool = False, checked: PreflightReport | None = None) -> RunStatus:
    return get_service().start(for_webui(config), resume=resume, checked=checked)


def for_webui(config: TrainConfig) -> TrainConfig:
    """Where a WebUI run writes: the LoRA into the Lora folder, run state into runs_dir()."""
    if is_full(config):  # the checkpoint beside the others; an extracted LoRA into the Lora folder
        output = dataclasses.replace(config.output, output_dir=str(checkpoint_dir()), runs_dir=str(runs_dir()),
                                     extract_lora_dir=str(lora_dir()))
    else:
        output = dataclasses.replace(config.output, output_dir=str(lora_dir()), runs_dir=str(runs_dir()))
    train = config.train
    if not train.sample_prompts:  # a final sample is the card's preview
        train = dataclasses.replace(train, sample_prompts=[config.output.trigger_word or config.output.name])
    if not train.sample_every_steps:  # only the final one; within LIMITS, or every request would fail validation
        train = dataclasses.replace(train, sample_every_steps=LIMITS["train.sample_every_steps"])
    return dataclasses.replace(config, output=output, train=train)


class _queued_job:
    """The API path: wait for the queue like a generation, and show as a job in A1111."""

    def __enter__(self):
        from modules import call_queue, shared

        call_queue.queue_lock.acquire()
        shared.state.begin(job=JOB_NAME)
        return self

    def __exit__(self, *exc) -> None:
        from modules import call_queue, shared

        try:
            shared.state.end()
        finally:
            call_queue.queue_lock.release()


def _make_cancel() -> bridge.WebUICancel:
    from modules import shared

    return bridge.WebUICancel(pinned_checkpoint=shared.opts.sd_model_checkpoint)


def _run(config: TrainConfig, on_event: ev.EventSink, cancel: ev.CancelToken, resume: bool = False,
         checked: PreflightReport | None = None):
    def handle(event: ev.Event) -> None:
        if isinstance(event, ev.SampleRequest):
            _make_samples(event, config)
        on_event(event)

    return bridge.train_loaded_model(config, handle, cancel, resume=resume, checked=checked)


def _mirror_progress(event: ev.Event, status: RunStatus) -> None:
    """A1111's progress bar: job_no / job_count = step / total; textinfo says loss and ETA."""
    from modules import shared

    state = shared.state
    if isinstance(event, ev.Started):
        state.job_count, state.job_no, state.sampling_steps, state.sampling_step = event.total_steps, event.start_step, 0, 0
        state.textinfo = f"LoRA Studio: training {status.name}, {event.total_steps} steps"
        _console.started(status.name, event.total_steps, event.start_step)
    elif isinstance(event, ev.StepDone):
        state.job_count, state.job_no = event.total_steps, event.step
        _console.step(event.step, event.total_steps)
        # No ETA here: A1111's progress bar adds its own from job_no / job_count.
        state.textinfo = f"LoRA Studio: step {event.step}/{event.total_steps}, epoch {event.epoch}, loss {event.loss:.4f}"
    elif isinstance(event, ev.Message):
        state.textinfo = f"LoRA Studio: {event.text}"


@contextmanager
def _progress_kept() -> Iterator[None]:
    """process_images resets the job counters; put the training progress back afterwards."""
    from modules import shared

    state = shared.state
    saved = (state.job_count, state.job_no, state.textinfo, state.sampling_steps, state.sampling_step)
    try:
        with _console.samples_kept_off():
            yield
    finally:
        state.job_count, state.job_no, state.textinfo, state.sampling_steps, state.sampling_step = saved


def _make_samples(request: ev.SampleRequest, config: TrainConfig) -> None:
    """Generate the sample prompts with the loaded model + the attached LoRA, seeded."""
    from modules import processing, shared

    service = get_service()
    folder = Path(config.output.runs_dir or runs_dir()) / config.output.name / "samples"
    size = config.data.resolution
    checkpoint = shared.sd_model.sd_checkpoint_info.title
    for index, prompt in enumerate(request.prompts):
        forget_cached_conds(processing)  # conds cached by a clean generation would leave the text-encoder LoRA out
        p = processing.StableDiffusionProcessingTxt2Img(
            sd_model=shared.sd_model, prompt=prompt, negative_prompt="", seed=request.seed + index,
            steps=int(_opt(OPTION_SAMPLE_STEPS, 20)), cfg_scale=7.0, width=size, height=size,
            sampler_name="Euler a", do_not_save_samples=True, do_not_save_grid=True,
            override_settings={"sd_model_checkpoint": checkpoint})  # never swap the model mid-run
        try:
            with _progress_kept():
                processed = processing.process_images(p)
        except Exception as error:  # a failed sample (NaNs, a script's error) must not end the run
            service.note(f"Sample {index + 1} at step {request.step} failed: {error}")
            continue
        finally:
            p.close()
            forget_cached_conds(processing)  # ... and ours would leak the LoRA into the next plain txt2img
        if not processed.images:
            continue
        image = processed.images[0]
        path = folder / f"{request.step:06d}-{index}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, _png_bytes(image))
        service.add_sample(request.step, path)
        shared.state.assign_current_image(image)


def forget_cached_conds(processing) -> None:
    """Drop A1111's cached prompt conditionings, as `p.close()` does without "Persistent cond cache".

    A1111 keeps the last positive and negative conds across generations (the setting is on by
    default), keyed on prompt, steps, size and the prompt's `<lora:…>` tags — not on hooks. A sample
    made with the run's text-encoder LoRA attached would otherwise hand its conds (the empty
    negative prompt's, at least) to the next plain txt2img of the same size: a "base" image that is
    not the base model's. Emptied in place: a processing object holds the class's lists themselves.
    """
    for owner, names in ((processing.StableDiffusionProcessing, ("cached_c", "cached_uc")),
                         (processing.StableDiffusionProcessingTxt2Img, ("cached_hr_c", "cached_hr_uc"))):
        for name in names:
            getattr(owner, name)[:] = [None, None]


def _png_bytes(image) -> bytes:
    import io

    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _finish(status: RunStatus, config: TrainConfig) -> None:
    """Cards for every LoRA file the run wrote (a cancelled run's epoch files are usable too):
    `<name>.json` and, for the final file, the last sample as preview; then refresh the Lora list."""
    from . import outputs

    _console.close()
    files = status.files + ([status.result] if status.state == FINISHED and status.result else [])
    preview = status.samples[-1][1] if status.samples else None
    if is_full(config):  # checkpoints: cards too (A1111 shows them on its Checkpoints page), then its list
        outputs.publish_run_outputs(files, config, steps=status.step, preview_image=preview, refresh=False)
        outputs.refresh_checkpoint_list()
        lora = extracted_lora_path(config) if config.output.extract_lora_rank else None
        if status.state == FINISHED and lora is not None and lora.is_file():
            outputs.publish_run_outputs([lora], config, steps=status.step, preview_image=preview)
        return
    outputs.publish_run_outputs(files, config, steps=status.step, preview_image=preview)
