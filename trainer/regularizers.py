"""The c·L term that keeps the fine-tuned model a good few-step model.

    lcm     the consistency-distillation loss against the teacher (lasro_diffusion/consistency.py, the same
            code that distilled the toy LCM), with an EMA target network, on data latents
    anchor  distance of z1, z2 to what the frozen initial model makes from the same inputs
            (data-free; with LoRA the initial model is the base with adapters off)
    none    no regulariser
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DConditionModel

from lasro_diffusion.consistency import ConsistencyDistillationLoss, update_ema

from .fewstep import FewStepModel, Sample

KINDS = ("lcm", "anchor", "none")


class NoRegularizer:
    def loss(self, sample: Sample, cond, generator: torch.Generator) -> torch.Tensor:
        return torch.zeros(())

    def after_step(self) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class AnchorRegularizer(NoRegularizer):
    def __init__(self, model: FewStepModel):
        # Under LoRA the initial model is the same UNet with its adapters switched off: no copy
        # (a full UNet's worth of memory on SDXL). Full fine-tuning needs the frozen copy.
        self.model, self.ref = model, (None if model.lora_rank > 0 else model.frozen_copy())

    @contextlib.contextmanager
    def initial_unet(self) -> Iterator[UNet2DConditionModel]:
        """The UNet of f_θ0."""
        if self.ref is not None:
            yield self.ref
            return
        unet = self.model.unet
        unet.disable_adapters()
        try:
            yield unet
        finally:
            unet.enable_adapters()

    def loss(self, sample: Sample, cond, generator: torch.Generator) -> torch.Tensor:
        """Σ over steps of ‖f_θ(x_i, t_i) − f_θ0(x_i, t_i)‖² on the very same step inputs x_i."""
        m, steps = self.model, len(sample.timesteps)
        w = m.w_embedding(sample.z1.shape[0])
        outs = [sample.z1, sample.z2][:steps]
        total = torch.zeros((), device=m.device)
        for i, (x, out) in enumerate(zip(sample.inputs, outs, strict=True)):
            with torch.no_grad(), self.initial_unet() as unet0:
                ref = m.step_output(unet0, x.detach(), i, steps, cond, w)  # the family's own step
            total = total + F.mse_loss(out, ref)
        return total


def toy_data_latents(model: FewStepModel, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, list[str]]:
    """(latents (B, C, h, w), captions) from the toy world's generator, VAE-encoded; drawn from
    `generator`, so a resumed run sees the same data as an unbroken one."""
    from toyworld.data import sample_batch

    rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator)))
    images, captions = sample_batch(batch, rng)
    x = torch.from_numpy(images).to(model.device, model.vae.dtype) * 2 - 1
    with torch.no_grad():
        z = model.vae.encode(x).latent_dist.sample(generator) * model.vae.config.scaling_factor
    return z.to(model.dtype), captions


class LCMRegularizer(NoRegularizer):
    def __init__(self, model: FewStepModel, teacher_model: str, *, batch: int, ema_decay: float = 0.95):
        teacher = UNet2DConditionModel.from_pretrained(teacher_model, subfolder="unet").to(model.device, model.dtype)
        teacher.requires_grad_(False).eval()
        sched = DDPMScheduler.from_pretrained(teacher_model, subfolder="scheduler")
        self.cd = ConsistencyDistillationLoss(teacher, sched)
        self.model, self.ema_decay = model, ema_decay
        self.target = copy.deepcopy(model.unet).eval()
        self.target.requires_grad_(False)
        self.batch = batch
        self.uncond = model.encode([""]).encoder_hidden_states

    def loss(self, sample: Sample, cond, generator: torch.Generator) -> torch.Tensor:
        latents, captions = toy_data_latents(self.model, self.batch, generator)
        emb = self.model.encode(captions).encoder_hidden_states
        return self.cd.loss(self.model.unet, self.target, latents, emb, self.uncond.expand_as(emb),
                            generator=generator)

    def after_step(self) -> None:
        update_ema(self.target, self.model.unet, self.ema_decay)

    def state_dict(self) -> dict:
        return {"target": self.target.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if "target" in state:
            self.target.load_state_dict(state["target"])


def build(kind: str, model: FewStepModel, *, teacher_model: str | None, batch: int):
    if kind == "lcm":
        if not teacher_model:
            raise ValueError("regularizer 'lcm' needs --teacher-model (a diffusers folder or hub id)")
        if model.text.is_sdxl or model.latent_size != 8:
            # L_lcm needs data latents of the model's own domain; only the toy world's generator is
            # wired in, and the distillation loss does not pass SDXL's added conditioning.
            raise ValueError("regularizer 'lcm' is implemented for the toy world only (its data and SD-family "
                             "conditioning); use --regularizer anchor for other models")
        return LCMRegularizer(model, teacher_model, batch=batch)
    if kind == "anchor":
        return AnchorRegularizer(model)
    if kind == "none":
        return NoRegularizer()
    raise ValueError(f"regularizer must be one of {KINDS}, got {kind!r}")
