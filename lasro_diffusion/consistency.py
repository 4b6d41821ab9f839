"""Latent consistency distillation loss (LCM, Luo et al. 2023), written once.

Used twice: to distil the toy world's LCM student from its teacher, and as the regulariser
L_lcm in the LaSRO loss L = c·L_lcm − c1·S[R(z1)] − c2·S[R(z2)]. The semantics follow
diffusers' examples/consistency_distillation/train_lcm_distill_sd_wds.py:

1. pick a DDIM-solver timestep t_n+k (skipping k = T / N steps) and noise the latents to it;
2. student:  f_θ(x_{t_n+k}, t_n+k, c, w) = c_skip·x + c_out·x0_pred   (w = guidance embedding);
3. teacher, with classifier-free guidance w, takes one DDIM step x_{t_n+k} -> x_{t_n};
4. EMA target: f_θ⁻(x_{t_n}, t_n, c, w), no gradient;
5. loss = Huber (or L2) distance between 2 and 4.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from diffusers import DDPMScheduler, UNet2DConditionModel


# train_lcm_distill_sd_wds.py: scalings_for_boundary_conditions
# (= LCMScheduler.get_scalings_for_boundary_condition_discrete)
def boundary_scalings(
    timesteps: torch.Tensor, sigma_data: float = 0.5, timestep_scaling: float = 10.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """c_skip, c_out (B,) so that f(x, t=0) = x exactly (the consistency boundary condition)."""
    t = timestep_scaling * timesteps.float()
    c_skip = sigma_data**2 / (t**2 + sigma_data**2)
    c_out = t / (t**2 + sigma_data**2) ** 0.5
    return c_skip, c_out


# LatentConsistencyModelPipeline.get_guidance_scale_embedding (w is guidance_scale − 1)
def guidance_scale_embedding(w: torch.Tensor, embedding_dim: int) -> torch.Tensor:
    """Sinusoidal embedding of w (B,) -> (B, embedding_dim), fed to the UNet as timestep_cond."""
    w = w.float() * 1000.0
    half = embedding_dim // 2
    freqs = torch.exp(torch.arange(half, dtype=torch.float32) * -(math.log(10000.0) / (half - 1)))
    emb = w[:, None] * freqs[None, :]  # (B, half)
    emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=1)
    if embedding_dim % 2 == 1:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb


def _expand(x: torch.Tensor) -> torch.Tensor:
    return x[:, None, None, None]  # (B,) -> (B, 1, 1, 1), broadcast over (C, h, w)


class DDIMSolver:
    """train_lcm_distill_sd_wds.py: DDIMSolver. N solver timesteps [T/N − 1, 2T/N − 1, ..., T − 1]."""

    def __init__(self, alphas_cumprod: torch.Tensor, num_train_timesteps: int = 1000,
                 num_ddim_timesteps: int = 50) -> None:
        step_ratio = num_train_timesteps // num_ddim_timesteps
        self.ddim_timesteps = (torch.arange(1, num_ddim_timesteps + 1) * step_ratio).round().long() - 1
        self.alpha_cumprods = alphas_cumprod[self.ddim_timesteps]  # (N,)
        self.alpha_cumprods_prev = torch.cat([alphas_cumprod[:1], alphas_cumprod[self.ddim_timesteps[:-1]]])

    def ddim_step(self, pred_x0: torch.Tensor, pred_noise: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Deterministic DDIM (eta = 0) step to the previous solver timestep."""
        alpha_prev = _expand(self.alpha_cumprods_prev.to(pred_x0.device)[index])
        return alpha_prev.sqrt() * pred_x0 + (1.0 - alpha_prev).sqrt() * pred_noise


@torch.no_grad()
def update_ema(target: torch.nn.Module | Iterable[torch.nn.Parameter],
               online: torch.nn.Module | Iterable[torch.nn.Parameter], decay: float = 0.95) -> None:
    """target ← decay·target + (1 − decay)·online  (train_lcm_distill_sd_wds.py: update_ema)."""
    tp = target.parameters() if isinstance(target, torch.nn.Module) else target
    op = online.parameters() if isinstance(online, torch.nn.Module) else online
    for t, o in zip(tp, op, strict=True):
        t.mul_(decay).add_(o.detach(), alpha=1.0 - decay)


class ConsistencyDistillationLoss:
    """L_lcm: consistency distillation of a w-conditioned student from a CFG teacher."""

    def __init__(self, teacher_unet: UNet2DConditionModel, noise_scheduler: DDPMScheduler,
                 num_ddim_timesteps: int = 50, w_min: float = 1.0, w_max: float = 5.0,
                 loss_type: str = "huber", huber_c: float = 0.001, timestep_scaling: float = 10.0) -> None:
        if loss_type not in ("huber", "l2"):
            raise ValueError(f"loss_type must be 'huber' or 'l2', got {loss_type!r}")
        if noise_scheduler.config.prediction_type != "epsilon":
            raise ValueError("only epsilon-prediction teachers are supported")
        if not 0 <= w_min <= w_max:
            raise ValueError(f"need 0 <= w_min <= w_max, got {w_min}, {w_max}")
        self.teacher = teacher_unet.requires_grad_(False).eval()
        self.num_train_timesteps = noise_scheduler.config.num_train_timesteps
        alphas_cumprod = noise_scheduler.alphas_cumprod.float()
        self.alpha_schedule = alphas_cumprod.sqrt()  # (T,)  √ᾱ_t
        self.sigma_schedule = (1.0 - alphas_cumprod).sqrt()  # (T,)  √(1−ᾱ_t)
        self.solver = DDIMSolver(alphas_cumprod, self.num_train_timesteps, num_ddim_timesteps)
        self.skip = self.num_train_timesteps // num_ddim_timesteps  # k, "topk" in the script
        self.w_min, self.w_max = w_min, w_max
        self.loss_type, self.huber_c = loss_type, huber_c
        self.timestep_scaling = timestep_scaling

    def _pred_x0(self, eps: torch.Tensor, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        # train_lcm_distill_sd_wds.py: get_predicted_original_sample (epsilon): x0 = (x − σ ε) / α
        sig, alp = self.sigma_schedule.to(x.device)[t], self.alpha_schedule.to(x.device)[t]
        return (x - _expand(sig) * eps) / _expand(alp)

    def loss(self, student_unet: UNet2DConditionModel, target_unet: UNet2DConditionModel,
             latents: torch.Tensor, prompt_embeds: torch.Tensor, uncond_embeds: torch.Tensor,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """Scalar loss; gradients flow into `student_unet` only.

        latents (B, 4, h, w) are scaled clean latents (vae latents × scaling_factor);
        prompt_embeds / uncond_embeds (B, L, D) are text embeddings of the prompts and of "".
        """
        b, dev = latents.shape[0], latents.device
        # 1. solver index n, start t_{n+k} and target t_n timesteps (B,)
        index = torch.randint(0, len(self.solver.ddim_timesteps), (b,), generator=generator)
        start_t = self.solver.ddim_timesteps[index]
        t = (start_t - self.skip).clamp(min=0)
        c_skip_start, c_out_start = (_expand(s).to(dev) for s in boundary_scalings(start_t, timestep_scaling=self.timestep_scaling))
        c_skip, c_out = (_expand(s).to(dev) for s in boundary_scalings(t, timestep_scaling=self.timestep_scaling))
        noise = torch.randn(latents.shape, generator=generator).to(dev, latents.dtype)
        a, s = _expand(self.alpha_schedule[start_t]).to(dev), _expand(self.sigma_schedule[start_t]).to(dev)
        noisy = a * latents + s * noise  # DDPMScheduler.add_noise, (B, 4, h, w)
        # guidance scale w ~ U[w_min, w_max] (the script's convention: CFG scale = 1 + w)
        w = (self.w_max - self.w_min) * torch.rand(b, generator=generator) + self.w_min  # (B,)
        w_emb = guidance_scale_embedding(w, student_unet.config.time_cond_proj_dim).to(dev, latents.dtype)
        w = _expand(w).to(dev, latents.dtype)
        start_t, t = start_t.to(dev), t.to(dev)

        # 2. online student prediction at t_{n+k}
        eps = student_unet(noisy, start_t, timestep_cond=w_emb, encoder_hidden_states=prompt_embeds).sample
        model_pred = c_skip_start * noisy + c_out_start * self._pred_x0(eps, start_t, noisy)

        with torch.no_grad():
            # 3. teacher with CFG, one DDIM step t_{n+k} -> t_n
            eps_c = self.teacher(noisy, start_t, encoder_hidden_states=prompt_embeds).sample
            eps_u = self.teacher(noisy, start_t, encoder_hidden_states=uncond_embeds).sample
            x0_c, x0_u = self._pred_x0(eps_c, start_t, noisy), self._pred_x0(eps_u, start_t, noisy)
            pred_x0 = x0_c + w * (x0_c - x0_u)
            pred_noise = eps_c + w * (eps_c - eps_u)
            x_prev = self.solver.ddim_step(pred_x0, pred_noise, index.to(dev))
            # 4. EMA target network at t_n
            eps_t = target_unet(x_prev, t, timestep_cond=w_emb, encoder_hidden_states=prompt_embeds).sample
            target = c_skip * x_prev + c_out * self._pred_x0(eps_t, t, x_prev)

        # 5. distance
        if self.loss_type == "l2":
            return torch.nn.functional.mse_loss(model_pred.float(), target.float())
        diff2 = (model_pred.float() - target.float()) ** 2
        return torch.mean(torch.sqrt(diff2 + self.huber_c**2) - self.huber_c)
