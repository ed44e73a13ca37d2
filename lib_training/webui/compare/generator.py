"""Compare in the running WebUI: A1111's processing as the grid's `Generator`, a CLIP `Embedder`,
and the context (checkpoint identity, folders, settings that change images). A1111 modules are
imported lazily, inside the functions, so the module imports without a WebUI.

- Each cell is a `StableDiffusionProcessingTxt2Img` with the cell's prompt (including
  `<lora:name:w>`, which A1111's built-in Lora extension applies), seed, sampler, steps, CFG and
  size; samples and grids are not saved by A1111 (the comparison's cache keeps them), and
  `override_settings` pins the checkpoint, so a checkpoint change queued meanwhile cannot mix models.
- It runs under A1111's queue (the UI through `wrap_gradio_gpu_call`, the API through
  `compare_job`): progress goes to `shared.state` (job_count = images to make), A1111's
  Interrupt stops after the image being made, which is thrown away (it would be half-sampled).
- Embedder: Settings → LoRA Studio → "CLIP model for the numbers" when set (a transformers CLIP
  folder or model id, or `open_clip:<name>:<tag or .safetensors>`); otherwise A1111's own
  interrogator CLIP (ViT-L/14, what "Interrogate CLIP" loads) when it is loaded or its file is
  in the CLIP folder. Nothing is downloaded for the numbers; without a model the grid is made and
  the tab says how to get the numbers.
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from PIL import Image

from ...compare.grid import CellRequest, format_weight
from ...errors import CheckpointError, LoraStudioError
from .actions import CompareContext, CompareOutcome, GenerationStopped, run_compare
from .form import CompareRequest
from ..train.actions import Folders

OPTION_CLIP_MODEL = "lora_studio_clip_model"
OPTION_COMPARE_DIR = "lora_studio_compare_dir"
JOB_NAME = "lora_studio_compare"
A1111_CLIP_FILE = "ViT-L-14.pt"  # what modules/interrogate.py's clip.load("ViT-L/14") reads

_active = threading.Event()
_embedder_lock = threading.Lock()
_loaded_embedder: dict = {}  # {"key": setting, "embedder": ...}


# ---- the generator ----------------------------------------------------------------------------
class WebUIStop:
    """The run's cancel token: A1111's Interrupt (or "stop generating")."""

    @property
    def cancelled(self) -> bool:
        from modules import shared

        return bool(shared.state.interrupted or shared.state.stopping_generation)


class A1111Generator:
    """A grid cell -> A1111's txt2img on the loaded model, pinned to `checkpoint` (its title); a cell of a
    full fine-tune's checkpoint is pinned to that checkpoint instead (A1111 loads it once for its cells in a
    row), and `back_to_users_checkpoint` loads the user's own again at the end."""

    def __init__(self, checkpoint: str) -> None:
        self.checkpoint = checkpoint
        self.pending = 0
        self.made = 0
        self.switched = False

    def expect(self, pending: int, total: int) -> None:
        """Called once before the run: A1111's progress bar counts the images still to make."""
        from modules import shared

        self.pending, self.made = pending, 0
        shared.state.job_count = max(pending, 1)
        shared.state.job_no = 0
        shared.state.textinfo = (f"LoRA Studio: {pending} of {total} images to generate"
                                 if pending else "LoRA Studio: every image is in the cache")

    def generate(self, cell: CellRequest) -> Image.Image:
        from modules import processing, shared

        state = shared.state
        if _stopped(state):
            raise GenerationStopped("Stopped.")
        what = f"{cell.lora.display} @ {format_weight(cell.weight)}" if cell.lora else "base model"
        state.textinfo = f"LoRA Studio: image {self.made + 1}/{max(self.pending, self.made + 1)}, {what}, seed {cell.seed}"
        p = processing.StableDiffusionProcessingTxt2Img(
            sd_model=shared.sd_model, prompt=cell.prompt, negative_prompt=cell.negative_prompt, seed=cell.seed,
            subseed=-1, subseed_strength=0, sampler_name=cell.sampler, steps=cell.steps, cfg_scale=cell.cfg_scale,
            width=cell.width, height=cell.height, batch_size=1, n_iter=1, do_not_save_samples=True,
            do_not_save_grid=True, override_settings={"sd_model_checkpoint": self._pin(cell)})
        try:
            processed = processing.process_images(p)
        finally:
            p.close()
        if _stopped(state) or state.skipped:
            state.skipped = False
            raise GenerationStopped("Stopped.")  # the image was cut short: never cache it
        if not processed.images:
            raise LoraStudioError(f"A1111 returned no image for {cell.prompt!r} (seed {cell.seed}).")
        self.made += 1
        return processed.images[0].convert("RGB")


    def _pin(self, cell: CellRequest) -> str:
        if cell.lora is None or not cell.lora.checkpoint:
            return self.checkpoint
        self.switched = True
        return checkpoint_title(Path(cell.lora.path))

    def back_to_users_checkpoint(self) -> None:
        """process_images puts the checkpoint *setting* back after each image, not the weights: load them."""
        if self.switched:
            from modules import sd_models

            sd_models.reload_model_weights()
            self.switched = False


def checkpoint_title(path: Path) -> str:
    """A1111's title for a checkpoint file (what `sd_model_checkpoint` takes), listing the folder again once."""
    from modules import sd_models

    for attempt in range(2):
        for info in sd_models.checkpoints_list.values():
            if Path(info.filename).resolve() == Path(path).resolve():
                return info.title
        if attempt == 0:
            sd_models.list_models()
    raise CheckpointError(f"{Path(path).name} is not in A1111's checkpoint list; put it in models/Stable-diffusion "
                          "and refresh the checkpoint list.")


def _stopped(state) -> bool:
    return bool(state.interrupted or state.stopping_generation)


def interrupt() -> str:
    """The tab's Stop button: interrupt only a comparison (never a training run)."""
    if not _active.is_set():
        return "No comparison is running."
    from modules import shared

    shared.state.interrupt()
    return "Stopping after the image being made; the images made so far are kept."


# ---- the context ------------------------------------------------------------------------------
def compare_dir() -> Path:
    from modules import paths_internal, shared

    value = getattr(shared.opts, OPTION_COMPARE_DIR, "") if shared.opts is not None else ""
    return Path(value or os.path.join(paths_internal.default_output_dir, "lora-studio-compare"))


def checkpoint_identity(info) -> str:
    """sha256 of the loaded checkpoint (computing it if A1111 has not yet); with --no-hashing, the file's
    name, size and modification time."""
    sha = getattr(info, "sha256", None)
    if not sha:
        try:
            info.calculate_shorthash()
        except Exception:  # hashing off or the file unreadable: fall back below
            pass
        sha = getattr(info, "sha256", None)
    if sha:
        return sha
    path = Path(getattr(info, "filename", "") or "")
    stat = path.stat() if path.is_file() else None
    return f"file:{path.name}:{stat.st_size if stat else 0}:{stat.st_mtime_ns if stat else 0}"


def settings_that_change_images() -> tuple[tuple[str, str], ...]:
    """A1111 settings (as infotext keys) that change a txt2img image, when not at their defaults.
    They are part of every cache key, so changing one makes the grid again."""
    from modules import sd_vae, shared

    opts = shared.opts
    extra = []
    clip_skip = int(getattr(opts, "CLIP_stop_at_last_layers", 1) or 1)
    if clip_skip > 1:
        extra.append(("Clip skip", str(clip_skip)))
    vae = sd_vae.get_loaded_vae_name()
    if vae:
        extra.append(("VAE", str(vae)))
        vae_hash = sd_vae.get_loaded_vae_hash()
        if vae_hash:
            extra.append(("VAE hash", str(vae_hash)))
    for key, label, default in (("eta_noise_seed_delta", "ENSD", 0), ("randn_source", "RNG", "GPU"),
                                ("token_merging_ratio", "Token merging ratio", 0), ("eta_ancestral", "Eta", 1.0),
                                ("emphasis", "Emphasis", "Original"), ("sd_vae_decode_method", "VAE Decoder", "Full")):
        value = getattr(opts, key, default)
        if value not in (None, "") and value != default:
            extra.append((label, str(value)))
    return tuple(extra)


def webui_context() -> CompareContext:
    from modules import shared

    from ..backend import runtime

    info = shared.sd_model.sd_checkpoint_info
    folder = compare_dir()
    return CompareContext(folders=Folders(runtime.lora_dir(), runtime.runs_dir(), runtime.checkpoint_dir()),
                          cache_dir=folder / "cache",
                          output_dir=folder, base_model_hash=checkpoint_identity(info),
                          base_model_name=getattr(info, "name_for_extra", "") or "",
                          extra=settings_that_change_images())


def sampler_names() -> list[str]:
    try:
        from modules import sd_samplers

        return list(sd_samplers.visible_sampler_names())
    except (ImportError, AttributeError):  # no WebUI (tests): the common ones
        return ["Euler a", "Euler", "DPM++ 2M", "DDIM"]


# ---- the embedder -----------------------------------------------------------------------------
class A1111ClipEmbedder:
    """A1111's interrogator CLIP (OpenAI `clip`, ViT-L/14) as an `Embedder`."""

    def __init__(self, interrogator) -> None:
        self.interrogator = interrogator

    def _model(self):
        from modules import devices

        model = self.interrogator.clip_model.to(devices.device_interrogate)
        self.interrogator.clip_model = model
        return model, devices.device_interrogate

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        import torch

        model, device = self._model()
        dtype = next(model.parameters()).dtype
        out = []
        for start in range(0, len(images), 16):
            batch = torch.stack([self.interrogator.clip_preprocess(i.convert("RGB")) for i in images[start:start + 16]])
            with torch.no_grad():
                out.append(model.encode_image(batch.to(device, dtype)).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 768), np.float32)

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        import clip
        import torch

        model, device = self._model()
        out = []
        for start in range(0, len(texts), 64):
            tokens = clip.tokenize(list(texts[start:start + 64]), truncate=True).to(device)
            with torch.no_grad():
                out.append(model.encode_text(tokens).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 768), np.float32)

    def release(self) -> None:
        self.interrogator.send_clip_to_ram()


def a1111_clip_file() -> Path:
    from modules import shared

    root = getattr(shared.cmd_opts, "clip_models_path", None) or os.path.expanduser("~/.cache/clip")
    return Path(root) / A1111_CLIP_FILE


def embedder_source() -> tuple[str, str]:
    """(kind, words for the tab): "setting", "a1111" or "none"."""
    from modules import shared

    setting = (getattr(shared.opts, OPTION_CLIP_MODEL, "") or "").strip() if shared.opts is not None else ""
    if setting:
        return "setting", f"CLIP model from Settings: {setting}"
    interrogator = getattr(shared, "interrogator", None)
    if interrogator is not None and getattr(interrogator, "clip_model", None) is not None:
        return "a1111", "A1111's CLIP ViT-L/14 (already loaded for Interrogate CLIP)"
    if interrogator is not None and a1111_clip_file().is_file():
        return "a1111", f"A1111's CLIP ViT-L/14 ({a1111_clip_file()})"
    return "none", NO_EMBEDDER


NO_EMBEDDER = ("No CLIP model for the numbers: set Settings → LoRA Studio → 'CLIP model for the numbers' (a "
               "transformers CLIP folder or model id, e.g. openai/clip-vit-base-patch32), or run img2img's "
               "'Interrogate CLIP' once so A1111 has its CLIP model. The grid works without it.")


def load_embedder():
    """The embedder `embedder_source` names, loaded (and kept) on first use; CheckpointError without one."""
    from modules import devices, shared

    kind, words = embedder_source()
    if kind == "none":
        raise CheckpointError(NO_EMBEDDER)
    if kind == "a1111":
        interrogator = shared.interrogator
        if interrogator.clip_model is None:  # the file is there (checked): A1111's own loader, no download
            interrogator.clip_model, interrogator.clip_preprocess = interrogator.load_clip_model()
            if not shared.cmd_opts.no_half and not interrogator.running_on_cpu:
                interrogator.clip_model = interrogator.clip_model.half()
        return A1111ClipEmbedder(interrogator)
    from ...compare import load_embedder as engine_load

    setting = (getattr(shared.opts, OPTION_CLIP_MODEL, "") or "").strip()
    with _embedder_lock:
        if _loaded_embedder.get("key") != setting:
            _loaded_embedder.clear()
            _loaded_embedder.update(key=setting, embedder=engine_load(setting, device=str(devices.device_interrogate)))
        embedder = _loaded_embedder["embedder"]
    _to_device(embedder, devices.device_interrogate)
    return embedder


def release_embedder(embedder) -> None:
    """After the numbers: CLIP back to RAM unless A1111 is told to keep interrogation models in memory."""
    from modules import devices, shared

    if embedder is None or getattr(shared.opts, "interrogate_keep_models_in_memory", False):
        return
    if isinstance(embedder, A1111ClipEmbedder):
        embedder.release()
    else:
        _to_device(embedder, devices.cpu)


def _to_device(embedder, device) -> None:
    import torch

    model = getattr(embedder, "model", None)
    if model is not None and hasattr(model, "to"):
        model.to(device)
        embedder.device = torch.device(device)


# ---- running a comparison --------------------------------------------------------------------
def compare_in_webui(request: CompareRequest) -> CompareOutcome:
    """One comparison on the loaded model. The caller holds A1111's queue and began the job
    (`wrap_gradio_gpu_call` for the tab, `compare_job` for the API)."""
    from modules import shared

    context = webui_context()
    generator = A1111Generator(shared.sd_model.sd_checkpoint_info.title)
    used: list = []

    def embedder():
        used.append(load_embedder())
        return used[-1]

    _active.set()
    try:
        outcome = run_compare(request, context, generator, embedder, cancel=WebUIStop(), on_plan=generator.expect)
    finally:
        _active.clear()
        generator.back_to_users_checkpoint()
        for e in used:
            release_embedder(e)
    return outcome


@contextmanager
def compare_job() -> Iterator[None]:
    """The API path: wait for the queue like a generation, and show as a job in A1111."""
    from modules import call_queue, shared

    with call_queue.queue_lock:
        shared.state.begin(job=JOB_NAME)
        try:
            yield
        finally:
            shared.state.end()
            shared.state.interrupted = shared.state.skipped = shared.state.stopping_generation = False


def compare_from_api(body: dict) -> dict:
    from ..backend import runtime
    from .actions import outcome_to_json
    from .form import with_defaults

    body = dict(body) if isinstance(body, dict) else body
    images = bool(body.pop("images", True)) if isinstance(body, dict) else True
    request = CompareRequest.from_json(body)
    request = with_defaults(request, Folders(runtime.lora_dir(), runtime.runs_dir(), runtime.checkpoint_dir()),
                            given=body.keys())
    with compare_job():
        outcome = compare_in_webui(request)
    return outcome_to_json(outcome, images=images)
