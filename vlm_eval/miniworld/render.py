"""Drawing a scene: a muted textured background, the shapes, then pixel noise.

Backgrounds are desaturated and noisy so that colour is not a free signal of the background and a
small perturbation has texture to hide in; shapes are drawn with PIL and anti-aliased by drawing at
twice the size and downsampling.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

from vlm_eval.miniworld.scenes import IMAGE_SIZE, Obj, Scene

SUPERSAMPLE = 2


def render(scene: Scene) -> np.ndarray:
    """The scene as a (224, 224, 3) uint8 RGB array."""
    rng = np.random.default_rng(scene.background_seed)
    canvas = background(scene.background, rng) + rng.normal(0, 12, (IMAGE_SIZE, IMAGE_SIZE, 3))
    image = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8))
    for obj in scene.objects:
        image = _paint(image, obj)
    pixels = np.asarray(image, dtype=np.float64) + rng.normal(0, 6, (IMAGE_SIZE, IMAGE_SIZE, 3))
    return np.clip(np.rint(pixels), 0, 255).astype(np.uint8)


def background(kind: str, rng: np.random.Generator) -> np.ndarray:
    """A (224, 224, 3) float texture around a random grey-ish base colour."""
    base = rng.uniform(70, 190) + rng.normal(0, 18, 3)
    y, x = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE] / IMAGE_SIZE
    if kind == "blobs":  # smooth low-frequency colour noise
        coarse = rng.normal(0, 28, (5, 5, 3)).astype(np.float32)
        pattern = np.stack([_upsample(coarse[..., c]) for c in range(3)], axis=-1)
    elif kind == "stripes":
        angle, period = rng.uniform(0, math.pi), rng.uniform(0.06, 0.2)
        wave = np.sin(2 * math.pi * (x * math.cos(angle) + y * math.sin(angle)) / period)
        pattern = wave[..., None] * rng.uniform(10, 25) * np.ones(3)
    elif kind == "checker":
        cells = int(rng.integers(4, 12))
        board = ((np.floor(x * cells) + np.floor(y * cells)) % 2) * 2 - 1
        pattern = board[..., None] * rng.uniform(8, 20) * np.ones(3)
    else:  # gradient
        angle = rng.uniform(0, 2 * math.pi)
        ramp = (x - 0.5) * math.cos(angle) + (y - 0.5) * math.sin(angle)
        pattern = ramp[..., None] * rng.uniform(40, 90) * rng.uniform(0.6, 1.0, 3)
    return base + pattern


def _upsample(grid: np.ndarray) -> np.ndarray:
    return np.asarray(Image.fromarray(grid, mode="F").resize((IMAGE_SIZE, IMAGE_SIZE), Image.BICUBIC))


def outline(obj: Obj, scale: int = 1) -> list[tuple[float, float]] | None:
    """Polygon vertices of a shape (None for a circle), rotated by the object's angle."""
    cx, cy, r = obj.center[0] * scale, obj.center[1] * scale, obj.radius * scale
    if obj.shape == "circle":
        return None
    if obj.shape == "square":
        points = [(-1, -1), (1, -1), (1, 1), (-1, 1)]
        points = [(px * r * 0.82, py * r * 0.82) for px, py in points]  # corners well outside a circle's reach
    elif obj.shape == "triangle":
        points = [(r * math.cos(a), r * math.sin(a)) for a in (-math.pi / 2, math.pi / 6, 5 * math.pi / 6)]
        points = [(px, py + r * 0.15) for px, py in points]  # centre the triangle's bulk on the anchor
    else:  # cross: a plus sign with arms a third of the span wide
        w, s = r * 0.32, r * 0.9
        points = [(-w, -s), (w, -s), (w, -w), (s, -w), (s, w), (w, w), (w, s), (-w, s), (-w, w), (-s, w), (-s, -w), (-w, -w)]
    turn = math.radians(obj.angle)
    c, s_ = math.cos(turn), math.sin(turn)
    return [(cx + px * c - py * s_, cy + px * s_ + py * c) for px, py in points]


def _paint(image: Image.Image, obj: Obj) -> Image.Image:
    """Paint one object through an anti-aliased mask."""
    big = IMAGE_SIZE * SUPERSAMPLE
    mask = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(mask)
    polygon = outline(obj, SUPERSAMPLE)
    if polygon is None:
        cx, cy, r = (v * SUPERSAMPLE for v in (*obj.center, obj.radius * 0.85))
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    else:
        draw.polygon(polygon, fill=255)
    mask = mask.resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR)
    return Image.composite(Image.new("RGB", image.size, obj.rgb), image, mask)
