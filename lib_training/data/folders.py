"""kohya-style dataset folders: `<repeats>_<tokens>/` subfolders of images and captions.

    train/10_nosnjaoutfit woman/001.png      repeats=10, tokens="nosnjaoutfit woman"
    train/10_nosnjaoutfit woman/001.txt      caption of 001.png
    reg/1_woman/0001.png                     regularisation (class) image

A folder that holds images directly is accepted too (repeats 1, no tokens), and a kohya project
folder (`img/` [+ `reg/`]) is read as its `img/` and `reg/`: one grammar for the health check,
preprocess, import, training, the WebUI's pickers and the API.

Nothing here stops on a folder name: like kohya, a subfolder whose name has no usable repeat count
(`abc`, `0_x`, `-1_x`) is skipped and reported (`DatasetSpec.skipped`). Nothing outside the dataset
is read: a symlink that leaves the dataset folder (or goes nowhere) is skipped and reported.
Scanning only lists files and reads captions; images are decoded later (images.py).
"""

from __future__ import annotations

import codecs
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from lib_training.errors import DatasetError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
TRAIN_DIRNAME = "img"  # kohya_ss GUI's names inside a project folder
REG_DIRNAME = "reg"
DEFAULT_CAPTION_EXTENSIONS = (".txt", ".caption")
EXPECTED_LAYOUT = "<repeats>_<name>/ (for example '10_mychar woman/' holding the images and their .txt captions)"

# `<repeats>_<tokens>`; tokens may contain further underscores and spaces (kohya joins them back).
_SUBSET_NAME = re.compile(r"^(\d+)_(.*)$", re.DOTALL)
_LEADING_WORD = re.compile(r"^([^_]*)_(.*)$", re.DOTALL)


@dataclass(frozen=True)
class ImageItem:
    """One image of the dataset, with the caption that will be trained on."""

    path: Path
    caption: str
    repeats: int
    is_reg: bool
    subset: str  # name of the subset folder, e.g. "10_nosnjaoutfit woman"


@dataclass
class Subset:
    """One `<repeats>_<tokens>` folder (or a plain folder of images)."""

    path: Path
    repeats: int
    tokens: str
    is_reg: bool
    items: list[ImageItem] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.name


@dataclass(frozen=True)
class SkippedEntry:
    """A folder or file the scan did not take, and why (the user sees `reason`)."""

    path: Path
    code: str  # "folder_name", "outside_dataset", "broken_link", "loose_image"
    reason: str  # what is wrong and what to do, without the path (shown beside it)


@dataclass(frozen=True)
class DatasetDirs:
    """Where the images of a dataset folder are."""

    train_dir: Path
    reg_dir: Path | None = None


@dataclass
class DatasetSpec:
    """Every subset found in the training folder and the optional regularisation folder."""

    subsets: list[Subset]
    skipped: list[SkippedEntry] = field(default_factory=list)

    @property
    def train_subsets(self) -> list[Subset]:
        return [s for s in self.subsets if not s.is_reg]

    @property
    def reg_subsets(self) -> list[Subset]:
        return [s for s in self.subsets if s.is_reg]

    @property
    def train_items(self) -> list[ImageItem]:
        return [item for s in self.train_subsets for item in s.items]

    @property
    def reg_items(self) -> list[ImageItem]:
        return [item for s in self.reg_subsets for item in s.items]

    @property
    def num_train_images(self) -> int:
        return len(self.train_items)

    @property
    def num_reg_images(self) -> int:
        return len(self.reg_items)

    @property
    def num_train_samples(self) -> int:
        """Training images seen per epoch: each image counts `repeats` times (kohya's epoch length)."""
        return sum(item.repeats for item in self.train_items)

    @property
    def num_reg_samples(self) -> int:
        return sum(item.repeats for item in self.reg_items)


def dataset_dirs(folder: Path) -> DatasetDirs:
    """`<folder>/img` (+ `<folder>/reg`) for a kohya project folder, else the folder itself."""
    folder = Path(folder)
    train = folder / TRAIN_DIRNAME
    if train.is_dir():
        reg = folder / REG_DIRNAME
        return DatasetDirs(train, reg if reg.is_dir() else None)
    return DatasetDirs(folder, None)


def scan_dataset(
    train_dir: Path,
    reg_dir: Path | None = None,
    caption_extensions: Sequence[str] = DEFAULT_CAPTION_EXTENSIONS,
) -> DatasetSpec:
    """List the subsets, images and captions of a kohya-layout dataset; raise DatasetError if unusable.

    `train_dir` may be a kohya project (`img/` [+ `reg/`]); its `reg/` is used unless `reg_dir` is given.
    Raises only when a folder itself is unusable (missing, a file, nothing in it at all).
    """
    caption_exts = _normalise_extensions(caption_extensions)
    dirs = dataset_dirs(Path(train_dir))
    if reg_dir is not None and str(reg_dir).strip():
        dirs = DatasetDirs(dirs.train_dir, Path(reg_dir))
    spec = DatasetSpec(subsets=[])
    spec.subsets += _scan_root(dirs.train_dir, False, caption_exts, spec.skipped)
    if dirs.reg_dir is not None:
        spec.subsets += _scan_root(dirs.reg_dir, True, caption_exts, spec.skipped)
    return spec


def tag_frequency(spec: DatasetSpec) -> dict[str, dict[str, int]]:
    """Tag counts per subset folder, as kohya's `ss_tag_frequency` metadata (lower-cased, once per image)."""
    result: dict[str, dict[str, int]] = {}
    for subset in spec.subsets:
        # Subsets with the same folder name (train and reg) are merged, as kohya does.
        counts = Counter(result.get(subset.name, {}))
        for item in subset.items:
            counts.update(tag.strip().lower() for tag in item.caption.split(",") if tag.strip())
        result[subset.name] = dict(counts)
    return result


def parse_subset_name(name: str) -> tuple[int, str] | None:
    """`"10_nosnja woman"` -> `(10, "nosnja woman")`; None when the name has no `<digits>_` prefix."""
    match = _SUBSET_NAME.match(name)
    if match is None:
        return None
    return int(match.group(1)), match.group(2).strip()


def read_caption_file(path: Path) -> str:
    """The caption in a text file, whatever its encoding; kohya uses the first non-empty line."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DatasetError(
            f"Cannot read caption file '{path}': {exc.strerror or exc}. "
            "Check that the file is readable, or delete it to use the folder name as caption."
        ) from exc
    text = decode_text(data).replace("\x00", "")
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return ""


def decode_text(data: bytes) -> str:
    """Decode caption bytes without ever failing: BOMs first, then UTF-8, cp1252 and latin-1."""
    for bom, encoding in (
        (codecs.BOM_UTF32_LE, "utf-32"),  # before UTF-16 LE: its BOM starts the same way
        (codecs.BOM_UTF32_BE, "utf-32"),
        (codecs.BOM_UTF8, "utf-8-sig"),
        (codecs.BOM_UTF16_LE, "utf-16"),
        (codecs.BOM_UTF16_BE, "utf-16"),
    ):
        if data.startswith(bom):
            try:
                return data.decode(encoding)
            except UnicodeDecodeError:
                break  # a BOM-like start that lies; try the plain encodings below
    guessed = _guess_bomless_utf16(data)
    encodings = ((guessed,) if guessed else ()) + ("utf-8", "cp1252")
    for encoding in encodings:
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    return data.decode("latin-1")  # maps every byte, so this cannot fail


def _guess_bomless_utf16(data: bytes) -> str | None:
    """Notepad-style UTF-16 without BOM: ASCII text with every other byte NUL."""
    if len(data) < 4 or len(data) % 2:
        return None
    even_nuls = data[0::2].count(0)
    odd_nuls = data[1::2].count(0)
    half = len(data) // 2
    if odd_nuls > 0.6 * half and even_nuls == 0:
        return "utf-16-le"
    if even_nuls > 0.6 * half and odd_nuls == 0:
        return "utf-16-be"
    return None


def _normalise_extensions(extensions: Iterable[str]) -> tuple[str, ...]:
    normalised = []
    for ext in extensions:
        ext = ext.strip().lower()
        if ext and not ext.startswith("."):
            ext = "." + ext
        if ext and ext not in normalised:
            normalised.append(ext)
    return tuple(normalised)


def _scan_root(root: Path, is_reg: bool, caption_exts: tuple[str, ...],
               skipped: list[SkippedEntry]) -> list[Subset]:
    """Subsets of one dataset root: its `<repeats>_<tokens>` subfolders, or the root itself.

    Badly named subfolders, loose images beside subfolders and links leaving `root` are added to
    `skipped` (kohya skips such folders with a warning); only a root with nothing at all raises.
    """
    kind = "regularisation" if is_reg else "training"
    _check_root(root, kind)
    boundary = _real(root)
    skipped += _escaping_entries(root, boundary)
    direct_images = _image_files(root, boundary)
    subsets: list[Subset] = []
    looked_at = [root]
    skipped_before = len(skipped)
    for folder in _subfolders(root, boundary):
        looked_at.append(folder)
        skipped += _escaping_entries(folder, boundary)
        images = _image_files(folder, boundary)
        parsed = parse_subset_name(folder.name)
        if not images:
            continue  # empty or unrelated folder (logs, outputs): nothing to train on
        if parsed is None or parsed[0] <= 0:
            skipped.append(SkippedEntry(folder, "folder_name", _bad_name_message(folder, kind, parsed, len(images))))
            continue
        repeats, tokens = parsed
        subsets.append(_make_subset(folder, images, repeats, tokens, is_reg, caption_exts, boundary))

    if direct_images and (subsets or len(skipped) > skipped_before):
        # kohya reads only the subfolders of a training folder: loose images are left out, and said so.
        skipped += [SkippedEntry(image, "loose_image", _loose_image_message(image, root)) for image in direct_images]
    elif direct_images:
        # Convenience layout: a plain folder of images, seen once per epoch, captions or nothing.
        subsets.append(_make_subset(root, direct_images, 1, "", is_reg, caption_exts, boundary))
    if not subsets and len(skipped) == skipped_before:
        raise DatasetError(_no_images_message(root, kind, looked_at))
    return subsets


def _check_root(root: Path, kind: str) -> None:
    if not root.exists():
        raise DatasetError(
            f"The {kind} folder '{root}' does not exist. Check the path: it must be a folder on this "
            f"machine containing subfolders named {EXPECTED_LAYOUT}."
        )
    if not root.is_dir():
        raise DatasetError(
            f"The {kind} path '{root}' is a file, not a folder. Give the folder that contains "
            f"subfolders named {EXPECTED_LAYOUT}."
        )


def _subfolders(folder: Path, boundary: Path | None = None) -> list[Path]:
    # Hidden folders (.ipynb_checkpoints, .git) are never datasets.
    return sorted(p for p in _entries(folder, boundary) if p.is_dir() and not p.name.startswith("."))


def _image_files(folder: Path, boundary: Path | None = None) -> list[Path]:
    # Dot-files are skipped: macOS "._x.png" resource forks carry an image extension but no image.
    return sorted(
        p
        for p in _entries(folder, boundary)
        if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file()
    )


def _entries(folder: Path, boundary: Path | None = None) -> list[Path]:
    """The folder's entries that stay inside `boundary` (default: the folder itself).

    A symlink is followed only when its target is inside the dataset: nothing outside is ever read.
    """
    boundary = boundary if boundary is not None else _real(folder)
    return [p for p in _list_dir(folder) if not p.is_symlink() or _inside(p, boundary)]


def _escaping_entries(folder: Path, boundary: Path) -> list[SkippedEntry]:
    """Symlinks in `folder` that leave the dataset or lead nowhere (a loop, a deleted target)."""
    found = []
    for path in sorted(_list_dir(folder)):
        if not path.is_symlink() or path.name.startswith("."):
            continue
        if not _inside(path, boundary):
            found.append(SkippedEntry(path, "outside_dataset", (
                f"a link to '{os.path.realpath(path)}', outside the dataset folder '{boundary}': not read; "
                "copy the file into the dataset if it belongs there")))
        elif not path.exists():
            found.append(SkippedEntry(path, "broken_link", (
                "a link that leads nowhere (its target is missing, or it points to itself): skipped; "
                "delete it or put the real file in its place")))
    return found


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def _inside(path: Path, boundary: Path) -> bool:
    """Whether `path`, links followed, is `boundary` or lies under it (a link loop resolves to itself)."""
    real = _real(path)
    return real == boundary or boundary in real.parents


def _list_dir(folder: Path) -> list[Path]:
    try:
        return list(folder.iterdir())
    except OSError as exc:
        raise DatasetError(
            f"Cannot list the folder '{folder}': {exc.strerror or exc}. Check that it exists and is readable."
        ) from exc


def _make_subset(
    folder: Path,
    images: list[Path],
    repeats: int,
    tokens: str,
    is_reg: bool,
    caption_exts: tuple[str, ...],
    boundary: Path | None = None,
) -> Subset:
    captions = _caption_files(folder, caption_exts, boundary)
    items = [
        ImageItem(
            path=image,
            caption=_caption_for(image, captions, caption_exts) or tokens,
            repeats=repeats,
            is_reg=is_reg,
            subset=folder.name,
        )
        for image in images
    ]
    return Subset(path=folder, repeats=repeats, tokens=tokens, is_reg=is_reg, items=items)


def _caption_files(folder: Path, caption_exts: tuple[str, ...],
                   boundary: Path | None = None) -> dict[tuple[str, str], Path]:
    """Caption files keyed by (stem, lower-case extension), so `x.TXT` counts as `x.txt`.

    Sorted so that when both exist, `x.txt` (sorting after `x.TXT`) deterministically wins.
    A caption linked from outside the dataset is not read.
    """
    return {
        (p.stem, p.suffix.lower()): p
        for p in sorted(_entries(folder, boundary))
        if p.suffix.lower() in caption_exts and p.is_file()
    }


def _caption_for(image: Path, captions: dict[tuple[str, str], Path], caption_exts: tuple[str, ...]) -> str:
    """The caption of the first existing caption file in extension order; "" when none or empty."""
    for ext in caption_exts:
        caption_path = captions.get((image.stem, ext))
        if caption_path is not None:
            return read_caption_file(caption_path)
    return ""


def _bad_name_message(folder: Path, kind: str, parsed: tuple[int, str] | None, count: int) -> str:
    """Why a subfolder was skipped, without its path (listings show the path beside it)."""
    what = f"its {count} image(s) are left out, as kohya does"
    if parsed is not None:  # repeats == 0
        suggestion = f"1_{parsed[1]}" if parsed[1] else "1_name"
        return f"{kind} folder with 0 repeats: {what}; rename it to '{suggestion}' (1 or more) to train on them"
    word = _LEADING_WORD.match(folder.name)
    if word and word.group(1).startswith("-") and word.group(1)[1:].isdigit():
        hint, suggestion = f"'{word.group(1)}' is a negative repeat count", f"1_{word.group(2)}"
    else:
        hint = f"'{word.group(1)}' is not a whole number" if word else "no '<repeats>_' at the start"
        suggestion = f"10_{folder.name}"
    return (f"{kind} folder name without a repeat count ({hint}): {what}; rename it to '{suggestion}' "
            "to train on them")


def _loose_image_message(image: Path, root: Path) -> str:
    return ("an image beside the '<repeats>_<name>' subfolders: left out, as kohya reads the subfolders only; "
            "move it into one to train on it")


def _no_images_message(root: Path, kind: str, looked_at: list[Path]) -> str:
    shown = ", ".join(f"'{p}'" for p in looked_at[:8])
    more = f" and {len(looked_at) - 8} more" if len(looked_at) > 8 else ""
    exts = " ".join(IMAGE_EXTENSIONS)
    return (
        f"No images found in the {kind} folder '{root}'. Looked in: {shown}{more}. "
        f"Expected images ({exts}) in subfolders named {EXPECTED_LAYOUT}, "
        "or directly in the folder."
    )
