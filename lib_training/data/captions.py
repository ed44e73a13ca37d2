"""Per-sample caption augmentation with kohya's semantics.

Every random draw comes from the `random.Random` passed in, so a seeded run is reproducible and
the global `random` state (shared with the WebUI) is left alone.
"""

from __future__ import annotations

import random

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


def _check_rates(keep_tokens: int, dropout_rate: float, tag_dropout_rate: float, separator: str) -> None:
    if keep_tokens < 0:
        raise SettingsError(f"keep_tokens must be 0 or more, got {keep_tokens}.")
    for name, rate in (("caption dropout rate", dropout_rate), ("tag dropout rate", tag_dropout_rate)):
        if not 0.0 <= rate <= 1.0:
            raise SettingsError(f"The {name} must be between 0 and 1, got {rate}.")
    if not separator:
        raise SettingsError("The caption separator must not be empty; use ',' (kohya's default).")
