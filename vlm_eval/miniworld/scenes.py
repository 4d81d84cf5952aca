"""Scenes of the mini world: 1-3 coloured shapes in distinct regions of a textured background.

A scene is a pure function of (world seed, split, index), so any image can be regenerated alone, in
any order, by any process. Train scenes come in minimal pairs: every odd index repeats the scene
before it (same background, colours, sizes and places) with other shapes, so a contrastive batch
that holds both can only tell them apart by shape, the attribute a small ViT learns last.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

WORLD_SEED = 20261122
IMAGE_SIZE = 224

COLORS = {  # name -> RGB of the paint; each object gets a little jitter on top
    "red": (215, 40, 40),
    "green": (40, 170, 60),
    "blue": (45, 75, 220),
    "yellow": (235, 215, 45),
    "purple": (145, 55, 185),
    "orange": (240, 135, 30),
}
SHAPES = ("circle", "square", "triangle", "cross")
SIZES = {"small": (26, 32), "large": (38, 44)}  # circumradius in pixels: a small shape spans about two 32-px patches
REGIONS = {"left": (50, 112), "right": (174, 112), "top": (112, 50), "bottom": (112, 174), "center": (112, 112)}
BACKGROUNDS = ("blobs", "stripes", "checker", "gradient")
SPLIT_CODES = {"train": 1, "val": 2, "test": 3, "zeroshot": 4, "classes": 5}  # classes: zero-shot-style training images
JITTER = 6  # pixels of random offset around a region's anchor
GAP = 4  # minimum pixels between two objects' circumcircles


@dataclass(frozen=True)
class Obj:
    shape: str
    color: str
    size: str
    region: str
    center: tuple[int, int]  # (x, y) in pixels
    radius: int
    rgb: tuple[int, int, int]  # the paint after jitter
    angle: float  # small rotation in degrees, so shapes are not pixel-identical


@dataclass(frozen=True)
class Scene:
    objects: tuple[Obj, ...]
    background: str
    background_seed: int


def scene_rng(split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([WORLD_SEED, SPLIT_CODES[split], index])


def sample_scene(split: str, index: int) -> Scene:
    """The scene at `index` of `split` (train odd indices: the shape-swapped twin of index - 1)."""
    if split == "train" and index % 2 == 1:
        return shape_twin(sample_scene(split, index - 1), scene_rng(split, index))
    rng = scene_rng(split, index)
    if split in ("zeroshot", "classes"):  # one object of the index's class
        color, shape = zeroshot_class(index)
        return _scene_with(rng, [(shape, color)])
    n_objects = int(rng.integers(1, 4))
    picks = [(SHAPES[rng.integers(len(SHAPES))], list(COLORS)[rng.integers(len(COLORS))]) for _ in range(n_objects)]
    return _scene_with(rng, picks)


def zeroshot_classes() -> list[tuple[str, str]]:
    """(colour, shape) of every zero-shot class, in class-index order."""
    return [(color, shape) for color in COLORS for shape in SHAPES]


def zeroshot_class(index: int) -> tuple[str, str]:
    """(colour, shape) of zero-shot image `index`: the classes take turns, so every class is balanced."""
    classes = zeroshot_classes()
    return classes[index % len(classes)]


def shape_twin(scene: Scene, rng: np.random.Generator) -> Scene:
    """The same scene with new shapes, at least one of them different."""
    while True:
        objects = tuple(replace(o, shape=SHAPES[rng.integers(len(SHAPES))]) for o in scene.objects)
        if any(a.shape != b.shape for a, b in zip(objects, scene.objects)):
            return replace(scene, objects=objects)


def _scene_with(rng: np.random.Generator, picks: list[tuple[str, str]]) -> Scene:
    """Place the (shape, colour) picks in distinct regions without overlap; small sizes if crowded."""
    regions = [str(r) for r in rng.permutation(list(REGIONS))[: len(picks)]]
    sizes = [list(SIZES)[rng.integers(2)] for _ in picks]
    for attempt in range(50):
        objects = [_place(rng, shape, color, size, region) for (shape, color), size, region in zip(picks, sizes, regions)]
        if _separated(objects):
            break
        if attempt >= 10:  # crowded: shrink the largest object and retry
            big = [i for i, s in enumerate(sizes) if s == "large"]
            if big:
                sizes[big[0]] = "small"
    else:
        raise RuntimeError("could not place the objects of a scene")  # unreachable with these sizes
    return Scene(tuple(objects), BACKGROUNDS[rng.integers(len(BACKGROUNDS))], int(rng.integers(2**31)))


def _place(rng: np.random.Generator, shape: str, color: str, size: str, region: str) -> Obj:
    ax, ay = REGIONS[region]
    center = (ax + int(rng.integers(-JITTER, JITTER + 1)), ay + int(rng.integers(-JITTER, JITTER + 1)))
    low, high = SIZES[size]
    rgb = tuple(int(np.clip(c + rng.normal(0, 12), 0, 255)) for c in COLORS[color])
    return Obj(shape, color, size, region, center, int(rng.integers(low, high + 1)), rgb, float(rng.uniform(-12, 12)))


def _separated(objects: list[Obj]) -> bool:
    for i, a in enumerate(objects):
        for b in objects[i + 1 :]:
            if np.hypot(a.center[0] - b.center[0], a.center[1] - b.center[1]) < a.radius + b.radius + GAP:
                return False
    return True
