"""Image batches on the wire: validation of (B, 3, H, W) tensors and the JSON + base64 form.

What a request costs is known before any pixel is decoded: `plan_b64_images` reads only the PNG or
JPEG headers (sizes, format), so a caller can refuse a request by its decoded size (a 17 KB PNG can
be 48 MiB as float32) and reserve memory for it; `ImagePlan.decode` then writes every image
straight into one preallocated (B, 3, H, W) float32 array.
"""

from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import InvalidInput, MalformedBody, PayloadTooLarge

FORMATS = ("PNG", "JPEG")  # what the API documents; PIL would read dozens more
MiB = 1024 * 1024


def decoded_bytes(b: int, h: int, w: int) -> int:
    """Bytes of a float32 (B, 3, H, W) batch: what a request's images cost once decoded."""
    return b * 3 * h * w * 4


def check_decoded(b: int, h: int, w: int, max_decoded_bytes: int | None) -> None:
    if max_decoded_bytes is not None and decoded_bytes(b, h, w) > max_decoded_bytes:
        raise PayloadTooLarge(f"{b} images of {h}x{w} are {decoded_bytes(b, h, w) / MiB:.0f} MiB decoded "
                              f"(float32), over the limit of {max_decoded_bytes / MiB:.0f} MiB per request "
                              "(max_decoded_mb); send fewer or smaller images")


def validate_images(arr: np.ndarray, *, max_batch: int, max_side: int,
                    max_decoded_bytes: int | None = None) -> np.ndarray:
    """(B, 3, H, W) uint8 or float32 in [0, 1] -> float32 (B, 3, H, W) in [0, 1]."""
    check_images(arr, max_batch=max_batch, max_side=max_side, max_decoded_bytes=max_decoded_bytes)
    return to_float_images(arr)


def to_float_images(arr: np.ndarray) -> np.ndarray:
    """The pixel pass of `validate_images` (after `check_images`): uint8 -> float32 / 255; float32
    checked for NaN/Inf and [0, 1]."""
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if not np.isfinite(arr).all():
        raise InvalidInput("images contain NaN or Inf", code="non_finite")
    if arr.min() < 0.0 or arr.max() > 1.0:
        raise InvalidInput("float32 images must lie in [0, 1]", code="out_of_range")
    return arr


def check_images(arr: np.ndarray, *, max_batch: int, max_side: int, max_decoded_bytes: int | None = None) -> None:
    """The cheap checks (shape, dtype, limits) of `validate_images`, which read no pixel."""
    if arr.ndim != 4 or arr.shape[1] != 3:
        raise InvalidInput(f"images must have shape (B, 3, H, W), got {tuple(arr.shape)}",
                           code="invalid_shape")
    b, _, h, w = arr.shape
    if b == 0:
        raise InvalidInput("images is an empty batch", code="invalid_shape")
    check_limits(b, h, w, max_batch=max_batch, max_side=max_side)
    if arr.dtype not in (np.uint8, np.float32):
        raise InvalidInput(f"images must be uint8 or float32, got {arr.dtype}", code="invalid_dtype")
    check_decoded(b, h, w, max_decoded_bytes)


def check_limits(b: int, h: int, w: int, *, max_batch: int, max_side: int) -> None:
    if b > max_batch:
        raise PayloadTooLarge(f"batch of {b} images exceeds the limit of {max_batch}")
    if h > max_side or w > max_side or h < 1 or w < 1:
        raise PayloadTooLarge(f"image size {h}x{w} outside 1..{max_side} pixels per side")


@dataclass
class ImagePlan:
    """Base64 images whose headers have been read and checked; no pixel decoded yet."""

    raw: list[bytes]  # the encoded PNG/JPEG files
    height: int
    width: int

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.raw), 3, self.height, self.width)

    @property
    def decoded_bytes(self) -> int:
        return decoded_bytes(len(self.raw), self.height, self.width)

    @property
    def working_bytes(self) -> int:
        """Memory decoding needs: the float32 batch plus one image's uint8 copies in flight (PIL's
        decoded image and the array taken from it)."""
        return self.decoded_bytes + 2 * 3 * self.height * self.width

    def check(self, max_decoded_bytes: int | None) -> ImagePlan:
        check_decoded(len(self.raw), self.height, self.width, max_decoded_bytes)
        return self

    def decode(self) -> np.ndarray:
        """float32 (B, 3, H, W) in [0, 1]: one allocation, images decoded into it one at a time."""
        out = np.empty(self.shape, np.float32)
        for i, raw in enumerate(self.raw):
            try:
                with _open(raw) as im:
                    rgb = np.asarray(im if im.mode == "RGB" else im.convert("RGB"))  # (H, W, 3) uint8
            except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
                raise InvalidInput(f"images[{i}] could not be decoded as {' or '.join(FORMATS)}: {e}",
                                   code="invalid_image") from None
            if rgb.shape != (self.height, self.width, 3):
                raise InvalidInput(f"images[{i}] decoded to {rgb.shape[:2]}, its header said "
                                   f"{(self.height, self.width)}", code="invalid_image")
            out[i] = rgb.transpose(2, 0, 1)
            out[i] /= 255.0  # float32 / 255, exactly as (uint8 -> float32) / 255.0
        return out


def _open(raw: bytes) -> Image.Image:
    return Image.open(io.BytesIO(raw), formats=FORMATS)


def plan_b64_images(items: list, *, max_batch: int, max_side: int) -> ImagePlan:
    """Base64 PNG/JPEG strings (optionally data: URLs): decode the base64, read each header,
    check count, format, sides and that all sizes agree. No pixels are decoded."""
    _check_count(items, max_batch)
    raw = []
    for i, s in enumerate(items):
        if not isinstance(s, str):
            raise InvalidInput(f"images[{i}] must be a base64 string", code="invalid_image")
        if s.startswith("data:"):
            s = s.split(",", 1)[-1]
        try:
            raw.append(base64.b64decode(s, validate=True))
        except (binascii.Error, ValueError):
            raise MalformedBody(f"images[{i}] is not valid base64", code="invalid_image") from None
    return plan_raw_images(raw, max_batch=max_batch, max_side=max_side)


def plan_raw_images(items: list, *, max_batch: int, max_side: int) -> ImagePlan:
    """PNG/JPEG files as bytes (flow_grpo's pickled `images`): read each header, check count,
    format, sides and that all sizes agree. No pixels are decoded."""
    _check_count(items, max_batch)
    raw, size = [], None
    for i, data in enumerate(items):
        if not isinstance(data, bytes):
            raise InvalidInput(f"images[{i}] must be the bytes of a PNG or JPEG file", code="invalid_image")
        try:
            with _open(data) as im:  # reads the header only
                w, h = im.size
        except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
            raise InvalidInput(f"images[{i}] is not a {' or '.join(FORMATS)} image (the only formats accepted)",
                               code="invalid_image") from None
        check_limits(1, h, w, max_batch=1, max_side=max_side)
        if size is not None and (h, w) != size:
            raise InvalidInput("all images of one request must have the same size", code="invalid_shape")
        size = (h, w)
        raw.append(data)
    return ImagePlan(raw, *size)


def _check_count(items: list, max_batch: int) -> None:
    if not items:
        raise InvalidInput("images is an empty list", code="invalid_shape")
    if len(items) > max_batch:
        raise PayloadTooLarge(f"batch of {len(items)} images exceeds the limit of {max_batch}")


def decode_b64_images(items: list, *, max_batch: int, max_side: int,
                      max_decoded_bytes: int | None = None) -> np.ndarray:
    """Base64 PNG/JPEG strings (optionally data: URLs) -> float32 (B, 3, H, W) in [0, 1]."""
    return plan_b64_images(items, max_batch=max_batch, max_side=max_side).check(max_decoded_bytes).decode()


def to_uint8_hwc(images: np.ndarray) -> np.ndarray:
    """float (B, 3, H, W) in [0, 1] -> uint8 (B, H, W, 3), rounding as PIL/torchvision do."""
    return (np.clip(images, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8).transpose(0, 2, 3, 1)


def encode_png_b64(images: np.ndarray) -> list[str]:
    """float (B, 3, H, W) in [0, 1] or uint8 -> base64 PNG strings (lossless)."""
    return [base64.b64encode(f).decode() for f in encode_files(images, "PNG")]


def encode_files(images: np.ndarray, fmt: str = "PNG", **save: object) -> list[bytes]:
    """float (B, 3, H, W) in [0, 1] or uint8 -> one PNG or JPEG file per image (`save`: PIL's
    options, e.g. quality=75 for JPEG)."""
    arr = images if images.dtype == np.uint8 else to_uint8_hwc(images)
    if arr.shape[-1] != 3:
        arr = arr.transpose(0, 2, 3, 1)
    out = []
    for a in arr:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format=fmt, **save)
        out.append(buf.getvalue())
    return out
