"""Procedural toy scenes: one or two coloured shapes on black, each with its caption.

Everything is deterministic from a seed. Training draws from an endless stream; evaluation uses
a fixed list of captions (`heldout_captions`) that includes object pairs the training stream
never shows together, so attribute binding is measured on unseen combinations.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence

import numpy as np
from PIL import Image, ImageDraw

# Well-separated colours (pairwise RGB distance > 120) so the checker can segment by colour.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (40, 190, 60),
    "blue": (40, 70, 230),
    "yellow": (235, 215, 40),
    "purple": (160, 60, 210),
    "white": (235, 235, 235),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
BACKGROUND: tuple[int, int, int] = (0, 0, 0)
IMAGE_SIZE = 32
SUPERSAMPLE = 4  # draw at 4x and box-downsample: anti-aliased edges like a real image
MIN_SIZE, MAX_SIZE_ONE, MAX_SIZE_TWO = 8, 15, 12  # object side length in pixels
GAP = 2  # minimum empty pixels between two objects' bounding boxes (no touching blobs)
P_SINGLE = 0.35  # fraction of training scenes with one object

Obj = tuple[str, str]  # (colour, shape)
# A placed object: (colour, shape, x0, y0, size) with (x0, y0) the top-left of its bounding box.
Placed = tuple[str, str, int, int, int]

ALL_OBJECTS: list[Obj] = [(c, s) for c in COLORS for s in SHAPES]
# Unordered pairs of objects with different colours (same-colour pairs are never drawn: the
# checker segments by colour, and the caption would be ambiguous for merged blobs).
ALL_PAIRS: list[tuple[Obj, Obj]] = [
    (a, b) for a, b in itertools.combinations(ALL_OBJECTS, 2) if a[0] != b[0]
]
_pair_rng = np.random.default_rng(20241122)
_perm = _pair_rng.permutation(len(ALL_PAIRS))
HELDOUT_PAIRS: list[tuple[Obj, Obj]] = [ALL_PAIRS[i] for i in sorted(_perm[:15])]
TRAIN_PAIRS: list[tuple[Obj, Obj]] = [ALL_PAIRS[i] for i in sorted(_perm[15:])]
_SEEN_EVAL_PAIRS: list[tuple[Obj, Obj]] = [ALL_PAIRS[i] for i in sorted(_perm[15:30])]


def caption_for(objects: Sequence[Sequence]) -> str:
    """'a red circle' or 'a red circle and a blue square' (objects are (colour, shape, ...))."""
    return " and ".join(f"a {o[0]} {o[1]}" for o in objects)


def _shape_mask(shape: str, size: int) -> np.ndarray:
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


def _random_objects(rng: np.random.Generator, split: str) -> list[Obj]:
    if rng.random() < P_SINGLE:
        return [ALL_OBJECTS[int(rng.integers(len(ALL_OBJECTS)))]]
    pairs = TRAIN_PAIRS if split == "train" else HELDOUT_PAIRS
    a, b = pairs[int(rng.integers(len(pairs)))]
    return [a, b] if rng.random() < 0.5 else [b, a]  # both caption orders occur in training


def sample_scenes(n: int, rng: np.random.Generator | int, split: str = "train") -> list[list[Placed]]:
    """n random placed scenes. split='train' uses training pairs, 'heldout' the held-out pairs."""
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    rng = np.random.default_rng(rng)
    return [place_objects(_random_objects(rng, split), rng) for _ in range(n)]


def sample_batch(
    n: int, rng: np.random.Generator | int, split: str = "train"
) -> tuple[np.ndarray, list[str]]:
    """Images float32 (n, 3, 32, 32) in [0, 1] and their captions."""
    scenes = sample_scenes(n, rng, split)
    images = np.stack([draw_scene(s) for s in scenes]).astype(np.float32) / 255.0
    return images.transpose(0, 3, 1, 2).copy(), [caption_for(s) for s in scenes]


def scenes_for_captions(captions: Sequence[str], seed: int = 0) -> list[list[Placed]]:
    """Draw a random layout for each caption (used to measure the checker on dataset images)."""
    from toyworld.checker import parse_caption

    rng = np.random.default_rng(seed)
    return [place_objects(parse_caption(c), rng) for c in captions]


def heldout_captions() -> list[str]:
    """Fixed evaluation captions: 18 singles, 15 seen pairs, 15 pairs never seen in training."""
    singles = [caption_for([o]) for o in ALL_OBJECTS]
    seen = [caption_for(p) for p in _SEEN_EVAL_PAIRS]
    unseen = [caption_for(p) for p in HELDOUT_PAIRS]
    return singles + seen + unseen


def train_caption_stream(seed: int) -> Iterator[str]:
    """Endless deterministic stream of training captions."""
    rng = np.random.default_rng(seed)
    while True:
        yield caption_for(_random_objects(rng, "train"))


def train_batch_stream(batch_size: int, seed: int, start_step: int = 0) -> Iterator[tuple[np.ndarray, list[str]]]:
    """Endless stream of training batches; batch `step` depends only on (seed, step), so a
    resumed build sees exactly the batches an uninterrupted one would."""
    step = start_step
    while True:
        yield sample_batch(batch_size, np.random.default_rng([seed, step]), "train")
        step += 1
