"""Per-sample caption augmentation with kohya's semantics.

Every random draw comes from the `random.Random` passed in, so a seeded run is reproducible and
the global `random` state (shared with the WebUI) is left alone.
"""

from __future__ import annotations

import random
from typing import Callable, Sequence

from lib_training.errors import SettingsError


def process_caption(
    caption: str,
    rng: random.Random,
    shuffle: bool,
    keep_tokens: int,
    dropout_rate: float,
    tag_dropout_rate: float = 0.0,
    separator: str = ",",
) -> str:
    """Caption dropout, then (on the tags after the first `keep_tokens`) shuffle and tag dropout.

    - with probability `dropout_rate` the whole caption becomes "" (unconditional training);
    - the caption is split on `separator` and stripped; the first `keep_tokens` tags stay in place;
    - the other tags are shuffled when `shuffle`, then each is dropped with `tag_dropout_rate`;
    - the result is joined with ", " (as kohya does, whatever the separator).
    Without shuffle and tag dropout the caption is returned unchanged (only stripped), so plain
    sentences are never re-punctuated.
    """
    _check_rates(keep_tokens, dropout_rate, tag_dropout_rate, separator)
    # Same draw order as kohya: one draw for caption dropout, then shuffle, then one per tag.
    if dropout_rate > 0 and rng.random() < dropout_rate:
        return ""
    caption = caption.strip()
    if not shuffle and tag_dropout_rate <= 0:
        return caption
    tags = split_tags(caption, separator)
    fixed, flexible = tags[:keep_tokens], tags[keep_tokens:]
    if shuffle:
        rng.shuffle(flexible)
    if tag_dropout_rate > 0:
        flexible = [tag for tag in flexible if rng.random() >= tag_dropout_rate]
    return ", ".join(fixed + flexible)


def split_tags(caption: str, separator: str = ",") -> list[str]:
    """Stripped, non-empty tags of a caption ("a, , b" -> ["a", "b"])."""
    return [tag.strip() for tag in caption.split(separator) if tag.strip()]


def cap_caption(caption: str, count_tokens: Callable[[str], int], limit: int, separator: str = ",") -> str:
    """The longest run of whole leading tags (else words, else characters) within `limit` tokens.

    A1111's prompt wrapper encodes a prompt of any length in 75-token chunks, each a full text-encoder
    pass kept for the backward: a scraped caption with thousands of tags grows memory without bound.
    Cutting at a tag keeps what the caption means up to that point, as kohya's max_token_length does
    (which cuts mid-word). A caption within the limit is returned unchanged.
    """
    if count_tokens(caption) <= limit:
        return caption
    for cuts in (_cut_points(caption, separator), _cut_points(caption, " "), range(1, len(caption))):
        prefix = _longest_prefix(caption, cuts, count_tokens, limit)
        if prefix:
            return prefix
    return ""


def _cut_points(text: str, separator: str) -> list[int]:
    """Positions where a separator starts: text[:i] is a prefix of whole pieces."""
    return [i for i in range(1, len(text)) if text.startswith(separator, i)]


def _longest_prefix(text: str, cuts: Sequence[int], count_tokens: Callable[[str], int], limit: int) -> str:
    """Binary search over cut points: a longer prefix never has fewer tokens."""
    low, high, best = 0, len(cuts) - 1, ""
    while low <= high:
        middle = (low + high) // 2
        prefix = text[:cuts[middle]].strip()
        if count_tokens(prefix) <= limit:
            best, low = prefix, middle + 1
        else:
            high = middle - 1
    return best


def _check_rates(keep_tokens: int, dropout_rate: float, tag_dropout_rate: float, separator: str) -> None:
    if keep_tokens < 0:
        raise SettingsError(f"keep_tokens must be 0 or more, got {keep_tokens}.")
    for name, rate in (("caption dropout rate", dropout_rate), ("tag dropout rate", tag_dropout_rate)):
        if not 0.0 <= rate <= 1.0:
            raise SettingsError(f"The {name} must be between 0 and 1, got {rate}.")
    if not separator:
        raise SettingsError("The caption separator must not be empty; use ',' (kohya's default).")
