"""Preprocess a dataset into a NEW folder: upright 8-bit RGB PNGs at the training size, with their captions.

Crop modes (`PreprocessOptions.crop`):
  center       scale to cover resolution x resolution, cut the overflow evenly (images.resize_and_crop)
  focal        crop around faces; without a face, around the most detailed region
  auto         around faces when one is found, else centre
  keep_aspect  no crop: downscale so the shorter side is `resolution` (never upscale), for bucketing

Faces come from OpenCV's Haar cascade that ships inside `opencv-python(-headless)` (cv2.data), used
only if cv2 is importable: nothing is downloaded. Without OpenCV, `focal` uses the saliency
fallback (centroid of the strongest edges of a 64x64 thumbnail: textured subject on a smooth
background) and `auto` is centre crop. `PreprocessResult.face_detector` says which was used.

Output keeps the source layout (`img/10_sks cat/` stays `img/10_sks cat/`) and numbers each
image with its caption: `0001.png` + `0001.txt`; a mirrored copy (`flip`, training images only)
is `0001_flipped.png` + `0001_flipped.txt`. Captions are copied as UTF-8. Everything is written into
a hidden temporary folder beside the output and renamed into place at the end, so a failure (or
an exception raised from `on_progress` to cancel) leaves no half-filled output. The originals are
only read. What training would leave out (broken files, bombs, links leaving the dataset, badly named
folders: data/preflight.py) is skipped and listed, the others go on.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from ..errors import DatasetError, SettingsError
from .caption_tools import caption_files_by_image, read_caption_text
from .images import crop_box, load_rgb, resize_and_crop
from .importer import SkippedFile
from .preflight import decide

CROP_MODES = ("center", "focal", "auto", "keep_aspect")
HAAR_CASCADE = "haarcascade_frontalface_default.xml"
_DETECT_SIDE = 512  # faces are searched on a copy this size at most
_SALIENCY_SIDE = 64

Box = tuple[float, float, float, float]  # x, y, width, height in image pixels
FaceDetector = Callable[[Image.Image], Sequence[Box]]
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class PreprocessOptions:
    resolution: int = 512
    crop: str = "center"
    flip: bool = False  # also write a mirrored copy of each training image
    detect_faces: bool = True  # use OpenCV's face detector for focal/auto when importable

    def validate(self) -> None:
        if isinstance(self.resolution, bool) or not isinstance(self.resolution, int) or not 64 <= self.resolution <= 4096:
            raise SettingsError(f"Resolution must be a whole number of pixels from 64 to 4096, got {self.resolution!r}.")
        if self.resolution % 8:
            raise SettingsError(f"Resolution {self.resolution} is not a multiple of 8, which the VAE needs; "
                                f"use {self.resolution // 8 * 8} or {self.resolution // 8 * 8 + 8}.")
        if self.crop not in CROP_MODES:
            raise SettingsError(f"Unknown crop mode {self.crop!r}: use one of {', '.join(CROP_MODES)}.")


@dataclass(frozen=True)
class PreprocessedImage:
    source: Path
    image: Path  # in the output folder
    caption: Path | None  # None when the source had no caption file
    flipped: bool = False


@dataclass
class PreprocessResult:
    output: Path
    images: list[PreprocessedImage] = field(default_factory=list)
    skipped: list[SkippedFile] = field(default_factory=list)
    face_detector: str = "none"  # "opencv-haar", "custom" or "none"


def preprocess_dataset(
    source: Path,
    output: Path,
    options: PreprocessOptions | None = None,
    on_progress: Progress | None = None,
    face_detector: FaceDetector | None = None,
) -> PreprocessResult:
    """Write the processed copy of `source` into the new folder `output` (see the module docstring)."""
    options = options or PreprocessOptions()
    options.validate()
    source, output = Path(source), Path(output)
    _check_output(source, output)
    checked = decide(source)  # the files training would leave out are left out here too, and listed
    spec = checked.spec
    captions = caption_files_by_image(spec)
    detector, detector_name = _pick_detector(options, face_detector)
    result = PreprocessResult(output=output, face_detector=detector_name,
                              skipped=[SkippedFile(item.path, item.reason) for item in checked.left_out])
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent))
    try:
        total, done = len(spec.train_items) + len(spec.reg_items), 0
        for subset in spec.subsets:
            relative = subset.path.relative_to(source)
            width, number = max(4, len(str(len(subset.items)))), 0
            for item in subset.items:
                flips = (False, True) if options.flip and not item.is_reg else (False,)
                stem = f"{number + 1:0{width}d}"  # numbers stay contiguous when a broken image is skipped
                if _write_item(item.path, captions.get(item.path), staging / relative, output / relative, stem,
                               flips, options, detector, result):
                    number += 1
                done += 1
                if on_progress is not None:
                    on_progress(done, total)
        if not result.images:
            first = result.skipped[0]
            raise DatasetError(f"None of the {len(result.skipped)} images could be read, so nothing was written. "
                               f"First problem: {first.reason}")
        if output.is_dir():
            output.rmdir()  # checked empty above; os.replace needs it gone on Windows
        os.replace(staging, output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return result


def process_image(img: Image.Image, resolution: int, crop: str = "center",
                  face_detector: FaceDetector | None = None) -> Image.Image:
    """One upright RGB image -> the training-size image for `crop` (see CROP_MODES)."""
    if crop == "keep_aspect":
        return downscale_short_side(img, resolution)
    if crop == "center":
        return resize_and_crop(img, resolution, resolution)
    faces = list(face_detector(img)) if face_detector is not None else []
    if faces:
        return crop_around(img, resolution, resolution, face_focus(faces, img.size))
    if crop == "focal":
        return crop_around(img, resolution, resolution, saliency_focus(img))
    return resize_and_crop(img, resolution, resolution)  # auto without a face


def downscale_short_side(img: Image.Image, resolution: int) -> Image.Image:
    """Shorter side -> `resolution` keeping the aspect ratio; smaller images are kept as they are."""
    short = min(img.size)
    if short <= resolution:
        return img.copy()
    scale = resolution / short
    size = tuple(resolution if side == short else max(1, round(side * scale)) for side in img.size)
    return img.resize(size, Image.Resampling.LANCZOS)


def crop_around(img: Image.Image, width: int, height: int, focus: tuple[float, float]) -> Image.Image:
    """Like a centre crop, but the kept region is centred on `focus` (x, y in 0..1) as far as it fits."""
    left, top, right, bottom = crop_box(img.width, img.height, width, height, "center")
    region_w, region_h = right - left, bottom - top
    x = min(max(focus[0] * img.width - region_w / 2, 0.0), img.width - region_w)
    y = min(max(focus[1] * img.height - region_h / 2, 0.0), img.height - region_h)
    return img.resize((width, height), Image.Resampling.LANCZOS, box=(x, y, x + region_w, y + region_h))


def face_focus(faces: Sequence[Box], size: tuple[int, int]) -> tuple[float, float]:
    """Area-weighted centre of the face boxes, as fractions of the image size."""
    areas = [w * h for _, _, w, h in faces]
    total = sum(areas) or 1.0
    x = sum((fx + fw / 2) * a for (fx, _, fw, _), a in zip(faces, areas)) / total
    y = sum((fy + fh / 2) * a for (_, fy, _, fh), a in zip(faces, areas)) / total
    return x / size[0], y / size[1]


def saliency_focus(img: Image.Image) -> tuple[float, float]:
    """Centroid of the strongest 10% of edges of a 64x64 grey thumbnail; the centre for a flat image."""
    grey = np.asarray(img.convert("L").resize((_SALIENCY_SIDE, _SALIENCY_SIDE), Image.Resampling.BOX), dtype=np.float64)
    edges = np.zeros_like(grey)
    edges[:, 1:] += np.abs(np.diff(grey, axis=1))
    edges[1:, :] += np.abs(np.diff(grey, axis=0))
    threshold = np.percentile(edges, 90)
    weights = np.where(edges >= threshold, edges, 0.0)
    if weights.sum() <= 0:
        return 0.5, 0.5
    ys, xs = np.mgrid[0:_SALIENCY_SIDE, 0:_SALIENCY_SIDE]
    centre = lambda grid: float(((grid + 0.5) * weights).sum() / weights.sum() / _SALIENCY_SIDE)  # noqa: E731
    return centre(xs), centre(ys)


def opencv_face_detector() -> FaceDetector | None:
    """Frontal faces with OpenCV's bundled Haar cascade; None when cv2 (or its data files) is missing."""
    try:
        import cv2
    except ImportError:
        return None
    cascade_file = Path(getattr(getattr(cv2, "data", None), "haarcascades", "") or ".") / HAAR_CASCADE
    if not cascade_file.is_file():
        return None
    cascade = cv2.CascadeClassifier(str(cascade_file))
    if cascade.empty():
        return None

    def detect(img: Image.Image) -> list[Box]:
        scale = min(1.0, _DETECT_SIDE / max(img.size))
        grey = img.convert("L")
        if scale < 1.0:
            grey = grey.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))))
        smallest = max(20, min(grey.size) // 12)
        found = cascade.detectMultiScale(np.asarray(grey), scaleFactor=1.1, minNeighbors=5,
                                         minSize=(smallest, smallest))
        return [(x / scale, y / scale, w / scale, h / scale) for (x, y, w, h) in found]

    return detect


def _pick_detector(options: PreprocessOptions, given: FaceDetector | None) -> tuple[FaceDetector | None, str]:
    if options.crop not in ("focal", "auto"):
        return None, "none"
    if given is not None:
        return given, "custom"
    detector = opencv_face_detector() if options.detect_faces else None
    return detector, "opencv-haar" if detector is not None else "none"


def _write_item(source: Path, caption_file: Path | None, staging_dir: Path, final_dir: Path, stem: str,
                flips: tuple[bool, ...], options: PreprocessOptions, detector: FaceDetector | None,
                result: PreprocessResult) -> bool:
    try:
        processed = process_image(load_rgb(source), options.resolution, options.crop, detector)
    except DatasetError as exc:
        result.skipped.append(SkippedFile(source, str(exc)))
        return False
    caption = read_caption_text(caption_file).strip() if caption_file is not None else None
    staging_dir.mkdir(parents=True, exist_ok=True)
    for flipped in flips:
        name = f"{stem}_flipped" if flipped else stem
        image = processed.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if flipped else processed
        image.save(staging_dir / f"{name}.png", format="PNG")
        if caption is not None:
            (staging_dir / f"{name}.txt").write_text(caption + "\n", encoding="utf-8")
        result.images.append(PreprocessedImage(source, final_dir / f"{name}.png",
                                               final_dir / f"{name}.txt" if caption is not None else None, flipped))
    return True


def _check_output(source: Path, output: Path) -> None:
    src, out = source.resolve(), output.resolve()
    if src == out or src in out.parents or out in src.parents:
        raise SettingsError(f"The output folder '{output}' overlaps the dataset '{source}'. Choose a new folder "
                            "outside it: preprocessing never writes into the originals.")
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise SettingsError(f"The output folder '{output}' already exists and is not empty. Choose a new "
                            "folder name (nothing is overwritten), or delete the old one first.")
