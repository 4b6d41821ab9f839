"""JPEG (in)compressibility, as DDPO defines them (kvablack/ddpo-pytorch `rewards.py`):
the size in kB of the image saved as JPEG at quality 95, negated for compressibility."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from lasro_common.images import to_uint8_hwc

from .base import Reward


def jpeg_size_kb(images: torch.Tensor) -> np.ndarray:
    out = []
    for a in to_uint8_hwc(images.numpy()):
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="JPEG", quality=95)
        out.append(buf.tell() / 1000.0)  # ddpo-pytorch divides by 1000
    return np.asarray(out, dtype=np.float32)


class JpegCompressibility(Reward):
    name = "jpeg_compressibility"
    description = "Minus the JPEG size in kB at quality 95 (DDPO); flat images score higher."
    value_range = (None, 0.0)

    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return torch.from_numpy(-jpeg_size_kb(images))


class JpegIncompressibility(Reward):
    name = "jpeg_incompressibility"
    description = "The JPEG size in kB at quality 95 (DDPO); detailed images score higher."
    value_range = (0.0, None)

    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return torch.from_numpy(jpeg_size_kb(images))
