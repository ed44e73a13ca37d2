"""Decode dataset images strictly into 8-bit RGB, then resize/crop them to a bucket and make tensors."""

from __future__ import annotations

import logging
import math
import random
import struct
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from lib_training.errors import DatasetError, SettingsError

logger = logging.getLogger(__name__)

# Largest image accepted, in pixels: bigger files are refused as possible decompression bombs
# (a tiny file that decodes to gigabytes). Checked before decoding, from the header.
MAX_IMAGE_PIXELS = 8192 * 8192

CROP_MODES = ("center", "random")

_warned_truncated_flag = False


def load_rgb(path: Path) -> Image.Image:
    """Open an image, decode it fully, apply its EXIF orientation and return it as 8-bit RGB."""
    path = Path(path)
    _check_file(path)
    with warnings.catch_warnings():
        # Pillow only warns between its own limit and twice that; a warning here is a refusal.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            with Image.open(path) as img:
                _check_pixels(img, path)
                bits = _integer_bit_depth(img)  # must be read before load() clears the tile list
                _warn_if_truncation_allowed()
                img.load()  # decode everything now: truncated/corrupt data fails here, not mid-training
                upright = _exif_transpose(img, path)
                return to_rgb(upright, bits)
        except DatasetError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise DatasetError(_too_large_message(path, detail=str(exc))) from exc
        except UnidentifiedImageError as exc:
            raise DatasetError(
                f"'{path}' is not an image that can be read (its content is not PNG, JPEG, WebP or BMP "
                "data despite the extension). Re-save it from an image editor, or remove it from the dataset."
            ) from exc
        except (OSError, SyntaxError, ValueError, EOFError, struct.error, MemoryError) as exc:
            # Pillow reports truncated and corrupt data with these; the message says which.
            raise DatasetError(
                f"The image '{path}' is truncated or corrupt and cannot be decoded ({exc}). "
                "Re-download or re-export it, or remove it from the dataset."
            ) from exc


def read_size(path: Path) -> tuple[int, int]:
    """(width, height) as displayed (EXIF orientation applied), from the header only: cheap for bucketing."""
    path = Path(path)
    _check_file(path)
    try:
        with Image.open(path) as img:
            _check_pixels(img, path)  # refuse bombs at scan time already, not mid-training
            width, height = img.size
            orientation = _exif_orientation(img)
    except Image.DecompressionBombError as exc:
        raise DatasetError(_too_large_message(path, detail=str(exc))) from exc
    except UnidentifiedImageError as exc:
        raise DatasetError(
            f"'{path}' is not an image that can be read. Re-save it from an image editor, "
            "or remove it from the dataset."
        ) from exc
    except (OSError, SyntaxError, ValueError, struct.error) as exc:
        raise DatasetError(
            f"The image '{path}' cannot be read ({exc}). Re-download or re-export it, or remove it."
        ) from exc
    # Orientations 5-8 are rotated by 90 degrees: width and height swap on display.
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)


def to_rgb(img: Image.Image, bits: int | None = None) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB. Alpha is composited over white; 16-bit data is scaled, not clipped.

    `bits` is the source bit depth of integer images when known (16 for 16-bit PNGs, which Pillow
    opens as mode "I"); without it the range is inferred from the values.
    """
    mode = img.mode
    if mode == "RGB":
        return img  # already what we want; callers own the image either way
    if mode.startswith("I;16") or mode in ("I", "F"):
        return _high_depth_to_rgb(img, bits)
    if _has_alpha(img):
        return _composite_on_white(img.convert("RGBA"))
    return img.convert("RGB")  # L, 1, P, CMYK, YCbCr, RGBX...


def resize_and_crop(
    img: Image.Image,
    width: int,
    height: int,
    crop: str = "center",
    rng: random.Random | None = None,
) -> Image.Image:
    """Scale so the image covers width x height (LANCZOS), then crop the overflow (centred or random)."""
    if width <= 0 or height <= 0:
        raise SettingsError(f"Target size must be positive, got {width}x{height}.")
    if crop not in CROP_MODES:
        raise SettingsError(f"Unknown crop mode '{crop}': use one of {', '.join(CROP_MODES)}.")
    if crop == "random" and rng is None:
        raise SettingsError("crop='random' needs an explicit random.Random (rng) for reproducible crops.")
    box = crop_box(img.width, img.height, width, height, crop, rng)
    # Resizing only the kept region is faster than resize-then-crop and avoids a second rounding.
    return img.resize((width, height), Image.Resampling.LANCZOS, box=box)


def crop_box(
    src_width: int,
    src_height: int,
    width: int,
    height: int,
    crop: str = "center",
    rng: random.Random | None = None,
) -> tuple[float, float, float, float]:
    """The source region (left, top, right, bottom) that fills width x height after scaling."""
    scale = max(width / src_width, height / src_height)
    region_w = min(src_width, width / scale)
    region_h = min(src_height, height / scale)
    spare_w = src_width - region_w
    spare_h = src_height - region_h
    if crop == "random" and rng is not None:
        left, top = rng.uniform(0.0, spare_w), rng.uniform(0.0, spare_h)
    else:
        left, top = spare_w / 2.0, spare_h / 2.0
    return (left, top, left + region_w, top + region_h)


def to_tensor(img: Image.Image) -> torch.Tensor:
    """An RGB image -> float32 tensor (3, H, W) in [-1, 1], the VAE's input range."""
    if img.mode != "RGB":
        img = to_rgb(img)
    array = np.asarray(img, dtype=np.uint8)
    tensor = torch.from_numpy(array.copy()).permute(2, 0, 1).contiguous()
    return tensor.to(torch.float32).div_(127.5).sub_(1.0)


def _check_file(path: Path) -> None:
    if not path.exists():
        raise DatasetError(f"The image '{path}' does not exist. Rescan the dataset folder.")
    if not path.is_file():
        raise DatasetError(f"'{path}' is not a file. Remove it from the dataset folder.")
    if path.stat().st_size == 0:
        raise DatasetError(
            f"The image '{path}' is an empty file (0 bytes), probably an interrupted copy or download. "
            "Copy it again or delete it."
        )


def _check_pixels(img: Image.Image, path: Path) -> None:
    width, height = img.size
    if width <= 0 or height <= 0:
        raise DatasetError(f"The image '{path}' has no pixels ({width}x{height}). Re-export it or delete it.")
    if width * height > MAX_IMAGE_PIXELS:
        raise DatasetError(_too_large_message(path, detail=f"{width}x{height}"))


def _too_large_message(path: Path, detail: str) -> str:
    side = math.isqrt(MAX_IMAGE_PIXELS)
    return (
        f"The image '{path}' is too large to load safely ({detail}; the limit is {MAX_IMAGE_PIXELS:,} "
        f"pixels, about {side}x{side}). It may be damaged or a decompression bomb; if it is a real photo, "
        "downscale it (training uses 512-1024 px anyway) and try again."
    )


def _warn_if_truncation_allowed() -> None:
    # Another WebUI extension may have switched Pillow to silently pad truncated files; we never set it.
    global _warned_truncated_flag
    if ImageFile.LOAD_TRUNCATED_IMAGES and not _warned_truncated_flag:
        _warned_truncated_flag = True
        logger.warning(
            "PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True (set by another extension): "
            "truncated dataset images cannot be detected and will be padded."
        )


def _integer_bit_depth(img: Image.Image) -> int | None:
    """16 for 16-bit sources (mode I;16*, or mode I decoded from a 16-bit raw mode), else None."""
    if img.mode.startswith("I;16"):
        return 16
    if img.mode == "I":
        for tile in getattr(img, "tile", None) or []:
            rawmode = tile[3] if len(tile) > 3 else None
            if isinstance(rawmode, tuple):
                rawmode = rawmode[0] if rawmode else None
            if isinstance(rawmode, str) and rawmode.startswith("I;16"):
                return 16
    return None


def _exif_orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(0x0112, 1))
    except (OSError, SyntaxError, ValueError, TypeError, KeyError, struct.error):
        return 1  # unreadable EXIF: treat as upright, the pixels themselves are fine


def _exif_transpose(img: Image.Image, path: Path) -> Image.Image:
    try:
        return ImageOps.exif_transpose(img)
    except (OSError, SyntaxError, ValueError, TypeError, KeyError, struct.error) as exc:
        # Broken EXIF should not cost a good image; keep the stored orientation.
        logger.warning("Ignoring unreadable EXIF orientation of '%s': %s", path, exc)
        return img.copy()  # detached from the file, like exif_transpose's own result


def _has_alpha(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info


def _composite_on_white(rgba: Image.Image) -> Image.Image:
    # Transparent pixels often hold black or garbage colour; white is what a viewer shows.
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def _high_depth_to_rgb(img: Image.Image, bits: int | None) -> Image.Image:
    """Mode I;16*, I or F -> 8-bit grey -> RGB, mapping the source's full range onto 0..255."""
    if img.mode.startswith("I;16"):
        bits = 16  # the mode itself says so, even for a dark image whose values stay below 256
    values = np.asarray(img).astype(np.float64)
    values = np.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
    scaled = _scale_to_8bit(values, bits, is_float=img.mode == "F")
    grey = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    return Image.fromarray(grey, mode="L").convert("RGB")


def _scale_to_8bit(values: np.ndarray, bits: int | None, is_float: bool) -> np.ndarray:
    top = float(values.max()) if values.size else 0.0
    if bits == 16:
        return values / 257.0  # 65535 / 257 == 255 exactly
    if is_float and top <= 1.0:
        return values * 255.0  # float images are usually 0..1
    if top <= 255.0:
        return values
    if top <= 65535.0:
        return values / 257.0
    # Wider than 16 bits (32-bit TIFF): stretch the used range, the best guess without a white point.
    low = float(values.min())
    return (values - low) * (255.0 / (top - low))
