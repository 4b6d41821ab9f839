"""A batch-friendly reward for the batching benchmark: a small ViT (the shape of CLIP-style
reward models such as an aesthetic predictor: patch embedding, transformer layers, a pooled
head), random weights, fixed seed. Many small ops per call make per-call overhead the cost
that batching removes. Loaded by the service as `--reward bench.rewards:ViTReward`."""

from __future__ import annotations

import torch
from torch import nn

from reward_service.rewards import Reward


class ViTReward(Reward):
    name = "vit"
    description = "Benchmark stand-in for a CLIP-style neural reward: a 6-layer ViT at 32x32, patch 4."
    input_size = (32, 32)

    def setup(self, device: str) -> None:
        torch.manual_seed(0)
        d = 128
        self.patch = nn.Conv2d(3, d, 4, 4)
        self.pos = (torch.randn(1, 64, d) * 0.02).to(device)  # a fixed buffer, on the model's device
        layer = nn.TransformerEncoderLayer(d, 4, 4 * d, dropout=0.0, batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, 6, enable_nested_tensor=False)
        self.head = nn.Linear(d, 1)
        for m in (self.patch, self.encoder, self.head):
            m.eval().to(device)
        self.device = device

    @torch.inference_mode()
    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        x = nn.functional.interpolate(images.to(self.device), size=self.input_size, mode="bilinear")
        tokens = self.patch(x).flatten(2).transpose(1, 2) + self.pos  # (B, 64, d)
        return self.head(self.encoder(tokens).mean(1)).squeeze(1).cpu()
