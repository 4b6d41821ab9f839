"""The toy world's language: its vocabulary (colours, shapes), which objects and pairs exist,
the train / held-out split of pairs, and the caption grammar in both directions.

A caption names one or two (colour, shape) objects: "a red circle" or "a red circle and a blue
square". `caption_for` writes one, `parse_caption` reads one back. Everything else in the toy
world (drawing, the checker, the prompts the trainer uses) stands on this file.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator, Sequence

import numpy as np

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
P_SINGLE = 0.35  # fraction of training captions with one object

Obj = tuple[str, str]  # (colour, shape)

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

_OBJ_RE = re.compile(r"\b(" + "|".join(COLORS) + r")\s+(" + "|".join(SHAPES) + r")\b")


def caption_for(objects: Sequence[Sequence]) -> str:
    """'a red circle' or 'a red circle and a blue square' (objects are (colour, shape, ...))."""
    return " and ".join(f"a {o[0]} {o[1]}" for o in objects)


def parse_caption(prompt: str) -> list[Obj]:
    """'a red circle and a blue square' -> [('red', 'circle'), ('blue', 'square')]."""
    return [(m.group(1), m.group(2)) for m in _OBJ_RE.finditer(prompt.lower())]


def random_objects(rng: np.random.Generator, split: str) -> list[Obj]:
    """The objects of one random caption: a single object, or a pair from the split's pairs."""
    if rng.random() < P_SINGLE:
        return [ALL_OBJECTS[int(rng.integers(len(ALL_OBJECTS)))]]
    pairs = TRAIN_PAIRS if split == "train" else HELDOUT_PAIRS
    a, b = pairs[int(rng.integers(len(pairs)))]
    return [a, b] if rng.random() < 0.5 else [b, a]  # both caption orders occur in training


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
        yield caption_for(random_objects(rng, "train"))
