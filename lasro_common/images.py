"""Image batches on the wire: validation of (B, 3, H, W) tensors and the JSON + base64 form."""

from __future__ import annotations

import base64
import binascii
import io

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import InvalidInput, MalformedBody


def validate_images(arr: np.ndarray, *, max_batch: int, max_side: int) -> np.ndarray:
    """(B, 3, H, W) uint8 or float32 in [0, 1] -> float32 (B, 3, H, W) in [0, 1]."""
    if arr.ndim != 4 or arr.shape[1] != 3:
        raise InvalidInput(f"images must have shape (B, 3, H, W), got {tuple(arr.shape)}",
                           code="invalid_shape")
    b, _, h, w = arr.shape
    if b == 0:
        raise InvalidInput("images is an empty batch", code="invalid_shape")
    check_limits(b, h, w, max_batch=max_batch, max_side=max_side)
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if arr.dtype != np.float32:
        raise InvalidInput(f"images must be uint8 or float32, got {arr.dtype}", code="invalid_dtype")
    if not np.isfinite(arr).all():
        raise InvalidInput("images contain NaN or Inf", code="non_finite")
    if arr.min() < 0.0 or arr.max() > 1.0:
        raise InvalidInput("float32 images must lie in [0, 1]", code="out_of_range")
    return arr


def check_limits(b: int, h: int, w: int, *, max_batch: int, max_side: int) -> None:
    from .errors import PayloadTooLarge

    if b > max_batch:
        raise PayloadTooLarge(f"batch of {b} images exceeds the limit of {max_batch}")
    if h > max_side or w > max_side or h < 1 or w < 1:
        raise PayloadTooLarge(f"image size {h}x{w} outside 1..{max_side} pixels per side")


def decode_b64_images(items: list[str], *, max_batch: int, max_side: int) -> np.ndarray:
    """Base64 PNG/JPEG strings (optionally data: URLs) -> float32 (B, 3, H, W) in [0, 1]."""
    if not items:
        raise InvalidInput("images is an empty list", code="invalid_shape")
    if len(items) > max_batch:
        from .errors import PayloadTooLarge

        raise PayloadTooLarge(f"batch of {len(items)} images exceeds the limit of {max_batch}")
    out = []
    for i, s in enumerate(items):
        if not isinstance(s, str):
            raise InvalidInput(f"images[{i}] must be a base64 string", code="invalid_image")
        if s.startswith("data:"):
            s = s.split(",", 1)[-1]
        try:
            raw = base64.b64decode(s, validate=True)
            with Image.open(io.BytesIO(raw)) as im:
                # Check the declared size before decoding pixels: no decompression bombs.
                check_limits(1, im.height, im.width, max_batch=1, max_side=max_side)
                out.append(np.asarray(im.convert("RGB")))
        except (binascii.Error, ValueError):
            raise MalformedBody(f"images[{i}] is not valid base64", code="invalid_image") from None
        except (UnidentifiedImageError, OSError, Image.DecompressionBombError):
            raise InvalidInput(f"images[{i}] is not a decodable PNG or JPEG", code="invalid_image") from None
    if len({a.shape for a in out}) != 1:
        raise InvalidInput("all images of one request must have the same size", code="invalid_shape")
    return np.stack(out).transpose(0, 3, 1, 2).astype(np.float32) / 255.0


def to_uint8_hwc(images: np.ndarray) -> np.ndarray:
    """float (B, 3, H, W) in [0, 1] -> uint8 (B, H, W, 3), rounding as PIL/torchvision do."""
    return (np.clip(images, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8).transpose(0, 2, 3, 1)


def encode_png_b64(images: np.ndarray) -> list[str]:
    """float (B, 3, H, W) in [0, 1] or uint8 -> base64 PNG strings (lossless)."""
    arr = images if images.dtype == np.uint8 else to_uint8_hwc(images)
    if arr.shape[-1] != 3:
        arr = arr.transpose(0, 2, 3, 1)
    out = []
    for a in arr:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="PNG")
        out.append(base64.b64encode(buf.getvalue()).decode())
    return out
