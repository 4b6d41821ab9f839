"""RLCM (Oertell et al. 2024, "RL for Consistency Models"), the policy-gradient baseline: DDPO's
PPO objective on a latent consistency model.

On a 2-step LCM the only stochastic transition is the renoising after the first step:
    z1 = f_θ(z_T, τ0, c)                       (deterministic)
    z_τ1 ~ N(√ᾱ_τ1 · z1, (1 − ᾱ_τ1) I)         (the policy step: LCMScheduler.step's noise)
    z2 = f_θ(z_τ1, τ1, c)                      (deterministic: the last step adds no noise)
so the policy's log-likelihood is that Gaussian's, and the gradient reaches θ only through the
first UNet call: the second step, which shapes the final image, is never credited. That is the
paper's "degenerate objective" argument, and this implementation makes no attempt to hide it.

Per iteration: P prompts × N_s noises are sampled with θ_old, the 2-step outputs are scored by
the true reward (P·N_s queries), advantages are normalised within each prompt's group, and
`ppo_inner_epochs` clipped-ratio steps are taken on the batch (ddpo-pytorch: pipeline_with_logprob,
ddim_step_with_logprob, train loop; RLCM's lcm_scheduler.py computes the same log-probability).
"""

from __future__ import annotations

import copy
import math

import torch

from .fewstep import FewStepModel


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor | float) -> torch.Tensor:
    """log N(x; mean, std² I) averaged over every dim but the batch (ddpo-pytorch's convention,
    which keeps the ratio of a 16k-dim SD latent, or our 256-dim toy one, in a sane range)."""
    std = torch.as_tensor(std, dtype=x.dtype, device=x.device)
    lp = -((x.detach() - mean) ** 2) / (2 * std**2) - torch.log(std) - 0.5 * math.log(2 * math.pi)
    return lp.mean(dim=tuple(range(1, x.ndim)))  # (B,)


def group_advantages(rewards: torch.Tensor, n: int, eps: float = 1e-4) -> torch.Tensor:
    """(P·N,) rewards, N consecutive per prompt -> per-prompt normalised advantages (P·N,)."""
    r = rewards.reshape(-1, n).float()  # (P, N)
    return ((r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True, unbiased=False) + eps)).reshape(-1)


def ppo_loss(logp: torch.Tensor, logp_old: torch.Tensor, adv: torch.Tensor, clip_range: float,
             adv_clip_max: float) -> tuple[torch.Tensor, dict[str, float]]:
    """DDPO's clipped surrogate: mean(max(−A·ratio, −A·clip(ratio, 1 ± ε)))."""
    adv = adv.clamp(-adv_clip_max, adv_clip_max)
    ratio = torch.exp(logp - logp_old)  # (B,)
    unclipped = -adv * ratio
    clipped = -adv * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = torch.maximum(unclipped, clipped).mean()
    info = {"approx_kl": float(0.5 * ((logp - logp_old) ** 2).mean()),
            "clipfrac": float(((ratio - 1.0).abs() > clip_range).float().mean())}
    return loss, info


class RLCMPolicy:
    """The toy LCM as a one-step Gaussian policy over z_τ1 (see the module docstring)."""

    def __init__(self, model: FewStepModel):
        self.model = model
        sched = copy.copy(model.scheduler)
        sched.set_timesteps(2)
        self.t0, self.t1 = (int(t) for t in sched.timesteps)
        a = float(model.scheduler.alphas_cumprod[self.t1])
        self.mean_scale, self.std = math.sqrt(a), math.sqrt(1.0 - a)  # √ᾱ_τ1, √(1 − ᾱ_τ1)

    def first_step(self, z_t: torch.Tensor, cond) -> torch.Tensor:
        """z1 = f_θ(z_T, τ0, c) with gradients (LCMScheduler.step's `denoised`)."""
        m = self.model
        sched = copy.copy(m.scheduler)
        sched.set_timesteps(2, device=m.device)
        eps = m.unet_call(m.unet, z_t, self.t0, cond, m.w_embedding(z_t.shape[0]))
        # the step's renoised output is discarded here; only `denoised` is the policy mean
        return sched.step(eps, self.t0, z_t, generator=torch.Generator().manual_seed(0)).denoised

    def log_prob(self, z_t: torch.Tensor, z_tau: torch.Tensor, cond) -> torch.Tensor:
        """log π_θ(z_τ1 | z_T, c), (B,)."""
        return gaussian_log_prob(z_tau, self.mean_scale * self.first_step(z_t, cond), self.std)
