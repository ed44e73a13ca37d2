"""A toy world the quality benchmark can score: one coloured shape on a light or dark background.

32x32 RGB images, rendered with PIL at 4x and downsampled (anti-aliased edges). Shapes
circle/square/triangle are *seen* (the base model is trained on them); star and cross are
*held out* (a LoRA must teach them). Captions drop attributes at random, so the base model
knows "a red circle", "a circle", "a red shape on a dark background" and "a shape".
Every shape is drawn *solid* in pre-training; the *outline* (hollow) look exists for the instance concept
("a sks circle" = one particular circle the base never draws) and for the judge that reads it.
Pure numpy/PIL and deterministic: the same seed always gives the same images and captions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SIZE = 32
_SUPER = 4  # supersampling factor

SEEN_SHAPES = ("circle", "square", "triangle")
HELD_OUT_SHAPES = ("star", "cross")
SHAPES = SEEN_SHAPES + HELD_OUT_SHAPES
COLOURS = ("red", "green", "blue", "yellow")
BACKGROUNDS = ("light", "dark")
FILLS = ("solid", "outline")  # the base only ever sees solid shapes
_HOLE = 0.6  # an outlined shape's hole: the shape shrunk to this share of its size, in the background colour

COLOUR_RGB = {"red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 70, 220), "yellow": (235, 210, 40)}
BACKGROUND_RGB = {"light": (225, 225, 225), "dark": (35, 35, 35)}


@dataclass(frozen=True)
class Scene:
    shape: str
    colour: str
    background: str
    cx: float  # centre, pixels
    cy: float
    radius: float  # pixels
    angle: float  # radians
    fill: str = "solid"  # one of FILLS


@dataclass(frozen=True)
class CaptionDrop:
    """Probabilities that a caption keeps each attribute."""

    keep_colour: float = 0.7
    keep_shape: float = 0.7
    keep_background: float = 0.5


def random_scene(rng: np.random.Generator, shapes: tuple[str, ...] = SEEN_SHAPES,
                 colours: tuple[str, ...] = COLOURS, backgrounds: tuple[str, ...] = BACKGROUNDS,
                 fills: tuple[str, ...] = ("solid",)) -> Scene:
    """A random scene. The fill is drawn from `rng` only when there is a choice, so that solid-only
    scenes (the base model's pre-training data) are the same as before fills existed."""
    scene = Scene(shape=str(rng.choice(shapes)), colour=str(rng.choice(colours)),
                  background=str(rng.choice(backgrounds)),
                  cx=SIZE / 2 + rng.uniform(-3, 3), cy=SIZE / 2 + rng.uniform(-3, 3),
                  radius=rng.uniform(8.0, 11.0), angle=rng.uniform(-0.25, 0.25), fill=fills[0])
    if len(fills) > 1:
        scene = Scene(**{**scene.__dict__, "fill": str(rng.choice(fills))})
    return scene


def _rotate(points: list[tuple[float, float]], angle: float) -> list[tuple[float, float]]:
    c, s = math.cos(angle), math.sin(angle)
    return [(x * c - y * s, x * s + y * c) for x, y in points]


def _outline(shape: str, r: float) -> list[tuple[float, float]] | None:
    """Polygon around the origin (None for the circle)."""
    if shape == "circle":
        return None
    if shape == "square":
        h = r * 0.8
        return [(-h, -h), (h, -h), (h, h), (-h, h)]
    if shape == "triangle":
        return [(r * math.cos(a), r * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
    if shape == "star":
        pts = []
        for i in range(10):
            rr = r if i % 2 == 0 else r * 0.42
            a = -math.pi / 2 + i * math.pi / 5
            pts.append((rr * math.cos(a), rr * math.sin(a)))
        return pts
    if shape == "cross":
        w = r * 0.33
        return [(-w, -r), (w, -r), (w, -w), (r, -w), (r, w), (w, w), (w, r), (-w, r), (-w, w), (-r, w),
                (-r, -w), (-w, -w)]
    raise ValueError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")


def render(scene: Scene) -> np.ndarray:
    """(32, 32, 3) uint8."""
    big = SIZE * _SUPER
    image = Image.new("RGB", (big, big), BACKGROUND_RGB[scene.background])
    draw = ImageDraw.Draw(image)
    cx, cy, r = scene.cx * _SUPER, scene.cy * _SUPER, scene.radius * _SUPER
    _draw_shape(draw, scene, cx, cy, r, COLOUR_RGB[scene.colour])
    if scene.fill == "outline":
        _draw_shape(draw, scene, cx, cy, r * _HOLE, BACKGROUND_RGB[scene.background])
    elif scene.fill != "solid":
        raise ValueError(f"unknown fill {scene.fill!r}; known: {', '.join(FILLS)}")
    return np.asarray(image.resize((SIZE, SIZE), Image.BOX), dtype=np.uint8)


def _draw_shape(draw: ImageDraw.ImageDraw, scene: Scene, cx: float, cy: float, r: float, rgb) -> None:
    outline = _outline(scene.shape, r)
    if outline is None:
        draw.ellipse([cx - r * 0.85, cy - r * 0.85, cx + r * 0.85, cy + r * 0.85], fill=rgb)
    else:
        draw.polygon([(cx + x, cy + y) for x, y in _rotate(outline, scene.angle)], fill=rgb)


def full_caption(scene: Scene) -> str:
    return f"a {scene.colour} {scene.shape} on a {scene.background} background"


def caption(scene: Scene, rng: np.random.Generator, drop: CaptionDrop = CaptionDrop()) -> str:
    """A caption that keeps each attribute with the probabilities in `drop`."""
    words = ["a"]
    if rng.random() < drop.keep_colour:
        words.append(scene.colour)
    words.append(scene.shape if rng.random() < drop.keep_shape else "shape")
    if rng.random() < drop.keep_background:
        words += ["on", "a", scene.background, "background"]
    return " ".join(words)


def sample_batch(rng: np.random.Generator, n: int, shapes: tuple[str, ...] = SEEN_SHAPES,
                 drop: CaptionDrop = CaptionDrop(),
                 fills: tuple[str, ...] = ("solid",)) -> tuple[np.ndarray, list[str], list[Scene]]:
    """(n, 32, 32, 3) uint8 images, their captions and scenes."""
    scenes = [random_scene(rng, shapes, fills=fills) for _ in range(n)]
    images = np.stack([render(s) for s in scenes])
    return images, [caption(s, rng, drop) for s in scenes], scenes


def to_unit(images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, 3) -> float32 (N, 3, H, W) in [-1, 1]."""
    return images.astype(np.float32).transpose(0, 3, 1, 2) / 127.5 - 1.0


def labels(scenes: list[Scene]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(shape, colour, background, fill) class indices."""
    return (np.array([SHAPES.index(s.shape) for s in scenes]), np.array([COLOURS.index(s.colour) for s in scenes]),
            np.array([BACKGROUNDS.index(s.background) for s in scenes]), np.array([FILLS.index(s.fill) for s in scenes]))
