"""Import photos into a dataset folder managed by LoRA Studio, in kohya_ss's project layout.

    <root>/img/<repeats>_<trigger> <class>/photo.jpg + photo.txt    training images
    <root>/reg/<repeats>_<class>/...                                 class (regularisation) images

kohya_ss users can point its GUI at `<root>` unchanged. An existing kohya folder (a project
with `img/` [+ `reg/`], or a training folder of `<repeats>_<name>/` subfolders) is imported
as-is: same subfolder names, file names and captions.

Originals are never modified: images and their `.txt`/`.caption` files are copied, each
atomically (temp file + rename). A name already taken in the destination gets a numeric
suffix (`photo-2.jpg` + `photo-2.txt`, so pairs stay together); a file already there with the
same bytes is not copied twice, so importing the same folder again changes nothing.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

from ..errors import DatasetError, SettingsError
from ..fileio import atomic_write_bytes
from .folders import (  # noqa: F401  (DatasetDirs, dataset_dirs, *_DIRNAME: imported from here by callers)
    DEFAULT_CAPTION_EXTENSIONS,
    IMAGE_EXTENSIONS,
    REG_DIRNAME,
    TRAIN_DIRNAME,
    DatasetDirs,
    _caption_files,
    _escaping_entries,
    _image_files,
    _real,
    _subfolders,
    dataset_dirs,
    parse_subset_name,
    scan_dataset,
)
_BAD_NAME_CHARS = re.compile(r'[/\\<>:"|?*\x00-\x1f]')

Progress = Callable[[int, int], None]  # (files done, files in all)


@dataclass(frozen=True)
class SkippedFile:
    path: Path
    reason: str  # what was wrong and what to do, for the user


@dataclass
class ImportResult:
    root: Path
    subsets: list[Path] = field(default_factory=list)  # destination `<repeats>_<name>` folders
    images: list[Path] = field(default_factory=list)  # destination images copied
    captions: list[Path] = field(default_factory=list)  # destination caption files copied
    already_present: list[Path] = field(default_factory=list)  # sources found with the same bytes
    skipped: list[SkippedFile] = field(default_factory=list)
    kohya_layout: bool = False  # True when an existing kohya folder was copied as-is

    @property
    def dirs(self) -> DatasetDirs:
        return dataset_dirs(self.root)


def subset_folder_name(repeats: int, trigger: str = "", class_word: str = "") -> str:
    """kohya's `<repeats>_<trigger> <class>` folder name; raises SettingsError for unusable words."""
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise SettingsError(f"Repeats must be a whole number of 1 or more, got {repeats!r} (kohya's default is 10).")
    words = [_check_word("trigger word", trigger), _check_word("class word", class_word)]
    tokens = " ".join(w for w in words if w)
    if not tokens:
        raise SettingsError("Give a trigger word or a class word: kohya names the folder '<repeats>_<trigger> <class>'.")
    return f"{repeats}_{tokens}"


def import_files(
    files: Sequence[Path],
    root: Path,
    trigger: str = "",
    class_word: str = "",
    repeats: int = 10,
    is_reg: bool = False,
    on_progress: Progress | None = None,
) -> ImportResult:
    """Copy images (and captions: listed ones, else those beside each image) into one new subset."""
    name = subset_folder_name(repeats, "" if is_reg else trigger, class_word)
    dest = Path(root) / (REG_DIRNAME if is_reg else TRAIN_DIRNAME) / name
    result = ImportResult(root=Path(root))
    pairs = _pair_listed_files([Path(f) for f in files], result.skipped)
    if not pairs:
        raise DatasetError(_nothing_to_import_message(files))
    _copy_pairs(pairs, dest, result, on_progress)
    return result


def import_folder(
    source: Path,
    root: Path,
    trigger: str = "",
    class_word: str = "",
    repeats: int = 10,
    is_reg: bool = False,
    on_progress: Progress | None = None,
) -> ImportResult:
    """Copy a folder into the dataset: a kohya layout as-is, else its images into one new subset.

    For a plain folder only the images directly in it are taken (subfolders are not searched).
    `trigger`, `class_word`, `repeats` and `is_reg` only name the subset of a plain folder.
    """
    source, root = Path(source), Path(root)
    _check_source(source, root)
    kohya = _kohya_dirs(source)
    if kohya is not None:
        return _import_kohya(kohya, root, on_progress)
    images = _image_files(source)
    if not images:
        raise DatasetError(_no_images_message(source))
    name = subset_folder_name(repeats, "" if is_reg else trigger, class_word)
    dest = root / (REG_DIRNAME if is_reg else TRAIN_DIRNAME) / name
    result = ImportResult(root=root)
    captions = _caption_files(source, DEFAULT_CAPTION_EXTENSIONS)
    pairs = [(image, _captions_of(image, captions)) for image in images]
    known = {*images, *captions.values()}
    escaping = _escaping_entries(source, _real(source))
    result.skipped += [SkippedFile(e.path, e.reason) for e in escaping]
    result.skipped += [SkippedFile(p, _unsupported_reason(p)) for p in sorted(source.iterdir())
                       if p.is_file() and p not in known and not p.name.startswith(".")
                       and p not in {e.path for e in escaping}
                       and p.suffix.lower() not in DEFAULT_CAPTION_EXTENSIONS]
    _copy_pairs(pairs, dest, result, on_progress)
    return result


def _import_kohya(dirs: DatasetDirs, root: Path, on_progress: Progress | None) -> ImportResult:
    spec = scan_dataset(dirs.train_dir, dirs.reg_dir)
    # Badly named subfolders and links leaving the source are not copied, and said so.
    result = ImportResult(root=root, kohya_layout=True, skipped=[SkippedFile(e.path, e.reason) for e in spec.skipped])
    jobs = []
    for subset in spec.subsets:
        dest = root / (REG_DIRNAME if subset.is_reg else TRAIN_DIRNAME) / subset.name
        captions = _caption_files(subset.path, DEFAULT_CAPTION_EXTENSIONS)
        jobs.append((dest, [(item.path, _captions_of(item.path, captions)) for item in subset.items]))
    total = sum(len(pairs) for _, pairs in jobs)
    offset = 0
    for dest, pairs in jobs:
        progress = None if on_progress is None else _shifted(on_progress, offset, total)
        _copy_pairs(pairs, dest, result, progress)
        offset += len(pairs)
    return result


def _shifted(on_progress: Progress, offset: int, total: int) -> Progress:
    return lambda done, _: on_progress(offset + done, total)


def _kohya_dirs(source: Path) -> DatasetDirs | None:
    """The layout of an existing kohya folder, or None for a plain folder of images."""
    dirs = dataset_dirs(source)
    if dirs.train_dir != source:
        return dirs
    for folder in _subfolders(source):
        parsed = parse_subset_name(folder.name)
        if parsed is not None and parsed[0] > 0 and _image_files(folder):
            return dirs
    return None


def _pair_listed_files(files: list[Path], skipped: list[SkippedFile]) -> list[tuple[Path, list[Path]]]:
    """(image, its caption files) for a list of uploads; captions in the list win over those on disk."""
    listed_captions: dict[str, list[Path]] = {}
    images: list[Path] = []
    for path in files:
        suffix = path.suffix.lower()
        if not path.is_file():
            skipped.append(SkippedFile(path, "The file does not exist (moved or deleted?). Select it again."))
        elif suffix in DEFAULT_CAPTION_EXTENSIONS:
            listed_captions.setdefault(path.stem, []).append(path)
        elif suffix in IMAGE_EXTENSIONS and not path.name.startswith("."):
            images.append(path)
        else:
            skipped.append(SkippedFile(path, _unsupported_reason(path)))
    image_stems = {image.stem for image in images}
    for stem, captions in listed_captions.items():
        if stem not in image_stems:
            skipped += [SkippedFile(c, f"No image named '{stem}' was given with this caption; add the image "
                                       "with the same name, or leave the caption out.") for c in captions]
    on_disk: dict[Path, dict[tuple[str, str], Path]] = {}
    pairs = []
    for image in images:
        if image.stem in listed_captions:
            pairs.append((image, listed_captions[image.stem]))
            continue
        if image.parent not in on_disk:
            on_disk[image.parent] = _caption_files(image.parent, DEFAULT_CAPTION_EXTENSIONS)
        pairs.append((image, _captions_of(image, on_disk[image.parent])))
    return pairs


def _captions_of(image: Path, captions: dict[tuple[str, str], Path]) -> list[Path]:
    return [captions[(image.stem, ext)] for ext in DEFAULT_CAPTION_EXTENSIONS if (image.stem, ext) in captions]


def _copy_pairs(
    pairs: Iterable[tuple[Path, list[Path]]], dest: Path, result: ImportResult, on_progress: Progress | None
) -> None:
    pairs = list(pairs)
    if dest not in result.subsets:
        result.subsets.append(dest)
    for done, (image, captions) in enumerate(pairs, start=1):
        stem = _free_stem(dest, image, captions)
        if stem is None:
            result.already_present.append(image)
        else:
            result.images.append(_copy(image, dest / f"{stem}{image.suffix}"))
            result.captions += [_copy(c, dest / f"{stem}{c.suffix}") for c in captions]
        if on_progress is not None:
            on_progress(done, len(pairs))


def _free_stem(dest: Path, image: Path, captions: list[Path]) -> str | None:
    """A stem under which the image and its captions overwrite nothing; None if already imported.

    An image already there with the same bytes counts as imported, even if its caption was edited
    since (the edit is kept).
    """
    stem, n = image.stem, 1
    while True:
        target = dest / f"{stem}{image.suffix}"
        if _same_bytes(image, target):
            return None
        if not _stem_taken(dest, stem, [image.suffix, *(c.suffix for c in captions)]):
            return stem
        n += 1
        stem = f"{image.stem}-{n}"


def _stem_taken(dest: Path, stem: str, suffixes: list[str]) -> bool:
    """A file we would write exists, or another image/caption with this stem would pair up with ours."""
    if not dest.is_dir():
        return False
    known = {*IMAGE_EXTENSIONS, *DEFAULT_CAPTION_EXTENSIONS, *suffixes}
    return any((dest / f"{stem}{ext}").exists() or (dest / f"{stem}{ext.upper()}").exists() for ext in known)


def _same_bytes(src: Path, dst: Path) -> bool:
    return dst.is_file() and dst.stat().st_size == src.stat().st_size and dst.read_bytes() == src.read_bytes()


def _copy(src: Path, dst: Path) -> Path:
    try:
        data = src.read_bytes()
    except OSError as exc:
        raise DatasetError(f"Cannot read '{src}': {exc.strerror or exc}. Check that the file is readable, "
                           "or leave it out of the import.") from exc
    try:
        atomic_write_bytes(dst, data)
    except OSError as exc:
        raise DatasetError(f"Cannot write '{dst}': {exc.strerror or exc}. Free disk space or choose another "
                           "dataset folder; files already copied are complete, the originals are untouched.") from exc
    return dst


def _check_source(source: Path, root: Path) -> None:
    if not source.is_dir():
        what = "does not exist" if not source.exists() else "is a file, not a folder"
        raise DatasetError(f"The folder to import '{source}' {what}. Give a folder of images, or select the files.")
    src, dst = source.resolve(), root.resolve()
    if src == dst or src in dst.parents or dst in src.parents:
        raise SettingsError(f"The dataset folder '{root}' and the folder to import '{source}' overlap. "
                            "Choose a dataset folder outside the originals (it is filled with copies).")


def _check_word(kind: str, word: str) -> str:
    word = " ".join((word or "").split())
    if _BAD_NAME_CHARS.search(word) or ".." in word:
        raise SettingsError(f"The {kind} {word!r} cannot be part of a folder name: remove / \\ < > : \" | ? * and '..'.")
    return word


def _unsupported_reason(path: Path) -> str:
    exts = " ".join(IMAGE_EXTENSIONS)
    return (f"'{path.suffix or path.name}' files are not used for training (images: {exts}; captions: .txt, "
            ".caption). Convert the image to PNG or JPEG to include it.")


def _nothing_to_import_message(files: Sequence[Path]) -> str:
    return (f"None of the {len(files)} selected files is an image ({' '.join(IMAGE_EXTENSIONS)}). "
            "Select image files (with their .txt captions if you have them).")


def _no_images_message(source: Path) -> str:
    return (f"No images ({' '.join(IMAGE_EXTENSIONS)}) directly in '{source}'. Give the folder that holds the "
            "photos, or a kohya folder whose subfolders are named '<repeats>_<name>'.")
