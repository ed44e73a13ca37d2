"""Fidelity-vs-drift chart of a sweep, drawn with PIL only (the A1111 environment has no matplotlib).

One panel per method: x = seen-prompt accuracy (what the model still knows; drift moves points left),
y = concept fidelity. One line per learning rate (or per changed setting) through its step counts (labelled), the base
model as a black cross, the target corner shaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont

PANEL, MARGIN, LEGEND = 420, 56, 26
LINE_COLOURS = ((31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75))


@dataclass(frozen=True)
class Point:
    method: str
    label: str  # the line it belongs to, e.g. "lr 0.001" or "min_snr_gamma=0"
    lr: float
    steps: int
    fidelity: float
    seen_accuracy: float
    leakage: float
    pixel_change: float = 0.0


def _font(size: int) -> ImageFont.ImageFont:
    for name in ("DejaVuSans.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"):
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    return ImageFont.load_default()


def fidelity_vs_drift(points: Sequence[Point], base: tuple[float, float], path: Path,
                      target: tuple[float, float] = (0.9, 0.9), title: str = "") -> Path:
    """Writes the chart to `path`; `base` = (seen accuracy, fidelity) of the model without a LoRA."""
    methods = list(dict.fromkeys(p.method for p in points))
    labels = list(dict.fromkeys(p.label for p in points))
    small, normal = _font(12), _font(15)
    note = ("numbers = steps · dot size = class leakage · × = base model · "
            f"green = target (seen ≥ {target[0]:g}, fidelity ≥ {target[1]:g})")
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    legend_width = sum(40 + measure.textlength(label, font=normal) for label in labels)
    width = int(max(len(methods) * (PANEL + MARGIN) + MARGIN, 2 * MARGIN + legend_width,
                    2 * MARGIN + measure.textlength(note, font=small), 2 * MARGIN + measure.textlength(title, font=normal)))
    height = PANEL + 2 * MARGIN + LEGEND * 2 + 24
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    if title:
        draw.text((MARGIN, 8), title, fill="black", font=normal)
    top = MARGIN + 16
    for col, name in enumerate(methods):
        left = MARGIN + col * (PANEL + MARGIN)

        def xy(seen: float, fidelity: float) -> tuple[float, float]:
            return left + seen * PANEL, top + (1 - fidelity) * PANEL

        x0, y0 = xy(target[0], 1.0)
        draw.rectangle([x0, y0, left + PANEL, top + (1 - target[1]) * PANEL], fill=(220, 245, 220))
        draw.rectangle([left, top, left + PANEL, top + PANEL], outline="black")
        for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
            tx, ty = xy(tick, tick)
            draw.line([tx, top + PANEL, tx, top + PANEL + 4], fill="black")
            draw.text((tx - 10, top + PANEL + 6), f"{tick:g}", fill="black", font=small)
            draw.line([left - 4, ty, left, ty], fill="black")
            draw.text((left - 30, ty - 7), f"{tick:g}", fill="black", font=small)
        draw.text((left + PANEL / 2 - 30, top - 22), name, fill="black", font=normal)
        draw.text((left + PANEL / 2 - 110, top + PANEL + 22), "seen-prompt accuracy (drift: ←)", fill="black",
                  font=small)
        draw.text((left + 4, top + 4), "concept fidelity ↑", fill="black", font=small)
        bx, by = xy(*base)
        draw.line([bx - 6, by - 6, bx + 6, by + 6], fill="black", width=2)
        draw.line([bx - 6, by + 6, bx + 6, by - 6], fill="black", width=2)
        for k, label in enumerate(labels):
            colour = LINE_COLOURS[k % len(LINE_COLOURS)]
            line = sorted((p for p in points if p.method == name and p.label == label), key=lambda p: p.steps)
            coords = [xy(p.seen_accuracy, p.fidelity) for p in line]
            if len(coords) > 1:
                draw.line(coords, fill=colour, width=2)
            for p, (px, py) in zip(line, coords):
                r = 3 + 6 * p.leakage  # leakier = bigger dot
                draw.ellipse([px - r, py - r, px + r, py + r], fill=colour)
                draw.text((px + 5, py - 14), str(p.steps), fill=colour, font=small)
    legend_y = top + PANEL + 44
    x = MARGIN
    for k, label in enumerate(labels):
        colour = LINE_COLOURS[k % len(LINE_COLOURS)]
        draw.line([x, legend_y + 8, x + 24, legend_y + 8], fill=colour, width=3)
        draw.text((x + 30, legend_y), label, fill="black", font=normal)
        x += 40 + draw.textlength(label, font=normal)
    draw.text((MARGIN, legend_y + LEGEND), note, fill="black", font=small)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path
