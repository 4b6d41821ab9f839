"""Training data of the toy CLIP: training scenes, and for each scene two hard negatives drawn
at the same layout.

- a *binding* negative: a scene whose caption differs in binding only (colours swapped between
  the two objects, one colour or shape changed, an object dropped or added); its caption is a
  hard negative caption too;
- a *malformed* negative: the scene with one object drawn wrong in a way no caption describes
  (two colours in one object, split or blended; stretched to an aspect no toy shape has; an
  irregular blob; two shapes of one colour fused; a morph half-way between two shapes),
  so that "a red circle" needs a clean red circle, not a red-and-green lump. These are the
  failure modes of few-step generators; without them, gradient ascent on the score grew them.

Held-out pairs never appear, neither as scenes nor as negatives. Batch k depends on (seed, k).
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from toyworld import captions, data
from toyworld.captions import COLORS, SHAPES, Obj

TRAIN_PAIRS = {frozenset(p) for p in captions.TRAIN_PAIRS}
MALFORMATIONS = ("two_colour", "stretched", "blob", "fused", "morph")


def key(objs: list[Obj]) -> frozenset:
    """What a caption means, independent of word order."""
    return frozenset(objs)


def allowed(objs: list[Obj]) -> bool:
    """In the training universe: any single object, or a training pair (never a held-out pair)."""
    return len(objs) == 1 or (len(objs) == 2 and objs[0][0] != objs[1][0] and key(objs) in TRAIN_PAIRS)


def train_captions() -> list[str]:
    """Every caption the training stream can produce (both orders of each pair)."""
    singles = [captions.caption_for([o]) for o in captions.ALL_OBJECTS]
    pairs = [captions.caption_for(p) for a, b in captions.TRAIN_PAIRS for p in ([a, b], [b, a])]
    return singles + pairs


def hard_negatives(objs: list[Obj]) -> list[list[Obj]]:
    """Object lists that differ from `objs` in binding only (same or nearly the same words),
    restricted to the training universe. The binding swap comes first when it exists."""
    out: list[list[Obj]] = []
    if len(objs) == 2:
        (ca, sa), (cb, sb) = objs
        if sa != sb:
            out.append([(cb, sa), (ca, sb)])  # colours swapped: the same bag of words, wrong binding
        out += [[(c, sa), (cb, sb)] for c in COLORS if c not in (ca, cb)]
        out += [[(ca, sa), (c, sb)] for c in COLORS if c not in (ca, cb)]
        out += [[(ca, s), (cb, sb)] for s in SHAPES if s != sa] + [[(ca, sa), (cb, s)] for s in SHAPES if s != sb]
        out += [[objs[0]], [objs[1]]]  # an object missing from the caption (the image has an extra)
    else:
        ((c, s),) = objs
        out += [[(c2, s)] for c2 in COLORS if c2 != c] + [[(c, s2)] for s2 in SHAPES if s2 != s]
        out += [[(c, s), o] for o in captions.ALL_OBJECTS if o[0] != c]  # an extra object
    return [o for o in out if allowed(o)]


def binding_negative(scene: list[data.Placed], rng: np.random.Generator) -> list[data.Placed]:
    """The same layout with wrong binding (the swap half the time when there is one), an object
    dropped, or one added at a free place."""
    objs = [(p[0], p[1]) for p in scene]
    negs = hard_negatives(objs)
    swap = len(objs) == 2 and negs[0] == [(objs[1][0], objs[0][1]), (objs[0][0], objs[1][1])]
    neg = negs[0] if swap and rng.random() < 0.5 else negs[int(rng.integers(len(negs)))]
    if len(neg) == len(objs):  # attributes changed in place: a minimal pair
        return [(c, s, *p[2:]) for (c, s), p in zip(neg, scene, strict=True)]
    if len(neg) < len(objs):
        return [p for p in scene if (p[0], p[1]) == neg[0]]
    return data.place_objects(neg, rng)


def _shape(draw: ImageDraw.ImageDraw, shape: str, box: tuple[float, float, float, float], fill: int = 255) -> None:
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([((box[0] + box[2]) / 2, box[1]), (box[0], box[3]), (box[2], box[3])], fill=fill)


def draw_malformed(scene: list[data.Placed], rng: np.random.Generator) -> np.ndarray:
    """(32, 32, 3) uint8: `scene` with one object malformed (see the module docstring)."""
    k, size = data.SUPERSAMPLE, data.IMAGE_SIZE * data.SUPERSAMPLE
    kind, bad = MALFORMATIONS[int(rng.integers(len(MALFORMATIONS)))], int(rng.integers(len(scene)))
    canvas = Image.new("RGB", (size, size), data.BACKGROUND)
    for i, (colour, shape, x0, y0, s) in enumerate(scene):
        mask = Image.new("L", (size, size), 0)
        draw = ImageDraw.Draw(mask)
        box = [x0 * k, y0 * k, (x0 + s) * k - 1, (y0 + s) * k - 1]
        if i == bad and kind == "stretched":  # aspect 1.8-2.5: no toy shape is drawn like that
            axis, f = int(rng.integers(2)), rng.uniform(1.8, 2.5)
            long_ = (box[2 + axis] - box[axis]) * f
            box[axis] = min(box[axis], size - 1 - long_)  # keep it inside the image
            box[2 + axis] = box[axis] + long_
        if i == bad and kind == "blob":  # an irregular polygon around the object's centre
            cx, cy, r = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2, (box[2] - box[0]) / 2
            ang = np.sort(rng.uniform(0, 2 * np.pi, 7))
            rad = r * rng.uniform(0.35, 1.0, 7)
            draw.polygon([(cx + a * np.cos(t), cy + a * np.sin(t)) for t, a in zip(ang, rad, strict=True)], fill=255)
        elif i == bad and kind == "morph":  # half-way between its shape and another (a round-bottomed
            # triangle, a lumpy circle): blend blurred masks of both, threshold
            other = Image.new("L", (size, size), 0)
            _shape(draw, shape, tuple(box))
            _shape(ImageDraw.Draw(other), SHAPES[(SHAPES.index(shape) + 1 + int(rng.integers(2))) % 3], tuple(box))
            blur = ImageFilter.GaussianBlur(s * k / 5)
            t = rng.uniform(0.4, 0.7)
            soft = (1 - t) * np.asarray(mask.filter(blur), np.float32) + t * np.asarray(other.filter(blur), np.float32)
            mask = Image.fromarray(np.where(soft > 127, 255, 0).astype(np.uint8))
        else:
            _shape(draw, shape, tuple(box))
        if i == bad and kind == "fused":  # the shape and another one, overlapping, same colour
            off = [v * s * k * rng.choice([-1, 1]) for v in rng.uniform(0.4, 0.7, 2)]
            _shape(draw, SHAPES[(SHAPES.index(shape) + 1 + int(rng.integers(2))) % 3],
                   (box[0] + off[0], box[1] + off[1], box[2] + off[0], box[3] + off[1]))
        canvas.paste(COLORS[colour], mask=mask)
        if i == bad and kind == "two_colour":  # part of the object in another colour, split or blended
            others = [c for c in COLORS if c != colour]
            t, cx, cy = rng.uniform(0, 2 * np.pi), (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
            yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
            along = ((xx - cx) * np.cos(t) + (yy - cy) * np.sin(t)) / max(box[2] - box[0], 1)  # -0.5..0.5 across
            part = (along > 0).astype(np.float32) if rng.random() < 0.5 else np.clip(along + 0.5, 0, 1)
            part = Image.fromarray((part * np.asarray(mask, np.float32)).astype(np.uint8))
            canvas.paste(COLORS[others[int(rng.integers(len(others)))]], mask=part)
    return np.asarray(canvas.resize((data.IMAGE_SIZE,) * 2, Image.Resampling.BOX), dtype=np.uint8).copy()


def _to_float(images: list[np.ndarray]) -> np.ndarray:
    return np.stack(images).astype(np.float32).transpose(0, 3, 1, 2) / 255.0  # (n, 3, 32, 32) in [0, 1]


def draw_batch(n: int, seed: int, step: int) -> dict:
    """Batch `step`: n training scenes, their n binding negatives and n malformed negatives.
    Images float32 (n, 3, 32, 32) in [0, 1]; objects as [(colour, shape), ...] per image."""
    rng = np.random.default_rng([seed, step])
    scenes = data.sample_scenes(n, rng, "train")
    negs = [binding_negative(s, rng) for s in scenes]
    return {"images": _to_float([data.draw_scene(s) for s in scenes]),
            "objs": [[(p[0], p[1]) for p in s] for s in scenes],
            "neg_images": _to_float([data.draw_scene(s) for s in negs]),
            "neg_objs": [[(p[0], p[1]) for p in s] for s in negs],
            "malformed": _to_float([draw_malformed(s, rng) for s in scenes])}
