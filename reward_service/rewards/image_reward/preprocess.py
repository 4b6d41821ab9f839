"""ImageReward's image preprocessing, twice: exactly as the package does it on PIL images, and
the same steps in differentiable torch for tensors in [0, 1].

The package (`ImageReward/ImageReward.py: _transform(224)`) runs torchvision's
`Resize(224, BICUBIC)` -> `CenterCrop(224)` -> RGB -> `ToTensor()` -> `Normalize(CLIP mean, std)`
on a PIL image. On PIL input torchvision resizes with PIL itself, so `pil_pixels` calls PIL with
torchvision's sizes and crop offsets and gets the same bytes without importing torchvision.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from lasro_common.images import to_uint8_hwc

SIZE = 224
# OpenAI CLIP's statistics, which ImageReward's `_transform` hard-codes.
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def resized_size(h: int, w: int, size: int = SIZE) -> tuple[int, int]:
    """torchvision `_compute_resized_output_size` for an int size: the short side becomes `size`,
    the long side int(size * long / short) (truncated, not rounded)."""
    short, long_ = (w, h) if w <= h else (h, w)
    new_short, new_long = size, int(size * long_ / short)
    return (new_long, new_short) if w <= h else (new_short, new_long)


def crop_offsets(h: int, w: int, size: int = SIZE) -> tuple[int, int]:
    """torchvision `center_crop`: top and left are int(round((side - size) / 2)) (banker's round)."""
    return int(round((h - size) / 2.0)), int(round((w - size) / 2.0))


def pil_pixels(images: torch.Tensor, size: int = SIZE) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> (B, 3, size, size) normalised, through uint8 PIL images exactly as
    the package preprocesses a PIL image. Float input is rounded to uint8 first (as saving a PNG
    would); uint8-valued input (k / 255) comes back to the same bytes."""
    mean = torch.tensor(MEAN).view(3, 1, 1)
    std = torch.tensor(STD).view(3, 1, 1)
    out = []
    for arr in to_uint8_hwc(images.detach().float().cpu().numpy()):
        img = Image.fromarray(np.ascontiguousarray(arr))
        h, w = arr.shape[:2]
        new_h, new_w = resized_size(h, w, size)
        if (new_h, new_w) != (h, w):  # torchvision returns the image untouched at the target size
            img = img.resize((new_w, new_h), Image.Resampling.BICUBIC)
        top, left = crop_offsets(new_h, new_w, size)
        img = img.crop((left, top, left + size, top + size))
        x = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1).float().div(255)
        out.append((x - mean) / std)  # torchvision Normalize: sub then div, as here
    return torch.stack(out)


class TorchPixels(nn.Module):
    """The differentiable equivalent for float tensors in [0, 1]: the same sizes and crop offsets,
    resampled with antialiased bicubic (`F.interpolate(..., antialias=True)`, PIL's a = -0.5
    filter), no uint8 rounding and no clamping in between. Identical to `pil_pixels` when the
    input is uint8-valued and already `size` on its short side with no resize needed."""

    def __init__(self, size: int = SIZE):
        super().__init__()
        self.size = size
        self.register_buffer("mean", torch.tensor(MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        h, w = images.shape[-2:]
        new_h, new_w = resized_size(h, w, self.size)
        if (new_h, new_w) != (h, w):
            images = F.interpolate(images, size=(new_h, new_w), mode="bicubic", align_corners=False,
                                   antialias=True)
        top, left = crop_offsets(new_h, new_w, self.size)
        images = images[..., top : top + self.size, left : left + self.size]
        return (images - self.mean) / self.std
