"""The ReFL / DRaFT oracle's gradient source: the true reward's own gradient, no surrogate.

For a differentiable reward r (one the reward service serves at POST /grad), the gradient of
r(decode(z)) with respect to a latent z is the reward service's d r / d pixels, pulled back
through the VAE decoder here (a vector-Jacobian product). It replaces R_psi's dR/dz in the same
LaSRO loss, so `--grad-source true` differs from LaSRO in exactly one thing: where dR/dz comes
from. Every latent scored costs one true-reward query.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from reward_service.client import RewardClient

from .fewstep import FewStepModel
from .labeler import reward_spec


@dataclass
class TrueGrad:
    grad: torch.Tensor  # (B, C, h, w) d r(decode(z)) / d z
    scores: torch.Tensor  # (B,) true rewards of decode(z)
    version: str


def decode_with_grad(model: FewStepModel, z: torch.Tensor) -> torch.Tensor:
    """(B, C, h, w) latents -> (B, 3, H, W) images in [0, 1], differentiable (FewStepModel.decode
    is the no-grad twin)."""
    vae = model.vae
    img = vae.decode(z.to(vae.dtype) / vae.config.scaling_factor).sample
    return (img.float() / 2 + 0.5).clamp(0, 1)


def true_reward_grad(model: FewStepModel, rewards: RewardClient, reward: str, z: torch.Tensor,
                     prompts: list[str]) -> TrueGrad:
    """d r(decode(z)) / d z for detached latents z (B, C, h, w), one reward call for the batch."""
    leaf = z.detach().float().requires_grad_(True)
    with torch.enable_grad():
        images = decode_with_grad(model, leaf)  # (B, 3, H, W)
        res = rewards.grad(images.detach().cpu(), prompts, reward=reward_spec(reward))
        g_img = torch.from_numpy(np.asarray(res.grad, dtype=np.float32)).to(images.device)
        (g_z,) = torch.autograd.grad(images, leaf, grad_outputs=g_img)  # VJP through the decoder
    return TrueGrad(g_z.to(z.dtype), torch.from_numpy(np.asarray(res.scores, dtype=np.float32)), res.version)
