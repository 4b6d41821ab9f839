"""The checker reward: does the image contain exactly the caption's (colour, shape) objects?

Non-differentiable and from pixels alone: every pixel is assigned to its nearest palette colour
(or the background), 4-connected blobs of one colour are found, and each blob's shape is
classified by comparing its mask with ideal circle / square / triangle masks fitted to the
blob's bounding box (best IoU). Comparing whole masks, instead of counting corners, keeps
squares with soft corners (the commonest generator failure) classified as squares: their IoU
with the ideal square (~0.9) stays above their IoU with the inscribed circle (~0.85).

score = (#caption objects found) / max(#caption objects, #blobs), so extra objects, merged
blobs (a merged blob has no clean shape) and missing objects all lower the score.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import torch

from toyworld.captions import COLORS, SHAPES, parse_caption
from toyworld.data import BACKGROUND, shape_mask

MIN_AREA = 8  # blobs smaller than this are anti-aliasing fringe or noise, not objects
MIN_IOU = 0.6  # below this a blob matches no shape (counts as an extra, unknown object)
MAX_ASPECT = 1.5  # shapes are drawn with square bounding boxes; long blobs are merges

_NAMES = ["background", *COLORS]
_PALETTE = np.array([BACKGROUND, *COLORS.values()], dtype=np.float32) / 255.0  # (7, 3)


def _components(mask: np.ndarray) -> list[np.ndarray]:
    """4-connected components of a (H, W) boolean mask, each as a (H, W) boolean mask."""
    h, w = mask.shape
    labels = np.zeros((h, w), dtype=np.int32)
    out = []
    for y0, x0 in zip(*np.nonzero(mask), strict=True):
        if labels[y0, x0]:
            continue
        n = len(out) + 1
        labels[y0, x0] = n
        stack = [(y0, x0)]
        while stack:
            y, x = stack.pop()
            for yy, xx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= yy < h and 0 <= xx < w and mask[yy, xx] and not labels[yy, xx]:
                    labels[yy, xx] = n
                    stack.append((yy, xx))
        out.append(labels == n)
    return out


def classify_shape(blob: np.ndarray) -> str | None:
    """Shape name of a blob mask by best IoU with ideal masks in its bounding box, or None."""
    ys, xs = np.nonzero(blob)
    crop = blob[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    h, w = crop.shape
    if max(h, w) > MAX_ASPECT * min(h, w):
        return None
    best, best_iou = None, MIN_IOU
    for shape in SHAPES:
        ideal = shape_mask(shape, max(h, w))
        ideal = np.asarray(  # stretch the square ideal mask to the (h, w) bounding box
            ideal[np.ix_(np.arange(h) * max(h, w) // h, np.arange(w) * max(h, w) // w)]
        )
        iou = (crop & ideal).sum() / max((crop | ideal).sum(), 1)
        if iou > best_iou:
            best, best_iou = shape, iou
    return best


def detect_objects(image: np.ndarray) -> list[tuple[str, str | None]]:
    """Blobs of one (3, H, W) float image in [0, 1] as (colour, shape or None)."""
    pix = image.reshape(3, -1).T  # (H*W, 3)
    dist = ((pix[:, None, :] - _PALETTE[None]) ** 2).sum(-1)  # (H*W, 7)
    cls = dist.argmin(1).reshape(image.shape[1:])  # (H, W), 0 = background
    found = []
    for k in range(1, len(_NAMES)):
        for blob in _components(cls == k):
            if blob.sum() >= MIN_AREA:
                found.append((_NAMES[k], classify_shape(blob)))
    return found


def score_one(image: np.ndarray, prompt: str) -> float:
    wanted = Counter(parse_caption(prompt))
    found = Counter(detect_objects(image))
    n = max(sum(wanted.values()), sum(found.values()))
    if n == 0:
        return 1.0
    return sum((wanted & found).values()) / n


def score(images: np.ndarray | torch.Tensor, prompts: list[str]) -> np.ndarray:
    """Checker reward in [0, 1] for images (B, 3, H, W) float in [0, 1]; returns float32 (B,)."""
    if isinstance(images, torch.Tensor):
        images = images.detach().float().cpu().numpy()
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W), got shape {images.shape}")
    if len(prompts) != len(images):
        raise ValueError(f"got {len(images)} images but {len(prompts)} prompts")
    images = np.clip(np.nan_to_num(images), 0.0, 1.0)
    return np.array([score_one(im, p) for im, p in zip(images, prompts, strict=True)], np.float32)
