"""Dataset health report: what is wrong with a dataset folder, which files, and what to do.

Fast enough for hundreds of photos: each image is opened once; JPEGs are decoded at 1/2-1/8
scale (libjpeg's DCT scaling via `draft`), which still reads every byte, so truncated files are
caught; other formats are decoded in full. A few threads overlap the decoding. Nothing is written.
(150 JPEGs of 2000x1500 take about 1.5 s on 2 cores; a 2000x1500 PNG about 0.1-0.3 s.)

Checks: broken / truncated / non-image files, decompression bombs (the engine's limit
`images.MAX_IMAGE_PIXELS`, and Pillow's own if lower), size histogram and images smaller than the
training resolution (shorter side < resolution: they get upscaled), near-duplicates (dHash +
pHash, see image_hash.py), grayscale / CMYK / 16-bit / transparent images and EXIF rotation
(converted on load: notes), unsupported formats that are ignored, missing or empty captions, the
trigger word missing from a caption, captions over CLIP's 75-token window and captions not in
UTF-8.

Token counts use CLIP's real tokenizer (models/clip_tokenizer.py, built offline from open_clip's
vocabulary) when it can be loaded; otherwise `approximate_token_count`, and the report says which.
"""

from __future__ import annotations

import codecs
import dataclasses
import math
import re
import os
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

from PIL import Image, UnidentifiedImageError

from . import images as _images
from .caption_tools import caption_files_by_image, contains_word
from .folders import (DEFAULT_CAPTION_EXTENSIONS, DatasetSpec, ImageItem, SkippedEntry, _list_dir, decode_text,
                      scan_dataset)
from .image_hash import ImageHash, image_hash, near_duplicate_pairs

ERROR, WARNING, NOTE = "error", "warning", "note"
CLIP_WINDOW = 75  # tokens a CLIP text encoder sees between its start and end tokens
SIZE_BINS = (0, 256, 512, 768, 1024, 1536, 2048)  # lower edges of the shorter-side histogram
UNSUPPORTED_EXTENSIONS = (".gif", ".tif", ".tiff", ".heic", ".heif", ".avif", ".jxl", ".jfif", ".psd", ".dng")
MIN_TRAIN_SIDE = 32  # px: a shorter side below this holds almost nothing to learn (a 1x1 pixel, an icon)
SKIPPED_CODES = ("folder_name", "loose_image", "outside_dataset", "broken_link")  # folders.SkippedEntry codes
_MAX_WORKERS = 8
_DRAFT_SIDE = 128  # JPEGs are decoded at the smallest DCT scale that keeps this many pixels a side
_WORD_PIECE = re.compile(r"[^\W\d_]+|\d|[^\w\s]|_", re.UNICODE)

Progress = Callable[[int, int], None]
TokenCounter = Callable[[str], int]


@dataclass(frozen=True)
class AffectedFile:
    path: Path
    detail: str = ""  # e.g. "300x200", "92 tokens", "same as b.jpg"


@dataclass(frozen=True)
class Issue:
    code: str  # stable identifier, e.g. "broken", "too_small"
    severity: str  # "error" (training refuses the file), "warning" or "note"
    message: str  # what is wrong and what to do
    files: tuple[AffectedFile, ...]

    @property
    def paths(self) -> list[Path]:
        return [f.path for f in self.files]


@dataclass(frozen=True)
class DuplicatePair:
    first: Path
    second: Path
    distance: int  # differing dHash bits of 64; 0 = same thumbnail


@dataclass(frozen=True)
class SizeBin:
    min_side: int
    max_side: int | None  # exclusive; None = no upper bound
    count: int

    @property
    def label(self) -> str:
        return f"{self.min_side}+" if self.max_side is None else f"{self.min_side}-{self.max_side - 1}"


@dataclass(frozen=True)
class ImageFacts:
    """What one image file holds, read cheaply; `error` is set when it cannot be used."""

    path: Path
    width: int = 0  # as displayed (EXIF rotation applied)
    height: int = 0
    mode: str = ""
    bits: int = 8
    orientation: int = 1
    transparent: bool = False  # has pixels that are not fully opaque
    fingerprint: ImageHash | None = None  # perceptual hashes, for near-duplicates
    error: str | None = None  # why the file cannot be used
    too_large: bool = False


@dataclass
class HealthReport:
    folder: Path
    resolution: int
    trigger: str
    num_train_images: int
    num_reg_images: int
    size_histogram: list[SizeBin]
    issues: list[Issue]
    duplicates: list[DuplicatePair]
    token_counter: str  # "clip", "approximate" or "custom" (a count_tokens given by the caller)
    seconds: float
    images: list[ImageFacts] = field(default_factory=list, repr=False)
    spec: DatasetSpec | None = field(default=None, repr=False)  # what was scanned (the pre-flight keeps from it)

    @property
    def num_images(self) -> int:
        return self.num_train_images + self.num_reg_images

    @property
    def ok(self) -> bool:
        """No errors: every image can be trained on (warnings and notes may remain)."""
        return not any(issue.severity == ERROR for issue in self.issues)

    def issue(self, code: str) -> Issue | None:
        return next((issue for issue in self.issues if issue.code == code), None)

    def to_dict(self) -> dict:
        """Plain JSON types only (paths as strings), for the UI and `--json`."""
        data = asdict(dataclasses.replace(self, images=[], spec=None))
        data.pop("images")
        data.pop("spec")
        data["num_images"] = self.num_images
        data["ok"] = self.ok
        for size_bin, original in zip(data["size_histogram"], self.size_histogram):
            size_bin["label"] = original.label
        return _jsonable(data)

    def format_text(self) -> str:
        counts = f"{self.num_images} images ({self.num_train_images} training, {self.num_reg_images} class)"
        trigger = f", trigger '{self.trigger}'" if self.trigger else ""
        lines = [f"Dataset check of {self.folder} at {self.resolution} px{trigger}: {counts}, {self.seconds:.1f} s",
                 "Shorter side: " + ", ".join(f"{b.label} px: {b.count}" for b in self.size_histogram if b.count)]
        for issue in self.issues:
            lines.append(f"\n{issue.severity.upper()} [{issue.code}] {len(issue.files)} file(s): {issue.message}")
            lines += [f"  - {f.path}" + (f": {f.detail}" if f.detail else "") for f in issue.files]
        if not self.issues:
            lines.append("No problems found.")
        lines.append(f"(caption lengths counted with the {self.token_counter} tokenizer)")
        return "\n".join(lines)


def check_dataset(
    folder: Path,
    resolution: int = 512,
    trigger: str = "",
    count_tokens: TokenCounter | None = None,
    on_progress: Progress | None = None,
    reg_dir: Path | None = None,
    caption_extensions: tuple[str, ...] = DEFAULT_CAPTION_EXTENSIONS,
) -> HealthReport:
    """The health report of a dataset folder (kohya project, training folder or plain folder of images).

    Raises DatasetError only when the folder itself is unusable (missing, nothing in it at all); a badly
    named subfolder or a link leaving the dataset is reported, never a stop.
    """
    started = time.perf_counter()
    spec = scan_dataset(Path(folder), reg_dir, caption_extensions)
    items = spec.train_items + spec.reg_items
    if count_tokens is None:
        count_tokens, counter_name = clip_token_counter()
    else:
        counter_name = "approximate" if count_tokens is approximate_token_count else "custom"
    found: dict[str, list[AffectedFile]] = {}
    facts = _inspect_all([item.path for item in items], on_progress)
    for image_facts in facts:
        _image_findings(image_facts, resolution, found)
    captions = caption_files_by_image(spec)
    for item in items:
        _caption_findings(item, captions.get(item.path), trigger, count_tokens, found)
    for subset in spec.subsets:
        _unsupported_findings(subset.path, found)
        _orphan_caption_findings(subset, found)
    _skipped_findings(spec.skipped, found)
    duplicates = _duplicates(facts, found)
    return HealthReport(
        folder=Path(folder), resolution=resolution, trigger=trigger.strip(),
        num_train_images=spec.num_train_images, num_reg_images=spec.num_reg_images,
        size_histogram=_histogram(facts), issues=_issues(found, resolution, trigger.strip()),
        duplicates=duplicates, token_counter=counter_name, seconds=time.perf_counter() - started, images=facts,
        spec=spec,
    )


def inspect_image(path: Path) -> ImageFacts:
    """Header facts, a perceptual hash and a decode check of one image; never raises for bad files."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            return ImageFacts(path, error="empty file (0 bytes), probably an interrupted copy or download")
        # No warnings.catch_warnings here (it is not thread-safe): Pillow's own limit is checked below.
        with Image.open(path) as img:
            return _inspect_open(path, img)
    except Image.DecompressionBombError as exc:
        return ImageFacts(path, error=f"too large to load safely ({exc})", too_large=True)
    except UnidentifiedImageError:
        return ImageFacts(path, error=_not_an_image_detail(path))
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, MemoryError) as exc:
        return ImageFacts(path, error=f"truncated or corrupt, cannot be decoded ({exc})")


def _inspect_all(paths: list[Path], on_progress: Progress | None) -> list[ImageFacts]:
    """inspect_image over all paths, in order; threads overlap the decoding (Pillow releases the GIL)."""
    facts = []
    with ThreadPoolExecutor(max_workers=max(1, min(_MAX_WORKERS, os.cpu_count() or 1))) as pool:
        for done, image_facts in enumerate(pool.map(inspect_image, paths), start=1):
            facts.append(image_facts)
            if on_progress is not None:
                on_progress(done, len(paths))
    return facts


def _inspect_open(path: Path, img: Image.Image) -> ImageFacts:
    width, height = img.size
    limits = [_images.MAX_IMAGE_PIXELS] + ([Image.MAX_IMAGE_PIXELS] if Image.MAX_IMAGE_PIXELS else [])
    if width * height > min(limits):
        return ImageFacts(path, width, height, img.mode, error=f"{width}x{height} pixels", too_large=True)
    mode, bits = img.mode, _bit_depth(img)  # the bit depth must be read before load() clears the tiles
    img.draft(None, (min(width, _DRAFT_SIDE), min(height, _DRAFT_SIDE)))  # JPEG only; a no-op elsewhere
    # Truncated or corrupt data fails here. Before the EXIF read: a PNG's getexif() loads the pixels and
    # swallows that failure, after which load() would find nothing left to decode and pass a broken file.
    img.load()
    orientation = _images._exif_orientation(img)
    transparent = _images._has_alpha(img) and img.convert("RGBA").getchannel("A").getextrema()[0] < 255
    upright = _images._exif_transpose(img, path)
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    return ImageFacts(path, width, height, mode, bits, orientation, transparent,
                      fingerprint=image_hash(_images.to_rgb(upright, 16 if bits == 16 else None)))


def _bit_depth(img: Image.Image) -> int:
    """16 for 16-bit data (grey PNGs open as mode I or I;16, RGB ones are silently reduced to RGB)."""
    if _images._integer_bit_depth(img) == 16 or img.mode in ("I", "F"):
        return 16
    for tile in getattr(img, "tile", None) or []:
        rawmode = tile[3] if len(tile) > 3 else None
        rawmode = rawmode[0] if isinstance(rawmode, tuple) and rawmode else rawmode
        if isinstance(rawmode, str) and ";16" in rawmode:
            return 16
    return 8


def _not_an_image_detail(path: Path) -> str:
    head = path.read_bytes()[:512]
    kind = "no image data"
    if head.lstrip().lower().startswith((b"<!doctype html", b"<html")):
        kind = "an HTML page (a failed download saves the error page under the image's name)"
    elif head and _is_text(head):
        kind = "text, not image data"
    return f"not an image: the file holds {kind} despite the {path.suffix} extension"


def _is_text(data: bytes) -> bool:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(ch.isprintable() or ch in "\r\n\t" for ch in text)


def _image_findings(facts: ImageFacts, resolution: int, found: dict[str, list[AffectedFile]]) -> None:
    def add(code: str, detail: str = "") -> None:
        found.setdefault(code, []).append(AffectedFile(facts.path, detail))

    if facts.error is not None:
        add("too_large" if facts.too_large else "broken", facts.error)
        return
    size = f"{facts.width}x{facts.height}"
    if min(facts.width, facts.height) < MIN_TRAIN_SIDE:
        add("too_small_to_train", size)
    elif min(facts.width, facts.height) < resolution:
        add("too_small", size)
    if facts.mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F") or facts.mode.startswith("I;16"):
        add("grayscale", facts.mode)
    if facts.mode == "CMYK":
        add("cmyk")
    if facts.bits == 16:
        add("high_bit_depth", facts.mode)
    if facts.transparent:
        add("transparency", facts.mode)
    if facts.orientation not in (0, 1):
        add("exif_rotation", f"orientation {facts.orientation}, upright size {size}")


def _caption_findings(item: ImageItem, caption_file: Path | None, trigger: str, count_tokens: TokenCounter,
                      found: dict[str, list[AffectedFile]]) -> None:
    def add(code: str, detail: str = "") -> None:
        found.setdefault(code, []).append(AffectedFile(item.path, detail))

    fallback = f"trained with the folder name '{item.caption}' as caption" if item.caption else "trained without caption"
    if caption_file is None:
        if not (item.is_reg and item.caption):  # class images captioned by their folder name is the norm
            add("missing_caption", fallback)
    else:
        data = caption_file.read_bytes()
        if not _is_utf8(data):
            add("caption_not_utf8", f"{caption_file.name}: {_encoding_guess(data)}")
        if not decode_text(data).replace("\x00", "").strip():
            add("empty_caption", f"{caption_file.name} is empty; {fallback}")
    if trigger.strip() and not item.is_reg and not contains_word(item.caption, trigger):
        add("trigger_missing", f"caption: '{_shorten(item.caption)}'" if item.caption else "no caption")
    tokens = count_tokens(item.caption) if item.caption else 0
    if tokens > CLIP_WINDOW:
        add("caption_too_long", f"{tokens} tokens")


def _unsupported_findings(folder: Path, found: dict[str, list[AffectedFile]]) -> None:
    for path in sorted(_list_dir(folder)):
        if path.suffix.lower() in UNSUPPORTED_EXTENSIONS and path.is_file() and not path.name.startswith("."):
            found.setdefault("unsupported_format", []).append(AffectedFile(path, path.suffix.lower()))


def _orphan_caption_findings(subset, found: dict[str, list[AffectedFile]]) -> None:
    """Caption files with no image of the same name: nothing trains on them (a renamed or deleted image)."""
    stems = {item.path.stem for item in subset.items}
    for path in sorted(_list_dir(subset.path)):
        if (path.suffix.lower() in DEFAULT_CAPTION_EXTENSIONS and path.stem not in stems
                and not path.name.startswith(".") and path.is_file()):
            found.setdefault("orphan_caption", []).append(AffectedFile(path, "no image with this name"))


def _skipped_findings(skipped: list[SkippedEntry], found: dict[str, list[AffectedFile]]) -> None:
    for entry in skipped:
        found.setdefault(entry.code, []).append(AffectedFile(entry.path, entry.reason))


def _duplicates(facts: list[ImageFacts], found: dict[str, list[AffectedFile]]) -> list[DuplicatePair]:
    hashed = [f for f in facts if f.fingerprint is not None]
    pairs = [DuplicatePair(hashed[i].path, hashed[j].path, d)
             for i, j, d in near_duplicate_pairs([f.fingerprint for f in hashed])]
    for pair in pairs:
        first = pair.first.name if pair.first.parent == pair.second.parent else str(pair.first)
        found.setdefault("near_duplicate", []).append(
            AffectedFile(pair.second, f"near-identical to {first} ({pair.distance}/64 dHash bits differ)"))
    return pairs


def _histogram(facts: list[ImageFacts]) -> list[SizeBin]:
    sides = [min(f.width, f.height) for f in facts if f.error is None]
    edges = list(SIZE_BINS) + [None]
    return [SizeBin(low, high, sum(1 for s in sides if s >= low and (high is None or s < high)))
            for low, high in zip(edges[:-1], edges[1:])]


def _issues(found: dict[str, list[AffectedFile]], resolution: int, trigger: str) -> list[Issue]:
    limit = _images.MAX_IMAGE_PIXELS
    messages = {
        "broken": (ERROR, "These files cannot be decoded (not an image, truncated or corrupt); training leaves "
                          "them out. Re-export or re-download them, or delete them from the dataset."),
        "too_large": (ERROR, f"Larger than the {limit:,}-pixel safety limit (about {math.isqrt(limit)} px a side): "
                             "possibly a decompression bomb; training leaves them out. Downscale real photos "
                             "(training uses 512-1024 px) or delete the files."),
        "too_small_to_train": (ERROR, f"The shorter side is below {MIN_TRAIN_SIDE} px: too little to crop or learn "
                                      "from (an icon, a 1x1 tracking pixel); training leaves them out. Use larger "
                                      "originals or delete them."),
        "folder_name": (WARNING, "Subfolders without a repeat count of 1 or more ('<repeats>_<name>'): skipped "
                                 "with their images, as kohya does. Rename them to train on their images."),
        "loose_image": (WARNING, "Images directly in a folder that also has '<repeats>_<name>' subfolders: left "
                                 "out, as kohya does. Move them into a subfolder to train on them."),
        "outside_dataset": (WARNING, "Links to files or folders outside the dataset folder: not read, so not "
                                     "trained on. Copy the files into the dataset if they belong there."),
        "broken_link": (WARNING, "Links that lead nowhere (a missing target or a loop): skipped. Delete them."),
        "near_duplicate": (WARNING, "Near-identical images (re-saved, resized or lightly edited copies) count "
                                    "twice and push the LoRA to overfit on them. Keep one of each pair unless "
                                    "the repetition is on purpose (use repeats instead)."),
        "too_small": (WARNING, f"The shorter side is below the training resolution of {resolution} px, so these "
                               "are upscaled and look soft to the model. Use larger originals, remove them, or "
                               "train at a lower resolution."),
        "missing_caption": (WARNING, "No caption file (.txt or .caption), so the folder name is the whole caption "
                                     "(kohya's way for simple sets; fine if intended). For control over what the "
                                     "LoRA learns, write captions with the captioner or by hand."),
        "empty_caption": (WARNING, "The caption file is empty, so the folder name is used instead. Write a "
                                   "caption or delete the empty file."),
        "trigger_missing": (WARNING, f"The caption does not contain the trigger word '{trigger}', so these "
                                     "images do not teach it. Use 'Prefix trigger word' in the caption tools."),
        "caption_too_long": (WARNING, f"Longer than CLIP's {CLIP_WINDOW}-token window: the CLI cuts the words "
                                      "past it; in the WebUI, as in txt2img, up to 225 tokens count (the rest is "
                                      "cut at a tag). Shorten the captions (drop repeated or weak tags)."),
        "caption_not_utf8": (WARNING, "Not saved as UTF-8: LoRA Studio guesses the encoding, but kohya "
                                      "sd-scripts reads UTF-8 only and accents may come out wrong. Check the "
                                      "text and re-save it as UTF-8 (saving it in the caption editor does)."),
        "grayscale": (NOTE, "Grayscale images are converted to RGB on load; the LoRA learns them as "
                            "black-and-white. Fine if intended, otherwise use colour originals."),
        "cmyk": (NOTE, "CMYK images (print exports) are converted to RGB on load and colours may shift. "
                       "Export them as RGB (sRGB) to control the colours."),
        "high_bit_depth": (NOTE, "16-bit images are reduced to 8 bits on load; nothing to do."),
        "transparency": (NOTE, "Transparent areas are filled with white on load. If the subject should stand "
                               "on another background, flatten the images yourself."),
        "exif_rotation": (NOTE, "Stored sideways with an EXIF rotation tag: LoRA Studio turns them upright on "
                                "load, other tools (kohya sd-scripts) may not. Preprocess writes upright copies."),
        "orphan_caption": (NOTE, "Caption files without an image of the same name: nothing trains on them "
                                 "(a renamed or deleted image?). Rename or delete them."),
        "unsupported_format": (NOTE, "Ignored: this format is not used for training. Convert the files to PNG "
                                     "or JPEG (a .jfif is a JPEG: rename it to .jpg) to include them."),
    }
    return [Issue(code, severity, message, tuple(found[code]))
            for code, (severity, message) in messages.items() if found.get(code)]


def clip_token_counter() -> tuple[TokenCounter, str]:
    """CLIP's tokenizer as a counter ('clip'), or the approximation ('approximate') when unavailable."""
    try:
        from ..models.clip_tokenizer import load_clip_tokenizer

        tokenizer = load_clip_tokenizer()
    except Exception:  # no transformers, no vocabulary file, unwritable cache: fall back, never fail the check
        return approximate_token_count, "approximate"

    def count(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    # A tokenizer built with arguments this transformers version ignores maps every word to one id.
    probe = tokenizer("a photo of a cat", add_special_tokens=False)["input_ids"]
    if len(probe) != 5 or len(set(probe)) != 4:
        return approximate_token_count, "approximate"
    return count, "clip"


def approximate_token_count(text: str) -> int:
    """Rough CLIP token count without the vocabulary: one per word of up to 7 letters plus one per
    further 7 letters, one per digit and one per punctuation mark (CLIP splits digits and symbols
    apart). Close to the real count for English captions; unusual words (trigger words) count low."""
    return sum(max(1, math.ceil(len(piece) / 7)) if piece[0].isalpha() else 1
               for piece in _WORD_PIECE.findall(text.lower()))


def _is_utf8(data: bytes) -> bool:
    if b"\x00" in data:
        return False  # UTF-16/32 (BOM or not) are valid UTF-8 byte-wise only for ASCII with NULs
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _encoding_guess(data: bytes) -> str:
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)) or b"\x00" in data:
        return "UTF-16/32 text"
    return "legacy 8-bit encoding (read as Windows-1252)"


def _shorten(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _jsonable(value):
    if isinstance(value, dict):
        return {key: _jsonable(v) for key, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return str(value) if isinstance(value, Path) else value
