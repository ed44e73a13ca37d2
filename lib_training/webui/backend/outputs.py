"""After a run: what the WebUI's Lora page shows beside each file, and a refresh of its list.

* `<name>.json` — A1111's user metadata (the same keys its "Edit metadata" dialog writes:
  "description", "sd version", "activation text", "preferred weight", "negative text", "notes").
  Keys the user already set in an existing json are kept; ours are updated.
* `<name>.preview.png` — the card's picture, from the last sample image.
Both are written atomically, so the Lora page never reads a half-written file.
"""

from __future__ import annotations

import io
import json
import struct
import sys
from pathlib import Path
from typing import Any, Optional, Union

from ...config import TrainConfig
from ...fileio import atomic_write_bytes, atomic_write_text

DEFAULT_PREFERRED_WEIGHT = 0.8
SD_VERSIONS = {"sd_v1": "SD1", "sd_v2": "SD2", "sdxl": "SDXL"}  # kohya ss_base_model_version -> A1111 SdVersion
MAX_HEADER_BYTES = 100 * 1024 * 1024


def user_metadata_path(lora_file: Path) -> Path:
    return Path(lora_file).with_suffix(".json")


def preview_path(lora_file: Path) -> Path:
    return Path(lora_file).with_suffix(".preview.png")


def describe_settings(config: TrainConfig, steps: Optional[int] = None) -> str:
    """One paragraph for the card's description: how the LoRA was trained."""
    n, o, t, d = config.network, config.optimizer, config.train, config.data
    te = f"text encoder lr {o.text_encoder_lr:g}" if n.train_text_encoder and o.text_encoder_lr > 0 else \
        "text encoder not trained"
    conv = f", conv rank {n.conv_rank}/alpha {n.conv_alpha:g}" if n.conv_rank else ""
    method = "DreamBooth-LoRA with class images" if d.reg_dir else "LoRA"
    length = f"{steps} steps" if steps else (f"{t.max_steps} steps" if t.max_steps else f"{t.epochs} epochs")
    if n.method == "full":
        classes = "with class images" if d.reg_dir else "without class images"
        return (f"DreamBooth full fine-tune ({classes}) with LoRA Studio: {o.optimizer} UNet lr {o.unet_lr:g}, {te}, "
                f"{o.scheduler} schedule, {length}, batch {t.batch_size}, {d.resolution} px, seed {t.seed}.")
    return (f"{method} trained with LoRA Studio: rank {n.rank}/alpha {n.alpha:g}{conv}, {o.optimizer} UNet lr "
            f"{o.unet_lr:g}, {te}, {o.scheduler} schedule, {length}, batch {t.batch_size}, {d.resolution} px, "
            f"seed {t.seed}.")


def sd_version_of(lora_file: Path) -> str:
    """"SD1"/"SD2"/"SDXL" from the file's ss_base_model_version; "" when unknown or unreadable."""
    metadata = read_safetensors_metadata(lora_file)
    version = metadata.get("ss_base_model_version", "")
    for prefix, name in SD_VERSIONS.items():
        if version.startswith(prefix):
            return name
    return ""


def read_safetensors_metadata(path: Path) -> dict:
    """The `__metadata__` of a .safetensors header, without loading any tensor ({} if unreadable)."""
    try:
        with open(path, "rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > MAX_HEADER_BYTES:
                return {}
            header = json.loads(f.read(length).decode("utf-8"))
    except (OSError, struct.error, ValueError):
        return {}
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    return metadata if isinstance(metadata, dict) else {}


def user_metadata(config: TrainConfig, lora_file: Path, preferred_weight: float = DEFAULT_PREFERRED_WEIGHT,
                  steps: Optional[int] = None) -> dict:
    """Our keys of A1111's user metadata for one LoRA file of a run."""
    description = describe_settings(config, steps)
    epoch = epoch_of(lora_file, config.output.name)
    if epoch:
        description += f" This file: epoch {epoch}."
    metadata = {
        "description": description,
        "activation text": config.output.trigger_word.strip(),
        "preferred weight": float(preferred_weight),
    }
    sd_version = sd_version_of(lora_file)
    if sd_version:
        metadata["sd version"] = sd_version
    return metadata


def write_user_metadata(lora_file: Path, config: TrainConfig, preferred_weight: float = DEFAULT_PREFERRED_WEIGHT,
                        steps: Optional[int] = None) -> Path:
    """`<name>.json` beside the LoRA, merged into an existing one (the user's other keys are kept)."""
    path = user_metadata_path(lora_file)
    metadata = _read_json_object(path)
    metadata.update(user_metadata(config, Path(lora_file), preferred_weight, steps))
    atomic_write_text(path, json.dumps(metadata, indent=4, ensure_ascii=False) + "\n")
    return path


def _read_json_object(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        return {}  # a damaged json is replaced: the WebUI could not read it either
    return data if isinstance(data, dict) else {}


def write_preview(lora_file: Path, image: Union[Path, str, Any]) -> Path:
    """`<name>.preview.png` from an image file or a PIL image, as PNG whatever the source format."""
    from PIL import Image

    path = preview_path(lora_file)
    if isinstance(image, (str, Path)):
        with Image.open(image) as opened:
            png = _png_bytes(opened)
    else:
        png = _png_bytes(image)
    atomic_write_bytes(path, png)
    return path


def _png_bytes(image) -> bytes:
    buffer = io.BytesIO()
    picture = image if image.mode in ("RGB", "RGBA") else image.convert("RGB")
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def epoch_of(lora_file: Path, name: str) -> Optional[int]:
    """4 for `<name>-000004.safetensors`; None for the final file or another name."""
    stem = Path(lora_file).stem
    suffix = stem[len(name) + 1:] if stem.startswith(name + "-") else ""
    return int(suffix) if suffix.isdigit() else None


def refresh_lora_list() -> bool:
    """Ask the built-in Lora extension to list the folder again; False when it is not loaded."""
    networks = sys.modules.get("networks")
    refresh = getattr(networks, "list_available_networks", None)
    if refresh is None:
        return False
    refresh()
    return True


def refresh_checkpoint_list() -> bool:
    """A1111 lists its checkpoints again, so a full fine-tune's files can be picked at once (the
    dropdown's refresh button, or the next page load, shows them); False outside the WebUI."""
    try:
        from modules import sd_models
    except ImportError:
        return False
    sd_models.list_models()
    return True


def publish_run_outputs(files: list, config: TrainConfig, steps: Optional[int] = None,
                        preview_image: Union[Path, str, None] = None,
                        preferred_weight: float = DEFAULT_PREFERRED_WEIGHT, refresh: bool = True) -> list[Path]:
    """User metadata for every LoRA file of a run, the preview for the final one, then a list refresh.

    `files`: the run's LoRA files, the final `<name>.safetensors` among them when it finished.
    Returns the files written. Missing LoRA files are skipped (a cancelled run has no final file).
    """
    written: list[Path] = []
    final_name = f"{config.output.name}.safetensors"
    for file in dict.fromkeys(Path(f) for f in files):
        if not file.is_file():
            continue
        written.append(write_user_metadata(file, config, preferred_weight, steps))
        if preview_image and file.name == final_name and Path(preview_image).is_file():
            written.append(write_preview(file, preview_image))
    if written and refresh:
        refresh_lora_list()
    return written
