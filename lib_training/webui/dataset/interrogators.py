"""A1111's own interrogators as `Captioner`s (data/captioner.py): BLIP and DeepDanbooru.

The models are the ones the WebUI uses for "Interrogate CLIP" / "Interrogate DeepBooru" in img2img
(`shared.interrogator`, `deepbooru.model`): nothing else is downloaded. A1111 fetches them itself
into models/BLIP and models/torch_deepdanbooru the first time they are used, as its own buttons do.

Each captioner is a context manager: the model is loaded (and moved to the GPU) once on enter,
used for every image, and sent back to RAM on exit, as A1111 does after an interrogation
(unless *Settings > Interrogate > keep models in VRAM*).

* BLIP: only BLIP's caption ("a cat sitting on a couch"), the part of A1111's interrogate() that
  kohya_ss's BLIP captioning gives too; the CLIP "flavour" ranking (artists, mediums, "trending
  on artstation") is left out: it is noise in training captions, and would load a second model.
  A1111's settings apply: beams, min/max length (Settings > Interrogate).
* DeepDanbooru: `tag_multi` with A1111's settings (score threshold, spaces, escaping of
  parentheses, sort, filtered tags).

A1111's modules are imported when a captioner is entered, so this file imports without A1111;
tests pass fakes for `shared`, `devices`, `lowvram` and `deepbooru`.
"""

from __future__ import annotations

from typing import Any, Optional

from PIL import Image

from ...errors import CheckpointError

BLIP = "BLIP (A1111's interrogator)"
DEEPDANBOORU = "DeepDanbooru tags (A1111)"
CAPTIONERS = (BLIP, DEEPDANBOORU)


class A1111BlipCaptioner:
    def __init__(self, shared: Any = None, devices: Any = None, lowvram: Any = None) -> None:
        self._shared, self._devices, self._lowvram = shared, devices, lowvram
        self._interrogator = None

    def __enter__(self) -> "A1111BlipCaptioner":
        if self._shared is None:
            from modules import devices, lowvram, shared

            self._shared, self._devices, self._lowvram = shared, devices, lowvram
        interrogator = self._shared.interrogator
        if interrogator is None:
            raise CheckpointError("A1111's interrogator is not initialised yet; wait until the WebUI has started.")
        self._lowvram.send_everything_to_cpu()  # as interrogate() does: room for BLIP under --medvram/--lowvram
        self._devices.torch_gc()
        try:
            if interrogator.blip_model is None:
                model = interrogator.load_blip_model()
                if not self._shared.cmd_opts.no_half and not interrogator.running_on_cpu:
                    model = model.half()
                interrogator.blip_model = model
            interrogator.blip_model = interrogator.blip_model.to(self._devices.device_interrogate)
        except Exception as exc:
            where = "models/BLIP/model_base_caption_capfilt_large.pth"
            raise CheckpointError(_load_message("BLIP", where, exc)) from exc
        # generate_caption casts the image to `dtype` (interrogate() sets it from CLIP, which is the same).
        interrogator.dtype = next(interrogator.blip_model.parameters()).dtype
        self._interrogator = interrogator
        return self

    def caption(self, image: Image.Image) -> str:
        if self._interrogator is None:
            raise RuntimeError("use the captioner in a with-block")
        return str(self._interrogator.generate_caption(image.convert("RGB"))).strip()

    def __exit__(self, *exc) -> None:
        if self._interrogator is not None:
            self._interrogator.send_blip_to_ram()
            self._devices.torch_gc()
            self._interrogator = None


class A1111DeepDanbooruCaptioner:
    def __init__(self, deepbooru: Any = None, devices: Any = None) -> None:
        self._deepbooru, self._devices = deepbooru, devices
        self._model = None

    def __enter__(self) -> "A1111DeepDanbooruCaptioner":
        if self._deepbooru is None:
            from modules import deepbooru, devices

            self._deepbooru, self._devices = deepbooru, devices
        model = self._deepbooru.model
        try:
            model.start()  # loads (once) and moves to the GPU
        except Exception as exc:
            raise CheckpointError(_load_message("DeepDanbooru", "models/torch_deepdanbooru/model-resnet_custom_v3.pt",
                                                exc)) from exc
        self._model = model
        return self

    def caption(self, image: Image.Image) -> str:
        if self._model is None:
            raise RuntimeError("use the captioner in a with-block")
        return str(self._model.tag_multi(image.convert("RGB"))).strip()

    def __exit__(self, *exc) -> None:
        if self._model is not None:
            self._model.stop()
            self._model = None


def a1111_captioner(name: str, **fakes) -> A1111BlipCaptioner | A1111DeepDanbooruCaptioner:
    """The captioner for a choice of `CAPTIONERS`."""
    if name == BLIP:
        return A1111BlipCaptioner(**fakes)
    if name == DEEPDANBOORU:
        return A1111DeepDanbooruCaptioner(**fakes)
    raise CheckpointError(f"Unknown captioner {name!r}: choose one of {', '.join(CAPTIONERS)}.")


def _load_message(what: str, where: str, exc: Optional[BaseException]) -> str:
    return (f"A1111's {what} model could not be loaded ({type(exc).__name__}: {exc}). The WebUI downloads it "
            f"into {where} the first time it is used; without internet access, copy that file there by hand "
            "(the same file img2img's Interrogate buttons use).")
