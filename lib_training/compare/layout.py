"""Draw a grid result as one labelled PNG.

Picture, top to bottom: a title (base model and every axis that has a single value), one label
strip per column axis (outermost first, each label spanning its block), a line with the row axis
titles, then the cells. Left of the cells, one label column per row axis; an outer label spans
the block of sub-rows it contains (by default: a block per LoRA file, one sub-row per prompt x
seed x sampler settings). Column axis titles sit in the top-left corner, beside their strip.
Cells are the generated images at the spec's size (or `cell_size`); missing ones are grey.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, PngImagePlugin

from .cache import save_png
from .grid import AXES, AXIS_TITLES, GridCell, GridSpec, LoraFile, format_weight
from .run import GridResult
from .text import BACKGROUND, INK, PAD, draw_lines, line_height, text_block, text_width, wrap

LABEL_FILL = (236, 236, 236)
MISSING_FILL = (200, 200, 200)
MARGIN = 8
GAP = 2
MAX_ROW_LABEL_WIDTH = 220
MIN_ROW_LABEL_WIDTH = 48


@dataclass(frozen=True)
class GridGeometry:
    """Where things are: row r, column c is `cell_box(r, c)`; the column label strips fill
    `labels_top`..`labels_bottom` above the cells; the row labels are left of `left`."""

    left: int
    top: int
    cell_width: int
    cell_height: int
    rows: int
    columns: int
    labels_top: int = 0
    labels_bottom: int = 0
    gap: int = GAP
    margin: int = MARGIN

    def cell_box(self, row: int, column: int) -> tuple[int, int, int, int]:
        x = self.left + column * (self.cell_width + self.gap)
        y = self.top + row * (self.cell_height + self.gap)
        return x, y, x + self.cell_width, y + self.cell_height


@dataclass(frozen=True)
class GridPicture:
    image: Image.Image
    geometry: GridGeometry


def axis_label(axis: str, value) -> str:
    if axis == "file":
        return value.display if isinstance(value, LoraFile) else str(value)
    if axis == "weight":
        return "0 (base model)" if value == 0 else format_weight(value)
    if axis == "cfg":
        return format_weight(value)
    return str(value)


def drawn_axes(spec: GridSpec) -> tuple[list[str], list[str]]:
    """(row axes, column axes) that have more than one value, in layout order."""
    values = spec.axis_values()
    return ([a for a in spec.layout.rows if len(values[a]) > 1],
            [a for a in spec.layout.columns if len(values[a]) > 1])


def cell_position(spec: GridSpec, cell: GridCell) -> tuple[int, int]:
    rows, columns = drawn_axes(spec)
    return _mixed_radix(spec, cell, rows), _mixed_radix(spec, cell, columns)


def draw_grid(result: GridResult, cell_size: tuple[int, int] | None = None) -> GridPicture:
    spec = result.spec
    values = spec.axis_values()
    row_axes, col_axes = drawn_axes(spec)
    cw, ch = cell_size or (spec.width, spec.height)
    n_rows = math.prod(len(values[a]) for a in row_axes)
    n_cols = math.prod(len(values[a]) for a in col_axes)
    cells_w = n_cols * (cw + GAP) - GAP
    cells_h = n_rows * (ch + GAP) - GAP

    row_widths = [_row_label_width(a, values[a]) for a in row_axes]
    corner_need = max([text_width(AXIS_TITLES[a]) + 2 * PAD for a in col_axes], default=0)
    if row_widths and sum(row_widths) < corner_need:
        row_widths[0] += corner_need - sum(row_widths)
    header_w = sum(row_widths) if row_widths else corner_need
    strips = [_column_strip(a, values[a], _span(values, col_axes, i) * (cw + GAP) - GAP)
              for i, a in enumerate(col_axes)]
    axis_line_h = line_height() + 2 * PAD if row_axes else 0
    width = MARGIN + header_w + cells_w + MARGIN
    title_lines = wrap(_title(spec, row_axes + col_axes), width - 2 * MARGIN, max_lines=6)
    title_h = len(title_lines) * line_height() + 2 * PAD
    left = MARGIN + header_w
    top = MARGIN + title_h + sum(h for _, h in strips) + axis_line_h
    height = top + cells_h + MARGIN

    image = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(image)
    draw_lines(draw, title_lines, (MARGIN, MARGIN, width - MARGIN, MARGIN + title_h), align="left")
    y = MARGIN + title_h
    for i, (axis, (labels, strip_h)) in enumerate(zip(col_axes, strips)):
        span = _span(values, col_axes, i)
        draw_lines(draw, [AXIS_TITLES[axis]], (MARGIN, y, left, y + strip_h), align="right")
        for block in range(n_cols // span):
            x0 = left + block * span * (cw + GAP)
            box = (x0, y, x0 + span * (cw + GAP) - GAP, y + strip_h - 1)
            draw.rectangle(box, fill=LABEL_FILL)
            draw_lines(draw, labels[block % len(values[axis])], box)
        y += strip_h
    x = MARGIN
    for i, (axis, w) in enumerate(zip(row_axes, row_widths)):
        draw_lines(draw, [AXIS_TITLES[axis]], (x, y, x + w, y + axis_line_h))
        span = _span(values, row_axes, i)
        block_h = span * (ch + GAP) - GAP
        max_lines = max(1, (block_h - 2 * PAD) // line_height())
        for block in range(n_rows // span):
            y0 = top + block * span * (ch + GAP)
            box = (x, y0, x + w - GAP, y0 + block_h)
            draw.rectangle(box, fill=LABEL_FILL)
            label = axis_label(axis, values[axis][block % len(values[axis])])
            draw_lines(draw, wrap(label, w - 2 * PAD, max_lines), box)
        x += w

    geometry = GridGeometry(left, top, cw, ch, n_rows, n_cols, MARGIN + title_h, top - axis_line_h)
    for cell in result.cells:
        row, col = cell_position(spec, cell)
        box = geometry.cell_box(row, col)
        cell_image = result.image(cell.request)
        if cell_image is None:
            draw.rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=MISSING_FILL)
            draw_lines(draw, ["not generated"], box, fill=INK)
            continue
        if cell_image.size != (cw, ch):
            cell_image = cell_image.resize((cw, ch), Image.LANCZOS)
        image.paste(cell_image, box[:2])
    return GridPicture(image, geometry)


def grid_infotext(result: GridResult) -> str:
    """A readable summary: the axes and the settings shared by every cell."""
    spec, values = result.spec, result.spec.axis_values()
    rows, cols = drawn_axes(spec)
    lines = ["LoRA Studio comparison grid",
             f"Rows: {', '.join(AXIS_TITLES[a] for a in rows) or '-'}; "
             f"columns: {', '.join(AXIS_TITLES[a] for a in cols) or '-'}"]
    hashes = {str(c.request.lora.path): c.request.lora_sha256 for c in result.cells if c.request.lora}
    for lora in spec.files:
        lines.append(f"LoRA file: {lora.display} = {lora.name}.safetensors, sha256 {hashes.get(str(lora.path), '-')}")
    for axis in AXES[1:]:
        lines.append(f"{AXIS_TITLES[axis]}: " + " | ".join(axis_label(axis, v) for v in values[axis]))
    if spec.negative_prompt:
        lines.append(f"Negative prompt: {spec.negative_prompt}")
    lines.append(f"Size: {spec.width}x{spec.height}, Model hash: {spec.base_model_hash}"
                 + (f", Model: {spec.base_model_name}" if spec.base_model_name else "")
                 + "".join(f", {k}: {v}" for k, v in spec.extra))
    if not result.complete:
        lines.append("Incomplete: generation was cancelled; grey cells were not generated.")
    return "\n".join(lines)


def save_grid(result: GridResult, path: Path, picture: GridPicture | None = None) -> Path:
    """The labelled grid as PNG (atomically): `parameters` holds the first cell's A1111 infotext
    (so PNG Info can send it to txt2img), `Description` the grid summary, `lora_studio_grid` the
    cells as JSON with their row/column."""
    picture = picture or draw_grid(result)
    info = PngImagePlugin.PngInfo()
    if result.cells:
        info.add_text("parameters", result.cells[0].request.infotext())
    info.add_text("Description", grid_infotext(result))
    cells = []
    for cell in result.cells:
        row, col = cell_position(result.spec, cell)
        cells.append({"row": row, "column": col, **cell.request.to_json()})
    info.add_text("lora_studio_grid", json.dumps({"cells": cells}, ensure_ascii=False))
    return save_png(Path(path), picture.image, info)


def _mixed_radix(spec: GridSpec, cell: GridCell, axes: list[str]) -> int:
    values = spec.axis_values()
    position = 0
    for axis in axes:
        position = position * len(values[axis]) + cell.at(axis)
    return position


def _span(values: dict, axes: list[str], i: int) -> int:
    """How many rows/columns one label of axes[i] covers: the product of the inner axes' sizes."""
    return math.prod(len(values[a]) for a in axes[i + 1:])


def _row_label_width(axis: str, axis_values: tuple) -> int:
    widest = max(text_width(axis_label(axis, v)) for v in axis_values) + 2 * PAD + GAP
    needed = max(widest, text_width(AXIS_TITLES[axis]) + 2 * PAD + GAP, MIN_ROW_LABEL_WIDTH)
    return min(needed, MAX_ROW_LABEL_WIDTH)


def _column_strip(axis: str, axis_values: tuple, span_width: int) -> tuple[list[list[str]], int]:
    blocks = [text_block(axis_label(axis, v), span_width) for v in axis_values]
    return [lines for lines, _ in blocks], max(h for _, h in blocks)


def _title(spec: GridSpec, drawn: list[str]) -> str:
    values = spec.axis_values()
    base = spec.base_model_name or spec.base_model_hash[:10]
    parts = [f"{AXIS_TITLES[a]}: {axis_label(a, values[a][0])}" for a in AXES if a not in drawn]
    parts.append(f"size: {spec.width}x{spec.height}")
    return f"LoRA comparison on {base}  |  " + "  |  ".join(parts)
