"""The toy world's rewards: the attribute-binding checker (toyworld/checker.py) and the toy CLIP
score (toyworld/clip.py), its differentiable counterpart."""

from __future__ import annotations

import torch

from .base import Reward


class ToyAttributeBinding(Reward):
    name = "toy_attribute_binding"
    description = ("Toy world: fraction of the caption's (colour, shape) objects drawn correctly, "
                   "from pixels alone; non-differentiable.")
    value_range = (0.0, 1.0)

    def setup(self, device: str) -> None:
        from toyworld import checker  # imported here: listing rewards stays cheap

        self._score = checker.score

    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return torch.as_tensor(self._score(images.numpy(), prompts), dtype=torch.float32)


class ToyClipScore(Reward):
    name = "toy_clip"
    description = ("Toy world: scale x cosine(image, caption) of the toy CLIP (a small conv image tower "
                   "trained contrastively against the toy text encoder); differentiable.")
    differentiable = True
    input_size = (32, 32)  # other sizes are resized (antialiased bilinear, differentiable)

    def __init__(self, model: str | None = None, scale: float = 1.0, batch_size: int = 64):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not scale > 0:
            raise ValueError(f"scale must be > 0 (it multiplies the cosine), got {scale}")
        self.model_path, self.scale, self.batch_size = model, float(scale), batch_size
        self.value_range = (-self.scale, self.scale)
        self.device = "cpu"

    def setup(self, device: str) -> None:
        from toyworld.clip import CLIP_DIR, ToyClip  # imported here: listing rewards stays cheap

        self.device = device
        self.model = ToyClip.from_pretrained(self.model_path or CLIP_DIR, device=device)

    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        # Chunks bound peak memory; torch.cat keeps the autograd graph for /grad.
        parts = [self.model.score(images[i : i + self.batch_size].to(self.device, torch.float32),
                                  prompts[i : i + self.batch_size])
                 for i in range(0, images.shape[0], self.batch_size)]
        return (self.scale * torch.cat(parts)).float().cpu()
