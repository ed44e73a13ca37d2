"""Caption files of a dataset: find, read, write (atomically, UTF-8), prefix the trigger word, find/replace,
and the tag frequency table.

The caption of an image is the file training reads (folders.py): `<stem>.txt`, else
`<stem>.caption`; kohya trains on its first non-empty line. Edits keep any further lines, and
write back to the same file, re-encoded as UTF-8. Unless `include_reg=True`, only training images
are edited: class (regularisation) captions must not get the trigger word.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from ..errors import DatasetError, SettingsError
from ..fileio import atomic_write_text
from .folders import (DEFAULT_CAPTION_EXTENSIONS, DatasetSpec, ImageItem, _caption_files, _inside, _real, decode_text,
                      scan_dataset, tag_frequency)


@dataclass
class EditResult:
    changed: list[Path] = field(default_factory=list)  # caption files written
    unchanged: int = 0  # captions looked at and left as they were
    replacements: int = 0  # find/replace: occurrences replaced


@dataclass(frozen=True)
class TagCount:
    tag: str
    count: int  # images whose caption holds the tag (once per image, as ss_tag_frequency)


def scan_folder(folder: Path) -> DatasetSpec:
    """The dataset in a kohya project (`img/` + `reg/`), a training folder or a plain folder of images."""
    return scan_dataset(Path(folder))


def caption_files_by_image(spec: DatasetSpec) -> dict[Path, Path]:
    """Image -> the caption file training reads (first existing of .txt, .caption); images without one are absent."""
    result: dict[Path, Path] = {}
    for subset in spec.subsets:
        captions = _caption_files(subset.path, DEFAULT_CAPTION_EXTENSIONS)
        for item in subset.items:
            found = next((captions[(item.path.stem, ext)] for ext in DEFAULT_CAPTION_EXTENSIONS
                          if (item.path.stem, ext) in captions), None)
            if found is not None:
                result[item.path] = found
    return result


def caption_path(image: Path) -> Path:
    """Where the caption of `image` is (or goes): its existing caption file, else `<stem>.txt`."""
    image = Path(image)
    captions = _caption_files(image.parent, DEFAULT_CAPTION_EXTENSIONS)
    for ext in DEFAULT_CAPTION_EXTENSIONS:
        if (image.stem, ext) in captions:
            return captions[(image.stem, ext)]
    return image.with_suffix(".txt")


def read_caption_text(path: Path) -> str:
    """The whole text of a caption file, whatever its encoding; "" when it does not exist or is a link
    leaving its folder (nothing outside the dataset is read; saving writes a real file in its place)."""
    path = Path(path)
    if not path.exists() or (path.is_symlink() and not _inside(path, _real(path.parent))):
        return ""
    try:
        return decode_text(path.read_bytes()).replace("\x00", "")
    except OSError as exc:
        raise DatasetError(f"Cannot read the caption file '{path}': {exc.strerror or exc}. "
                           "Check that it is readable.") from exc


def write_caption(path: Path, text: str) -> Path:
    """Write a caption file atomically as UTF-8 (temp file + rename: never half-written)."""
    path = Path(path)
    if path.suffix.lower() not in DEFAULT_CAPTION_EXTENSIONS:
        raise SettingsError(f"'{path}' is not a caption file (.txt or .caption); refusing to overwrite it.")
    try:
        atomic_write_text(path, text.strip() + "\n")
    except OSError as exc:
        raise DatasetError(f"Cannot write the caption '{path}': {exc.strerror or exc}. Free disk space or "
                           "check permissions; the previous caption is unchanged.") from exc
    return path


def contains_word(caption: str, word: str) -> bool:
    """`word` (one or more words) is in the caption as whole words, ignoring case (CLIP lower-cases)."""
    words = word.split()
    if not words:
        return True
    pattern = r"(?<!\w)" + r"\s+".join(re.escape(w) for w in words) + r"(?!\w)"
    return re.search(pattern, caption, re.IGNORECASE) is not None


def add_prefix(caption: str, trigger: str, class_word: str = "") -> str:
    """`"sks cat, <caption>"`: the trigger and class words not already in the caption, as its first tag.

    A word already present anywhere (whole word, any case) is not added again, so running this twice
    changes nothing. The prefix is one comma-separated tag, which `keep_tokens=1` keeps in front.
    """
    missing = [w for w in (" ".join(trigger.split()), " ".join(class_word.split())) if w and not contains_word(caption, w)]
    caption = caption.strip()
    if not missing:
        return caption
    prefix = " ".join(missing)
    return f"{prefix}, {caption}" if caption else prefix


def prefix_captions(folder: Path, trigger: str, class_word: str = "", include_reg: bool = False,
                    create_missing: bool = True) -> EditResult:
    """Prefix the trigger (and class) word to every caption; images without a caption get one if `create_missing`."""
    if not trigger.strip() and not class_word.strip():
        raise SettingsError("Give a trigger word (or class word) to prefix.")
    spec = scan_folder(folder)
    files = caption_files_by_image(spec)
    result = EditResult()
    for item in _items(spec, include_reg):
        path = files.get(item.path)
        if path is None and not create_missing:
            result.unchanged += 1
            continue
        path = path or item.path.with_suffix(".txt")
        old = read_caption_text(path)
        new = _map_first_line(old, lambda line: add_prefix(line, trigger, class_word))
        _write_if_changed(path, old, new, result)
    return result


def find_replace(folder: Path, find: str, replace: str, regex: bool = False, ignore_case: bool = False,
                 tidy: bool = True, include_reg: bool = False) -> EditResult:
    """Replace text in every caption file; `regex` allows patterns and `\\1` in `replace`.

    With `tidy`, captions that changed lose doubled spaces and empty tags (", ,"), so removing a tag
    by replacing it with "" leaves a clean caption.
    """
    pattern = _compile(find, regex, ignore_case)
    literal = None if regex else replace
    spec = scan_folder(folder)
    result = EditResult()
    files = caption_files_by_image(spec)
    for item in _items(spec, include_reg):
        path = files.get(item.path)
        if path is None:
            continue
        old = read_caption_text(path)
        new, count = pattern.subn((lambda _m: literal) if literal is not None else replace, old)
        if count and tidy:
            new = "\n".join(tidy_caption(line) for line in new.splitlines())
        result.replacements += count
        _write_if_changed(path, old, new, result)
    return result


def tidy_caption(text: str) -> str:
    """Collapse whitespace, drop empty comma-separated tags and stray commas at either end."""
    if "," not in text:
        return " ".join(text.split())
    return ", ".join(t for t in (" ".join(tag.split()) for tag in text.split(",")) if t)


def tag_frequency_table(source: DatasetSpec | Path) -> list[TagCount]:
    """Tags over the whole dataset, most frequent first: the per-folder `tag_frequency` (kohya's
    ss_tag_frequency, lower-cased, once per image) summed over folders."""
    spec = source if isinstance(source, DatasetSpec) else scan_folder(Path(source))
    totals: Counter[str] = Counter()
    for counts in tag_frequency(spec).values():
        totals.update(counts)
    return [TagCount(tag, count) for tag, count in sorted(totals.items(), key=lambda kv: (-kv[1], kv[0]))]


def _items(spec: DatasetSpec, include_reg: bool) -> list[ImageItem]:
    return spec.train_items + (spec.reg_items if include_reg else [])


def _map_first_line(text: str, edit: Callable[[str], str]) -> str:
    """Apply `edit` to the first non-empty line (the one kohya trains on); other lines stay."""
    lines = text.strip().splitlines()
    for i, line in enumerate(lines):
        if line.strip():
            lines[i] = edit(line)
            return "\n".join(lines)
    return edit("")


def _write_if_changed(path: Path, old: str, new: str, result: EditResult) -> None:
    """Only edited captions are written (as UTF-8); an untouched file keeps its bytes."""
    if new.strip() == old.strip() and path.exists():
        result.unchanged += 1
        return
    write_caption(path, new)
    result.changed.append(path)


def _compile(find: str, regex: bool, ignore_case: bool) -> re.Pattern:
    if not find:
        raise SettingsError("The text to find is empty. Type the word or tag to replace.")
    flags = re.IGNORECASE if ignore_case else 0
    try:
        return re.compile(find if regex else re.escape(find), flags)
    except re.error as exc:
        raise SettingsError(f"{find!r} is not a valid regular expression ({exc}). Fix the pattern, or untick "
                            "'regular expression' to search for the text as typed.") from exc
