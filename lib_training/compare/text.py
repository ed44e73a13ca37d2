"""Text on pictures with PIL's default font: measuring, wrapping into a box, drawing.

Pillow < 10.1 has only a bitmap default font that encodes text as Latin-1, and the scalable default
of later versions has no glyphs beyond it either: other characters (Serbian "š", Latvian "ā", ...)
are drawn without their accents, or as "?", instead of failing or showing empty boxes.
"""

from __future__ import annotations

import unicodedata
from functools import lru_cache

from PIL import Image, ImageDraw, ImageFont

BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)
PAD = 4


@lru_cache(maxsize=1)
def default_font() -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=12)  # Pillow >= 10.1: scalable, a little larger than 10
    except TypeError:
        return ImageFont.load_default()


def printable(text: str, font=None) -> str:
    out = []
    for char in text:
        try:
            char.encode("latin-1")
            out.append(char)
        except UnicodeEncodeError:
            base = unicodedata.normalize("NFKD", char).encode("latin-1", "ignore").decode("latin-1")
            base = "".join(c for c in base if not unicodedata.combining(c))
            out.append(base or "?")
    return "".join(out)


def text_width(text: str) -> int:
    font = default_font()
    box = font.getbbox(printable(text, font))
    return int(box[2] - box[0]) if text else 0


def line_height() -> int:
    box = default_font().getbbox("Agjy|")
    return int(box[3] - min(box[1], 0)) + 3


def wrap(text: str, width: int, max_lines: int | None = None) -> list[str]:
    """Greedy word wrap to `width` pixels; words longer than a line are split; '...' marks a cut."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        line = ""
        for word in paragraph.split(" "):
            candidate = f"{line} {word}" if line else word
            if text_width(candidate) <= width:
                line = candidate
                continue
            if line:
                lines.append(line)
            while text_width(word) > width and len(word) > 1:
                cut = max(1, _fit(word, width))
                lines.append(word[:cut])
                word = word[cut:]
            line = word
        lines.append(line)
    if max_lines is not None and len(lines) > max_lines:
        lines = lines[:max_lines]
        last = lines[-1]
        while last and text_width(last + "...") > width:
            last = last[:-1]
        lines[-1] = last + "..."
    return lines


def draw_lines(draw: ImageDraw.ImageDraw, lines: list[str], box: tuple[int, int, int, int],
               align: str = "center", fill=INK) -> None:
    """Draw `lines` inside box (x0, y0, x1, y1): horizontally as `align` says, vertically centred."""
    x0, y0, x1, y1 = box
    height = line_height() * len(lines)
    y = y0 + max(0, (y1 - y0 - height) // 2)
    font = default_font()
    for line in lines:
        w = text_width(line)
        if align == "left":
            x = x0 + PAD
        elif align == "right":
            x = x1 - PAD - w
        else:
            x = x0 + max(0, (x1 - x0 - w) // 2)
        draw.text((x, y), printable(line, font), font=font, fill=fill)
        y += line_height()


def put_text(draw: ImageDraw.ImageDraw, xy: tuple[int, int], text: str, fill=INK) -> None:
    font = default_font()
    draw.text(xy, printable(text, font), font=font, fill=fill)


def text_block(text: str, width: int, max_lines: int = 4) -> tuple[list[str], int]:
    """Wrapped lines and the height of a strip holding them with padding."""
    lines = wrap(text, max(8, width - 2 * PAD), max_lines)
    return lines, len(lines) * line_height() + 2 * PAD


def label_image(text: str, width: int, max_lines: int = 4) -> Image.Image:
    lines, height = text_block(text, width, max_lines)
    image = Image.new("RGB", (width, height), BACKGROUND)
    draw_lines(ImageDraw.Draw(image), lines, (0, 0, width, height))
    return image


def _fit(word: str, width: int) -> int:
    low, high = 1, len(word)
    while low < high:
        mid = (low + high + 1) // 2
        if text_width(word[:mid]) <= width:
            low = mid
        else:
            high = mid - 1
    return low
