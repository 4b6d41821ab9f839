"""The few-step model being fine-tuned: load an LCM-family pipeline, sample two steps with
gradients, decode. Works for the SD1.5 family (toy world, LCM-Dreamshaper) and, through the
shared TextEncoderBundle, the SDXL family's text conditioning (pooled embeds + time ids)."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from diffusers import AutoencoderKL, LCMScheduler, UNet2DConditionModel

from lasro_diffusion.consistency import guidance_scale_embedding
from lasro_diffusion.loading import MODEL_LOAD_LOCK, component_config
from lasro_diffusion.text import TextCond, TextEncoderBundle


@dataclass
class Sample:
    z1: torch.Tensor  # (B, C, h, w) one-step output  f_θ(z_T, τ0, c)
    z2: torch.Tensor  # (B, C, h, w) two-step output  f_θ(z_τ1, τ1, c)
    inputs: list[torch.Tensor]  # the UNet input of each step: [z_T, z_τ1]
    timesteps: list[int]  # e.g. [999, 499]


class FewStepModel:
    """UNet (trainable, optionally LoRA), frozen VAE and text encoders, an LCMScheduler."""

    def __init__(self, base_model: str, *, device: str = "cpu", dtype: torch.dtype = torch.float32,
                 lora_rank: int = 0, guidance_scale: float = 8.0, gradient_checkpointing: bool = False,
                 lcm_lora: str | None = None):
        """`dtype` is the compute dtype of frozen parts (VAE, text encoders; the UNet's base weights
        under LoRA). Trainable weights stay float32; mixed precision comes from autocast."""
        with MODEL_LOAD_LOCK:
            self._load(base_model, device, dtype, lora_rank, guidance_scale, gradient_checkpointing, lcm_lora)

    def _load(self, base_model: str, device: str, dtype: torch.dtype, lora_rank: int, guidance_scale: float,
              gradient_checkpointing: bool, lcm_lora: str | None) -> None:
        self.base_model, self.device, self.dtype = base_model, torch.device(device), dtype
        unet_dtype = dtype if lora_rank > 0 else torch.float32
        self.unet = UNet2DConditionModel.from_pretrained(base_model, subfolder="unet", torch_dtype=unet_dtype)
        self.unet.to(self.device)
        if lcm_lora:  # LCM-LoRA on a base model: load the distillation LoRA and fuse it into the weights
            from diffusers import StableDiffusionXLPipeline

            # lora_state_dict reads diffusers, kohya and PEFT layouts from a folder, file or hub id
            state, alphas = StableDiffusionXLPipeline.lora_state_dict(lcm_lora)
            self.unet.load_lora_adapter(state, network_alphas=alphas, prefix="unet", adapter_name="lcm")
            self.unet.fuse_lora(lora_scale=1.0)
            self.unet.unload_lora()  # fused weights stay; the adapter layers go
            self.unet.requires_grad_(True)  # loading froze the base weights
        vae_dtype = torch.float32 if component_config(base_model, "force_upcast") else dtype  # SDXL VAE overflows in fp16
        self.vae = AutoencoderKL.from_pretrained(base_model, subfolder="vae", torch_dtype=vae_dtype).to(self.device).eval()
        self.vae.requires_grad_(False)
        self.text = TextEncoderBundle(base_model, device=device, dtype=dtype)
        self.scheduler = LCMScheduler.from_pretrained(base_model, subfolder="scheduler")
        self.lora_rank = lora_rank
        if lora_rank > 0:
            from peft import LoraConfig

            self.unet.requires_grad_(False)
            self.unet.add_adapter(LoraConfig(r=lora_rank, lora_alpha=lora_rank, init_lora_weights="gaussian",
                                             target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
            for p in self.unet.parameters():  # LoRA weights train in float32 over a low-precision base
                if p.requires_grad:
                    p.data = p.data.float()
        if gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
        self.guidance_scale = guidance_scale
        self.vae_scale = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.latent_channels = self.unet.config.in_channels
        self.latent_size = self.unet.config.sample_size

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.unet.parameters() if p.requires_grad]

    def frozen_copy(self) -> UNet2DConditionModel:
        """A frozen copy of the initial UNet, for the `anchor` regulariser under full fine-tuning
        (under LoRA it switches the adapters off instead: no copy)."""
        ref = copy.deepcopy(self.unet).eval()
        ref.requires_grad_(False)
        return ref

    def encode(self, prompts: list[str]) -> TextCond:
        return self.text.encode(prompts, latent_size=(self.latent_size, self.latent_size)).to(self.device, self.dtype)

    def w_embedding(self, batch: int) -> torch.Tensor | None:
        """LatentConsistencyModelPipeline.get_guidance_scale_embedding with w = guidance_scale - 1."""
        dim = self.unet.config.time_cond_proj_dim
        if dim is None:  # SDXL-Turbo and other models without a guidance embedding
            return None
        w = torch.full((batch,), self.guidance_scale - 1.0)
        return guidance_scale_embedding(w, dim).to(self.device, self.dtype)

    def noise(self, batch: int, generator: torch.Generator) -> torch.Tensor:
        shape = (batch, self.latent_channels, self.latent_size, self.latent_size)
        return torch.randn(shape, generator=generator).to(self.device, self.dtype)  # z_T (B, C, h, w)

    def unet_call(self, unet: UNet2DConditionModel, x: torch.Tensor, t: int, cond: TextCond,
                  w_emb: torch.Tensor | None) -> torch.Tensor:
        added = None
        if cond.text_embeds is not None:  # SDXL family
            added = {"text_embeds": cond.text_embeds, "time_ids": cond.time_ids}
        tt = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        return unet(x, tt, encoder_hidden_states=cond.encoder_hidden_states, timestep_cond=w_emb,
                    added_cond_kwargs=added).sample

    def sample(self, z_t: torch.Tensor, cond: TextCond, generator: torch.Generator, *,
               unet: UNet2DConditionModel | None = None, steps: int = 2) -> Sample:
        """Two-step LCM sampling, differentiable in θ (LCMScheduler.step is plain tensor math).

        z1 = f_θ(z_T, τ0, c); z_τ1 = √ᾱ·z1 + √(1−ᾱ)·ε; z2 = f_θ(z_τ1, τ1, c). With steps=1, z2 = z1.
        """
        unet = unet or self.unet
        sched = copy.copy(self.scheduler)  # the scheduler keeps a step index; never share one
        sched.set_timesteps(steps, device=self.device)
        ts = [int(t) for t in sched.timesteps]
        w_emb = self.w_embedding(z_t.shape[0])
        x, outs, inputs = z_t, [], []
        for t in ts:
            inputs.append(x)
            eps = self.unet_call(unet, x, t, cond, w_emb)
            # LCMScheduler.step: denoised = c_out·x0_pred + c_skip·x; prev = √ᾱ_prev·denoised + √(1−ᾱ_prev)·ε
            out = sched.step(eps, t, x, generator=generator, return_dict=True)
            outs.append(out.denoised)
            x = out.prev_sample
        return Sample(outs[0], outs[-1], inputs, ts)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, chunk: int = 16) -> torch.Tensor:
        """(B, C, h, w) latents -> (B, 3, H, W) float32 images in [0, 1] (chunked to bound memory)."""
        out = []
        for z in latents.split(chunk):
            img = self.vae.decode(z.to(self.vae.dtype) / self.vae.config.scaling_factor).sample
            out.append((img.float() / 2 + 0.5).clamp(0, 1).cpu())
        return torch.cat(out)
