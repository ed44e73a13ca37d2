"""Small JPEG thumbnails of dataset images for the Dataset tab's galleries (PIL only, no tensors).

A gallery given the originals would copy every full-size photo into gradio's temp folder (and
hash it) on each refresh; thumbnails of a few KB are made once and reused while the image file is
unchanged (the cache key is path + size + modification time). A file that cannot be decoded (the
problem images of the health report) gets a grey placeholder that says so, so it still shows in
the gallery with its message.
"""

from __future__ import annotations

import hashlib
import io
import tempfile
import warnings
from pathlib import Path

from PIL import Image, ImageDraw, ImageOps

from ...fileio import atomic_write_bytes

THUMBNAIL_SIDE = 256
_CACHE_NAME = "lora_studio_thumbnails"


def default_cache_dir() -> Path:
    return Path(tempfile.gettempdir()) / _CACHE_NAME


def thumbnail(path: Path, cache_dir: Path | None = None, side: int = THUMBNAIL_SIDE) -> Path:
    """The thumbnail file of `path` (made now if missing); a placeholder when `path` is not a readable image."""
    path = Path(path)
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    try:
        stat = path.stat()
        key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{side}"
    except OSError:
        key = f"{path}|missing|{side}"
    target = cache_dir / (hashlib.sha1(key.encode("utf-8", "surrogateescape")).hexdigest() + ".jpg")
    if not target.is_file():
        atomic_write_bytes(target, _thumbnail_bytes(path, side))
    return target


def placeholder_thumbnail(kind: str, cache_dir: Path | None = None, side: int = THUMBNAIL_SIDE) -> Path:
    """A placeholder tile as a file, for entries that must not be opened (links leaving the dataset, folders)."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    target = cache_dir / f"placeholder-{hashlib.sha1(kind.encode()).hexdigest()[:12]}-{side}.jpg"
    if not target.is_file():
        buffer = io.BytesIO()
        placeholder(kind, side).save(buffer, format="JPEG", quality=85)
        atomic_write_bytes(target, buffer.getvalue())
    return target


def _thumbnail_bytes(path: Path, side: int) -> bytes:
    image = _small_image(path, side)
    if image is None:
        image = placeholder(path.suffix.lstrip(".").upper() or "file", side)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return buffer.getvalue()


def _small_image(path: Path, side: int) -> Image.Image | None:
    from ...data import images as _images

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                if img.width * img.height > _images.MAX_IMAGE_PIXELS:
                    return None
                img.draft("RGB", (side, side))  # JPEG: decode at a reduced scale
                img.load()
                upright = ImageOps.exif_transpose(img)
                rgb = _images.to_rgb(upright)
    except Exception:  # broken, truncated, not an image, a bomb: the placeholder says "cannot be read"
        return None
    rgb.thumbnail((side, side), Image.Resampling.BILINEAR)
    return rgb


def placeholder(kind: str, side: int = THUMBNAIL_SIDE) -> Image.Image:
    """A grey tile saying that the file cannot be shown (Pillow 9's only built-in font is tiny: the text is
    drawn on a quarter-size tile and scaled up, so it stays readable in a gallery)."""
    small = side // 4
    image = Image.new("RGB", (small, small), (96, 96, 96))
    draw = ImageDraw.Draw(image)
    draw.line((0, 0, small, small), fill=(170, 70, 70), width=1)
    draw.line((0, small, small, 0), fill=(170, 70, 70), width=1)
    text = f"{kind[:8]}\nunreadable"
    box = draw.multiline_textbbox((0, 0), text, align="center", spacing=2)
    width, height = box[2] - box[0], box[3] - box[1]
    x, y = (small - width) / 2, (small - height) / 2
    draw.rectangle((x - 2, y - 2, x + width + 2, y + height + 3), fill=(30, 30, 30))
    draw.multiline_text((x - box[0], y - box[1]), text, fill=(255, 255, 255), align="center", spacing=2)
    return image.resize((side, side), Image.Resampling.NEAREST)
