"""What a reward is: a class with `setup(device)` and `score(images, prompts) -> (B,)`.

Images are float32 in [0, 1], shape (B, 3, H, W), as a torch.Tensor on the CPU; prompts are B
strings. Heavy imports belong in `setup`, so listing rewards stays cheap. A reward that needs
per-sample metadata (GenEval-style: the objects, counts and colours a prompt asks for) declares
`score(images, prompts, metadata)`: it then gets B dicts, as the request's `metadata` sent them
({} for samples sent without).
"""

from __future__ import annotations

import inspect
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
                "value_range": [lo, hi], "version": self.version, "metadata": takes_metadata(self)}


def takes_metadata(reward: Reward) -> bool:
    """Whether `reward.score` takes per-sample `metadata` (a parameter of that name)."""
    try:
        return "metadata" in inspect.signature(reward.score).parameters
    except (TypeError, ValueError):
        return False
