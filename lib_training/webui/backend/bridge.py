"""Train on the model A1111 has loaded: checks, the "sacred model" guard, and the run itself.

Imports A1111's `modules.*` lazily (this package is importable without a WebUI). The caller
holds A1111's `queue_lock` for the whole run (see `service.py` beside it), so no generation or model
switch can interleave with a training step.
"""

from __future__ import annotations

import dataclasses
import sys
from contextlib import contextmanager
from typing import Iterator

import torch

from ...config import TrainConfig
from ...data.preflight import PreflightReport
from ...errors import CheckpointError, SettingsError, TrainingError
from ...models.adapter import ModelInfo
from ...train import events as ev
from ...train.host_memory import return_freed_memory
from ...train.full import is_full
from ...train.loop import TrainResult, train
from .ldm_adapter import LdmAdapter, ldm_family, prediction_type
from .sgm_adapter import SgmAdapter, is_sgm, sgm_family


def check_supported(sd_model, cmd_opts, device: torch.device) -> None:
    """Refuse, before any step, the set-ups training cannot work under — each with what to do."""
    if sd_model is None:
        raise CheckpointError("No model is loaded in the WebUI. Pick a checkpoint at the top of the page first.")
    if getattr(cmd_opts, "lowvram", False):
        raise SettingsError("The WebUI runs with --lowvram, which moves the UNet to the GPU block by block; training "
                            "cannot follow that. Restart without --lowvram (--medvram works).")
    # Half (fp16/bf16) and fp8-stored weights train under autocast with an fp32 LoRA, on the GPU and on
    # the CPU alike; a PyTorch that cannot autocast in that dtype is refused by train/precision.py.


def check_full_supported(config: TrainConfig, cmd_opts) -> None:
    """A full fine-tune keeps its fp32 masters beside the weights: the UNet cannot move between
    devices block by block under it."""
    if is_full(config) and (getattr(cmd_opts, "medvram", False) or getattr(cmd_opts, "medvram_sdxl", False)):
        raise SettingsError("A full fine-tune (DreamBooth) needs the whole UNet on the GPU, and the WebUI runs with "
                            "--medvram. Restart without --medvram, or train a LoRA instead (it works with --medvram).")


def model_info(sd_model, clip_skip: int) -> ModelInfo:
    """What the saved LoRA's metadata records about the loaded checkpoint."""
    checkpoint = getattr(sd_model, "sd_checkpoint_info", None)
    name = getattr(checkpoint, "name", "") or ""
    legacy = getattr(checkpoint, "hash", "") or ""
    sha256 = getattr(checkpoint, "sha256", "") or ""
    if checkpoint is not None and not sha256:
        sha256 = checkpoint.calculate_shorthash() and checkpoint.sha256 or ""  # A1111 caches it in cache.json
    family = sgm_family(sd_model) if is_sgm(sd_model) else ldm_family(sd_model)
    return ModelInfo(family=family, prediction_type=prediction_type(sd_model), name=name,
                     legacy_hash=legacy, sha256=sha256, clip_skip=clip_skip)


def _a1111_lora_module():
    """A1111's built-in Lora extension (`extensions-builtin/Lora/networks.py`), if loaded."""
    networks = sys.modules.get("networks")
    return networks if hasattr(networks, "network_restore_weights_from_backup") else None


def unmerge_networks(sd_model) -> int:
    """Put back the clean weights of every layer a previous generation merged a LoRA into.

    A1111 merges networks into the weights in place (keeping a CPU backup) and leaves them
    merged after the generation. Emptying `loaded_networks` stops it re-merging on the next
    forward; the next txt2img that asks for a LoRA merges it again from the clean weights.
    """
    networks = _a1111_lora_module()
    if networks is None:
        return 0
    networks.loaded_networks.clear()
    restored = 0
    with torch.no_grad():  # A1111 leaves the UNet's parameters requiring grad
        for module in sd_model.modules():
            if getattr(module, "network_current_names", ()) != ():
                networks.network_restore_weights_from_backup(module)
                module.network_current_names = ()
                restored += 1
    return restored


@contextmanager
def sacred_model(sd_model) -> Iterator[None]:
    """Everything A1111 layers on its model, switched off for the run and back on after.

    Merged LoRAs are removed for good (the next generation re-merges what it asks for);
    hypernetworks and a custom `sd_unet` (e.g. TensorRT) are restored as they were.
    """
    from modules import shared, sd_unet

    unmerge_networks(sd_model)
    hypernetworks = list(shared.loaded_hypernetworks)
    custom_unet = sd_unet.current_unet is not None
    try:
        shared.loaded_hypernetworks.clear()
        if custom_unet:
            sd_unet.apply_unet("None")
        yield
    finally:
        shared.loaded_hypernetworks[:] = hypernetworks
        if custom_unet:
            sd_unet.apply_unet()


class WebUICancel(ev.CancelToken):
    """Cancelled by our Cancel button, by A1111's Interrupt, or by a checkpoint switch."""

    def __init__(self, pinned_checkpoint: str | None = None) -> None:
        super().__init__()
        self.pinned_checkpoint = pinned_checkpoint
        self.reason = ""

    @property
    def cancelled(self) -> bool:
        from modules import shared

        if shared.state.interrupted:
            self.reason = "interrupted from the WebUI"
        elif self.pinned_checkpoint is not None and shared.opts.sd_model_checkpoint != self.pinned_checkpoint:
            self.reason = (f"the checkpoint setting changed to {shared.opts.sd_model_checkpoint!r}; training "
                           "stopped so the model it trains on stays the one it started with")
        return super().cancelled or bool(self.reason)


def webui_adapter(config: TrainConfig) -> tuple[LdmAdapter, TrainConfig, list[str]]:
    """The loaded model as an engine backend, and the config adjusted to what it supports."""
    from modules import devices, shared

    sd_model = shared.sd_model
    check_supported(sd_model, shared.cmd_opts, devices.device)
    check_full_supported(config, shared.cmd_opts)
    clip_skip = int(getattr(shared.opts, "CLIP_stop_at_last_layers", 1) or 1)
    adapter_class = SgmAdapter if is_sgm(sd_model) else LdmAdapter
    adapter = adapter_class(sd_model, model_info(sd_model, clip_skip), device=devices.device)
    config, notes = fit_to_model(config, adapter)
    return adapter, config, notes


def fit_to_model(config: TrainConfig, adapter: LdmAdapter) -> tuple[TrainConfig, list[str]]:
    """The settings the loaded model supports, and a note for each change made."""
    notes: list[str] = []
    if config.network.train_text_encoder and not adapter.text_encoder_trainable:
        config = dataclasses.replace(config, network=dataclasses.replace(config.network, train_text_encoder=False))
        if adapter.info.family == "sdxl":
            notes.append("SDXL in the WebUI trains the UNet only (kohya's advice for SDXL; A1111's bigG text encoder "
                         "fuses q/k/v into one weight that a LoRA hook cannot reach). Text-encoder training is off.")
        else:
            notes.append("SD 2.x text-encoder LoRA is not supported yet: training the UNet only.")
    return config, notes


def train_loaded_model(config: TrainConfig, on_event: ev.EventSink | None = None,
                       cancel: ev.CancelToken | None = None, resume: bool = False,
                       checked: PreflightReport | None = None) -> TrainResult:
    """Train on `shared.sd_model` in this process. The caller holds `queue_lock` and ran the pre-flight."""
    from modules import devices

    emit = on_event or (lambda event: None)
    adapter, config, notes = webui_adapter(config)
    for note in notes:
        emit(ev.Message(note))
    try:
        with sacred_model(adapter.sd_model):
            return train(config, adapter, emit, cancel, resume=resume, checked=checked)
    except torch.cuda.OutOfMemoryError as error:
        raise TrainingError("Out of GPU memory. Lower the batch size or resolution, turn on gradient "
                            "checkpointing, or close other programs using the GPU; the loaded model is "
                            f"unchanged. ({error})") from error
    finally:
        devices.torch_gc()
        return_freed_memory()


def a1111_loader_report(name: str) -> dict:
    """How A1111's own Lora loader reads a file in the Lora folder: modules in the file vs matched.

    A1111 only logs unmatched keys at debug level; this makes a silent mismatch visible.
    """
    from ...lora.io import load_lora

    networks = _a1111_lora_module()
    if networks is None:
        raise CheckpointError("A1111's built-in Lora extension is not loaded; enable it in Extensions.")
    networks.list_available_networks()
    on_disk = networks.available_networks.get(name) or networks.available_network_aliases.get(name)
    if on_disk is None:
        raise CheckpointError(f"No LoRA named {name!r} in the Lora folder; check the name (without .safetensors).")
    tensors, _ = load_lora(on_disk.filename)
    in_file = {key.split(".", 1)[0] for key in tensors}
    loaded = networks.load_network(name, on_disk)
    return {"name": name, "file": on_disk.filename, "file_modules": len(in_file), "matched_modules": len(loaded.modules),
            "sd_version": on_disk.sd_version.name, "listed": _listed_in_lora_tab(name)}


def _listed_in_lora_tab(name: str) -> bool | None:
    """Whether txt2img's Lora tab shows the card with the loaded model: A1111 hides a LoRA whose
    metadata names another model version (an SD1 LoRA while SDXL is loaded). None without the page."""
    from modules import ui_extra_networks

    page = next((p for p in ui_extra_networks.extra_pages if p.name == "lora"), None)
    return None if page is None else page.create_item(name, enable_filter=True) is not None
