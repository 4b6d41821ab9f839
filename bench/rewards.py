"""A batch-friendly reward for the batching benchmark: a small convolutional network (the shape
of a neural reward model such as an aesthetic predictor), random weights, fixed seed. Loaded by
the service as `--reward bench.rewards:ConvNetReward`."""

from __future__ import annotations

import torch
from torch import nn

from reward_service.rewards import Reward


class ConvNetReward(Reward):
    name = "convnet"
    description = "Benchmark stand-in for a neural reward model: a small CNN at 64x64."
    input_size = (64, 64)

    def setup(self, device: str) -> None:
        torch.manual_seed(0)
        self.net = nn.Sequential(
            nn.Conv2d(3, 32, 3, 2, 1), nn.SiLU(), nn.Conv2d(32, 64, 3, 2, 1), nn.SiLU(),
            nn.Conv2d(64, 128, 3, 2, 1), nn.SiLU(), nn.Conv2d(128, 128, 3, 2, 1), nn.SiLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 1)).eval().to(device)
        self.device = device

    @torch.inference_mode()
    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        x = nn.functional.interpolate(images.to(self.device), size=self.input_size, mode="bilinear")
        return self.net(x).squeeze(1).cpu()
