"""Procedural toy scenes: one or two coloured shapes on black, each with its caption.

Everything is deterministic from a seed. What a caption says (and which object pairs are held
out of training) is toyworld/captions.py; this file draws scenes for captions.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
from PIL import Image, ImageDraw

from toyworld.captions import COLORS, SHAPES, Obj, caption_for, parse_caption, random_objects

BACKGROUND: tuple[int, int, int] = (0, 0, 0)
IMAGE_SIZE = 32
SUPERSAMPLE = 4  # draw at 4x and box-downsample: anti-aliased edges like a real image
MIN_SIZE, MAX_SIZE_ONE, MAX_SIZE_TWO = 8, 15, 12  # object side length in pixels
GAP = 2  # minimum empty pixels between two objects' bounding boxes (no touching blobs)

# A placed object: (colour, shape, x0, y0, size) with (x0, y0) the top-left of its bounding box.
Placed = tuple[str, str, int, int, int]


def shape_mask(shape: str, size: int) -> np.ndarray:
    """Ideal (size, size) boolean mask at the final resolution, sampled at pixel centres."""
    u = (np.arange(size) + 0.5) / size
    x, y = np.meshgrid(u, u)
    if shape == "circle":
        return (x - 0.5) ** 2 + (y - 0.5) ** 2 <= 0.25
    if shape == "square":
        return np.ones((size, size), dtype=bool)
    if shape == "triangle":  # upright isosceles triangle, apex at top centre
        return np.abs(x - 0.5) <= y / 2
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


def draw_scene(objects: Sequence[Placed], rng: np.random.Generator | None = None) -> np.ndarray:
    """Render placed objects to a (32, 32, 3) uint8 image. `rng` is unused (kept for API)."""
    del rng
    k = SUPERSAMPLE
    img = Image.new("RGB", (IMAGE_SIZE * k, IMAGE_SIZE * k), BACKGROUND)
    draw = ImageDraw.Draw(img)
    for colour, shape, x0, y0, s in objects:
        box = (x0 * k, y0 * k, (x0 + s) * k - 1, (y0 + s) * k - 1)
        rgb = COLORS[colour]
        if shape == "circle":
            draw.ellipse(box, fill=rgb)
        elif shape == "square":
            draw.rectangle(box, fill=rgb)
        elif shape == "triangle":
            draw.polygon([((box[0] + box[2]) / 2, box[1]), (box[0], box[3]), (box[2], box[3])], fill=rgb)
        else:
            raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    img = img.resize((IMAGE_SIZE, IMAGE_SIZE), Image.Resampling.BOX)
    return np.asarray(img, dtype=np.uint8).copy()


def place_objects(objs: Sequence[Obj], rng: np.random.Generator) -> list[Placed]:
    """Random size and position for each object; two objects never touch (GAP pixels apart)."""
    max_size = MAX_SIZE_ONE if len(objs) == 1 else MAX_SIZE_TWO
    for _ in range(1000):
        placed: list[Placed] = []
        for colour, shape in objs:
            s = int(rng.integers(MIN_SIZE, max_size + 1))
            x0, y0 = (int(v) for v in rng.integers(1, IMAGE_SIZE - s, size=2))
            placed.append((colour, shape, x0, y0, s))
        if len(placed) < 2 or _apart(placed[0], placed[1]):
            return placed
    raise RuntimeError("could not place objects without overlap")  # pragma: no cover


def _apart(a: Placed, b: Placed) -> bool:
    return (
        a[2] + a[4] + GAP <= b[2] or b[2] + b[4] + GAP <= a[2]
        or a[3] + a[4] + GAP <= b[3] or b[3] + b[4] + GAP <= a[3]
    )


def sample_scenes(n: int, rng: np.random.Generator | int, split: str = "train") -> list[list[Placed]]:
    """n random placed scenes. split='train' uses training pairs, 'heldout' the held-out pairs."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    rng = np.random.default_rng(rng)
    return [place_objects(random_objects(rng, split), rng) for _ in range(n)]


def sample_batch(
    n: int, rng: np.random.Generator | int, split: str = "train"
) -> tuple[np.ndarray, list[str]]:
    """Images float32 (n, 3, 32, 32) in [0, 1] and their captions."""
    scenes = sample_scenes(n, rng, split)
    images = np.stack([draw_scene(s) for s in scenes]).astype(np.float32) / 255.0
    return images.transpose(0, 3, 1, 2).copy(), [caption_for(s) for s in scenes]


def scenes_for_captions(captions: Sequence[str], seed: int = 0) -> list[list[Placed]]:
    """Draw a random layout for each caption (used to measure the checker on dataset images)."""
    rng = np.random.default_rng(seed)
    return [place_objects(parse_caption(c), rng) for c in captions]


def train_batch_stream(batch_size: int, seed: int, start_step: int = 0) -> Iterator[tuple[np.ndarray, list[str]]]:
    """Endless stream of training batches; batch `step` depends only on (seed, step), so a
    resumed build sees exactly the batches an uninterrupted one would."""
    step = start_step
    while True:
        yield sample_batch(batch_size, np.random.default_rng([seed, step]), "train")
        step += 1
