"""A Diffusion-DPO / PSO-style preference baseline for a few-step consistency model.

Diffusion-DPO (Wallace et al. 2024) turns preferences into a loss on the denoising error of the
trained model relative to a frozen reference; PSO (Miao et al. 2024) adapts it to
timestep-distilled models by using the model's own samples and its own inference timesteps.
Here, per prompt group of N_s own 2-step samples scored by the true reward, the best and the
worst form the pair (w, l) (skipped when their rewards differ by ≤ margin); both are noised to
the same timestep t ∈ {τ0, τ1} (the 2-step schedule) with the same ε, and the error is the
consistency function's distance to the clean sample:

    e_θ(z) = ‖f_θ(√ᾱ_t z + √(1−ᾱ_t) ε, t, c) − z‖²  (mean over dims)
    L = −log σ(−β/2 · [(e_θ(w) − e_ref(w)) − (e_θ(l) − e_ref(l))])

(Diffusion-DPO's `inside_term = -0.5 * beta * (model_diff - ref_diff)`). β is ours to choose:
the errors here are x0-space MSEs of unit-variance latents, not SD's ε-MSE, so Diffusion-DPO's
β = 5000 does not carry over; `dpo_beta` defaults to 1000 (docs/claims.md).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F

from lasro_diffusion.consistency import boundary_scalings

from .fewstep import FewStepModel


def dpo_loss(err_w: torch.Tensor, err_l: torch.Tensor, ref_w: torch.Tensor, ref_l: torch.Tensor,
             beta: float) -> torch.Tensor:
    """Diffusion-DPO's loss over (B,) per-pair errors of the model and of the reference."""
    inside = -0.5 * beta * ((err_w - ref_w) - (err_l - ref_l))  # (B,)
    return -F.logsigmoid(inside).mean()


def best_worst_pairs(rewards: torch.Tensor, n: int, margin: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor]:
    """(P·N,) rewards, N consecutive per prompt -> winner and loser indices (K,), one pair per
    prompt whose best and worst differ by more than `margin`."""
    r = rewards.reshape(-1, n)  # (P, N)
    best, worst = r.argmax(1), r.argmin(1)
    keep = (r.max(1).values - r.min(1).values) > margin
    base = torch.arange(r.shape[0]) * n
    return (base + best)[keep], (base + worst)[keep]


class ConsistencyError:
    """e(z) for the trained UNet and a frozen reference at the model's own inference timesteps."""

    def __init__(self, model: FewStepModel):
        self.model, self.ref = model, model.frozen_copy()
        sched = copy.copy(model.scheduler)
        sched.set_timesteps(2)
        self.timesteps = torch.tensor([int(t) for t in sched.timesteps])  # e.g. [999, 499]
        self.alphas = model.scheduler.alphas_cumprod.float()
        self.timestep_scaling = float(model.scheduler.config.get("timestep_scaling", 10.0))

    def f(self, unet, x: torch.Tensor, t: torch.Tensor, cond) -> torch.Tensor:
        """The consistency function at per-sample timesteps t (B,): c_skip·x + c_out·x̂0
        (LCMScheduler.step's `denoised`)."""
        m = self.model
        added = None if cond.text_embeds is None else {"text_embeds": cond.text_embeds, "time_ids": cond.time_ids}
        eps = unet(x, t.to(x.device), encoder_hidden_states=cond.encoder_hidden_states,
                   timestep_cond=m.w_embedding(x.shape[0]), added_cond_kwargs=added).sample
        a = self.alphas[t].to(x)[:, None, None, None]
        x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
        c_skip, c_out = (s.to(x)[:, None, None, None] for s in boundary_scalings(t, timestep_scaling=self.timestep_scaling))
        return c_skip * x + c_out * x0

    def errors(self, z: torch.Tensor, cond, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(e_θ, e_ref) (B,) for clean latents z (B, C, h, w); pairs must share t and ε, so the
        caller stacks [winners; losers] and draws for half the batch."""
        half = z.shape[0] // 2
        t = self.timesteps[torch.randint(len(self.timesteps), (half,), generator=generator)].repeat(2)
        eps = torch.randn(z[:half].shape, generator=generator).to(z).repeat(2, 1, 1, 1)
        a = self.alphas[t].to(z)[:, None, None, None]
        x_t = a.sqrt() * z + (1 - a).sqrt() * eps
        err = ((self.f(self.model.unet, x_t, t, cond) - z) ** 2).mean(dim=(1, 2, 3))
        with torch.no_grad():
            ref = ((self.f(self.ref, x_t, t, cond) - z) ** 2).mean(dim=(1, 2, 3))
        return err, ref
