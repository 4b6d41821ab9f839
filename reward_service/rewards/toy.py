"""The toy world's attribute-binding checker as a reward (see toyworld/checker.py)."""

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
