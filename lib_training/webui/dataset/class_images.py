"""The Dataset tab's class images: the engine's generator loop (`lib_training/data/class_images.py`)
driven by A1111's txt2img processing on the loaded model, pinned to the checkpoint loaded when the
run began (override_settings), with the user's sampler settings; its progress bar, Interrupt and
the HTTP route.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from PIL import Image

from ...data.class_images import (  # noqa: F401 - the tab, the API and the tests use these names from here
    DEFAULT_SAMPLER, DEFAULT_SCHEDULER, MANIFEST, MAX_BATCH, MAX_PER_IMAGE, ClassImageJob, ClassImageSettings,
    ClassImagesResult, ClassImagesStopped, Generate, GenerationRequest, Progress, class_folder,
    class_prompt_from_caption, generate_class_images, plan_class_images, settings_from_mapping)
from ...errors import CheckpointError, SettingsError
from .names import dataset_root


def a1111_generate(shared: Any = None, processing: Any = None) -> Generate:
    """A `Generate` using A1111's txt2img processing on the loaded model, pinned to the checkpoint loaded now."""
    if shared is None or processing is None:
        from modules import processing, shared  # noqa: F811

    info = getattr(shared.sd_model, "sd_checkpoint_info", None)
    if info is None:
        raise CheckpointError("No checkpoint is loaded: choose one at the top of the WebUI, then generate the "
                              "class images (they are made with the loaded model).")
    checkpoint = info.title

    def generate(request: GenerationRequest) -> list[Image.Image]:
        p = processing.StableDiffusionProcessingTxt2Img(
            sd_model=shared.sd_model, prompt=request.prompt, negative_prompt=request.negative_prompt,
            seed=request.seeds[0], batch_size=len(request.seeds), n_iter=1, steps=request.steps,
            cfg_scale=request.cfg_scale, width=request.width, height=request.height,
            sampler_name=request.sampler, scheduler=request.scheduler,
            do_not_save_samples=True, do_not_save_grid=True,
            override_settings={"sd_model_checkpoint": checkpoint})  # never switch the model mid-run
        processed = processing.process_images(p)
        state = shared.state
        if state.interrupted or getattr(state, "stopping_generation", False):
            raise ClassImagesStopped()
        if getattr(state, "skipped", False):  # Skip: this batch is unfinished; the next run makes it
            state.skipped = False
            return []
        return list(processed.images[:len(request.seeds)])

    return generate


def run_in_webui(root: Path, settings: ClassImageSettings, hold_queue: bool = False) -> ClassImagesResult:
    """In the WebUI: A1111's progress bar and Interrupt; `hold_queue` for callers outside the queue (API)."""
    from ..job_progress import StateProgress

    def run() -> ClassImagesResult:
        progress = StateProgress("class images", raise_when_stopped=False)  # the runner asks should_stop
        return generate_class_images(root, settings, a1111_generate(), on_progress=progress,
                                     should_stop=progress.stopped)

    if not hold_queue:
        return run()
    from modules import call_queue, shared

    with call_queue.queue_lock:
        shared.state.begin(job="lora_studio_class_images")
        try:
            return run()
        finally:
            shared.state.end()


def class_images_from_api(body: Mapping[str, Any]) -> dict:
    """POST /lora-studio/v1/class-images: {"dataset": name or path, settings...} -> the result as JSON."""
    values = dict(body)
    root = _api_dataset(str(values.pop("dataset", "") or ""))
    settings = settings_from_mapping(values)
    result = run_in_webui(root, settings, hold_queue=True)
    return {"folder": str(result.folder), "planned": result.planned, "existing": result.existing,
            "written": [str(p) for p in result.written], "stopped": result.stopped, "error": result.error,
            "note": result.note, "message": result.message()}


def _api_dataset(folder: str) -> Path:
    """A dataset of the datasets folder by name, or a folder path."""
    from ..backend.runtime import datasets_dir

    if not folder.strip():
        raise SettingsError('Give "dataset": the name of a dataset in the datasets folder, or a folder path.')
    path = Path(folder).expanduser()
    root = path if path.is_absolute() else dataset_root(datasets_dir(), folder)
    if not root.is_dir():
        raise SettingsError(f"The dataset folder '{root}' does not exist.")
    return root
