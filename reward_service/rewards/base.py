"""What a reward is: a class with `setup(device)` and `score(images, prompts) -> (B,)`.

Images are float32 in [0, 1], shape (B, 3, H, W), as a torch.Tensor on the CPU; prompts are B
strings. Heavy imports belong in `setup`, so listing rewards stays cheap.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import torch


class Reward(ABC):
    name: str = ""
    description: str = ""
    differentiable: bool = False  # True if `grad` gives d score / d pixels
    input_size: tuple[int, int] | None = None  # (H, W) the reward resizes to; None = any
    value_range: tuple[float | None, float | None] = (None, None)
    version: str = "1"  # bump when scores change for the same input

    def setup(self, device: str) -> None:  # noqa: B027 - optional hook
        """Load weights onto `device`. Called once, off the event loop, before serving."""

    @abstractmethod
    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """images (B, 3, H, W) float32 in [0, 1]; prompts B strings -> scores (B,) float32."""

    def info(self) -> dict[str, Any]:
        lo, hi = self.value_range
        return {"name": self.name, "description": self.description, "differentiable": self.differentiable,
                "input_size": list(self.input_size) if self.input_size else None,
                "value_range": [lo, hi], "version": self.version}
