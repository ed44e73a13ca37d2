"""Automatic captions: the `Captioner` protocol, `caption_folder`, and a transformers BLIP captioner.

Any object with `caption(image) -> str` is a captioner (A1111's interrogators are wrapped by the
WebUI bridge). torch and transformers are imported only when a BLIP model is loaded.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol, runtime_checkable

from PIL import Image

from ..errors import CheckpointError, DatasetError
from .caption_tools import add_prefix, caption_files_by_image, read_caption_text, scan_folder, write_caption
from .images import load_rgb

CaptionProgress = Callable[[int, int, Path], None]  # (images done, images in all, image just done)


@runtime_checkable
class Captioner(Protocol):
    def caption(self, image: Image.Image) -> str:
        """A caption for an 8-bit RGB image."""
        ...


@dataclass
class CaptionRunResult:
    written: list[Path] = field(default_factory=list)  # caption files written
    kept: list[Path] = field(default_factory=list)  # images whose existing caption was kept
    failed: list[tuple[Path, str]] = field(default_factory=list)  # (image, why), e.g. a broken file


def caption_folder(
    folder: Path,
    captioner: Captioner,
    trigger: str = "",
    overwrite: bool = False,
    on_progress: CaptionProgress | None = None,
    class_word: str = "",
    include_reg: bool = False,
) -> CaptionRunResult:
    """Caption every training image of a dataset folder and write `<stem>.txt` (or its existing caption file).

    Images with a non-empty caption are kept unless `overwrite`. The trigger (and class) word is
    prefixed as in `add_prefix`. A broken image is listed in `failed` and the others go on.
    """
    spec = scan_folder(Path(folder))
    files = caption_files_by_image(spec)
    items = spec.train_items + (spec.reg_items if include_reg else [])
    result = CaptionRunResult()
    for done, item in enumerate(items, start=1):
        existing = files.get(item.path)
        if existing is not None and read_caption_text(existing).strip() and not overwrite:
            result.kept.append(item.path)
        else:
            # Class images never get the trigger word: it would leak into the class prior.
            _caption_one(item.path, existing or item.path.with_suffix(".txt"), captioner,
                         "" if item.is_reg else trigger, class_word, result)
        if on_progress is not None:
            on_progress(done, len(items), item.path)
    return result


def _caption_one(image: Path, target: Path, captioner: Captioner, trigger: str, class_word: str,
                 result: CaptionRunResult) -> None:
    try:
        text = captioner.caption(load_rgb(image))
    except DatasetError as exc:
        result.failed.append((image, str(exc)))
        return
    text = " ".join(str(text).split())
    result.written.append(write_caption(target, add_prefix(text, trigger, class_word)))


class BlipCaptioner:
    """BLIP image captioning (transformers `BlipForConditionalGeneration` + `BlipProcessor`).

    `model` is a Hugging Face id (e.g. "Salesforce/blip-image-captioning-base", downloaded once by
    transformers into its cache) or a local folder saved with `save_pretrained`. Only safetensors
    weights are loaded (never pickled `pytorch_model.bin`). The model is loaded on the first
    caption; `unload()` frees it.
    """

    def __init__(self, model: str | Path, device: str = "cpu", max_new_tokens: int = 40, num_beams: int = 3,
                 local_files_only: bool = False, dtype=None) -> None:
        self.model_name = str(model)
        self.device = device
        self.max_new_tokens = max_new_tokens
        self.num_beams = num_beams
        self.local_files_only = local_files_only
        self.dtype = dtype  # a torch dtype, e.g. torch.float16 on CUDA; None = float32
        self._model = None
        self._processor = None

    def caption(self, image: Image.Image) -> str:
        import torch

        model, processor = self._load()
        inputs = processor(images=image.convert("RGB"), return_tensors="pt")
        pixels = inputs["pixel_values"].to(self.device, dtype=next(model.parameters()).dtype)
        with torch.no_grad():
            output = model.generate(pixel_values=pixels, max_new_tokens=self.max_new_tokens, num_beams=self.num_beams)
        return processor.decode(output[0], skip_special_tokens=True).strip()

    def unload(self) -> None:
        self._model = self._processor = None

    def _load(self):
        if self._model is None:
            _require_safetensors(Path(self.model_name))
            try:
                from transformers import BlipForConditionalGeneration, BlipProcessor

                kwargs = {"local_files_only": self.local_files_only}
                processor = BlipProcessor.from_pretrained(self.model_name, **kwargs)
                if self.dtype is not None:
                    kwargs["torch_dtype"] = self.dtype
                model = BlipForConditionalGeneration.from_pretrained(self.model_name, use_safetensors=True, **kwargs)
            except (OSError, ValueError, ImportError) as exc:
                raise CheckpointError(
                    f"Cannot load the BLIP captioner '{self.model_name}': {exc}. Give a folder holding a BLIP "
                    "model saved with save_pretrained (config.json, weights, preprocessor_config.json, "
                    "tokenizer files) or a Hugging Face id such as 'Salesforce/blip-image-captioning-base'."
                ) from exc
            self._model, self._processor = model.to(self.device).eval(), processor
        return self._model, self._processor


def _require_safetensors(folder: Path) -> None:
    """A local model folder must hold safetensors weights: a pickled .bin can run code when loaded."""
    if not folder.is_dir():
        if folder.is_absolute() or str(folder).startswith((".", "~")):
            raise CheckpointError(f"The BLIP model folder '{folder}' does not exist. Check the path, or give a "
                                  "Hugging Face id such as 'Salesforce/blip-image-captioning-base'.")
        return  # a Hugging Face id: `use_safetensors=True` makes transformers refuse pickle-only repos
    if not any((folder / name).is_file() for name in ("model.safetensors", "model.safetensors.index.json")):
        raise CheckpointError(
            f"The BLIP folder '{folder}' has no model.safetensors. LoRA Studio loads only safetensors weights "
            "(a pytorch_model.bin is a pickle, which can run code). Save the model with "
            "save_pretrained(..., safe_serialization=True) or download its safetensors version."
        )
