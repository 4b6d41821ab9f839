"""The few-step model being fine-tuned: load it, sample 1–2 steps with gradients, decode.

The sampler is the family's stock diffusers sampler, step for step (ARCHITECTURE.md point 8):
the same scheduler class and config as the pipeline, noise drawn as `prepare_latents` draws it
(`randn_tensor` × `init_noise_sigma`), the same UNet call, and `scheduler.step` with the same
generator, so a seed gives the pipeline's own latents (tests/integration/test_samplers.py):

    family            stock pipeline                                   scheduler, guidance
    SD-LCM, toy       LatentConsistencyModelPipeline                   LCMScheduler, w-embedding
    SDXL-LCM, SSD-1B  StableDiffusionXLPipeline                        LCMScheduler, w-embedding
    SDXL/SD-Turbo     StableDiffusionXLPipeline / StableDiffusionPipeline  EulerAncestral (trailing), none
    LCM-LoRA          base pipeline + load_lora_weights + fuse_lora    LCMScheduler.from_config(base), none

z1 and z2, what the surrogate's two heads score (docs/paper-deviations.md): z1 is the output of
the 1-step pipeline (from the first step), z2 the final output of the `steps`-step pipeline.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    EulerAncestralDiscreteScheduler,
    LCMScheduler,
    UNet2DConditionModel,
)
from diffusers.utils.torch_utils import randn_tensor

from lasro_diffusion.consistency import guidance_scale_embedding
from lasro_diffusion.loading import MODEL_LOAD_LOCK, component_config, read_pipeline_json
from lasro_diffusion.text import TextCond, TextEncoderBundle

LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]  # attention projections, as the LCM-LoRA scripts
Generator = torch.Generator | list[torch.Generator]  # one, or one per sample (as the pipelines take)


@dataclass
class Sample:
    z1: torch.Tensor  # (B, C, h, w) one-step output: what the 1-step pipeline returns
    z2: torch.Tensor  # (B, C, h, w) final output of the `steps`-step pipeline (steps=1: z1)
    inputs: list[torch.Tensor]  # the latents entering each step: [z_T, z_τ1]
    timesteps: list[torch.Tensor]  # the scheduler's timesteps, e.g. [999, 499]


def few_step_scheduler(base_model: str, lcm_lora: str | None = None):
    """The scheduler the family's stock pipeline samples with (its own class and config)."""
    if lcm_lora:  # LCM-LoRA's documented use: pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
        return LCMScheduler.from_pretrained(base_model, subfolder="scheduler")
    index = read_pipeline_json(base_model, "model_index.json") or {}
    name = (index.get("scheduler") or [None, None])[1]
    if name in (None, "LCMScheduler"):
        return LCMScheduler.from_pretrained(base_model, subfolder="scheduler")
    if name == "EulerAncestralDiscreteScheduler":  # SDXL-Turbo, SD-Turbo
        return EulerAncestralDiscreteScheduler.from_pretrained(base_model, subfolder="scheduler")
    raise ValueError(f"{base_model}: its scheduler is {name}, not a few-step sampler (LCMScheduler, or "
                     "EulerAncestralDiscreteScheduler as in SDXL-Turbo); for a base model pass --lcm-lora")


def lora_targets(state: dict[str, torch.Tensor]) -> set[str]:
    """Module paths a diffusers-format UNet LoRA state dict writes to ('unet.x.to_q.lora.down.weight' -> 'x.to_q')."""
    out = set()
    for k in state:
        name = k.removeprefix("unet.")
        for tag in (".lora.down", ".lora.up", ".lora_A", ".lora_B", ".lora_linear_layer", ".alpha"):
            if tag in name:
                out.add(name.split(tag)[0])
                break
    return out


def check_lora_fits(state: dict[str, torch.Tensor], unet: UNet2DConditionModel, source: str, base: str) -> None:
    """A clear error, naming the file, for a LoRA made for another base model."""
    modules = dict(unet.named_modules())
    missing = sorted(t for t in lora_targets(state) if t not in modules)
    if missing:
        raise ValueError(f"LoRA {source} does not fit the UNet of {base}: it has no layer {missing[0]} "
                         f"({len(missing)} layers missing). Is it a LoRA for another base model?")
    for k, v in state.items():
        if ".lora.down" in k or ".lora_A" in k:
            layer = modules[k.removeprefix("unet.").split(".lora")[0]]
            fan_in = getattr(layer, "in_features", getattr(layer, "in_channels", None))
            if fan_in is not None and v.shape[1] != fan_in:
                raise ValueError(f"LoRA {source} does not fit the UNet of {base}: {k} expects {v.shape[1]} inputs, "
                                 f"the layer has {fan_in}. Is it a LoRA for another base model?")


def check_pipeline_folder(base_model: str) -> None:
    """A local pipeline folder names each missing part (diffusers' own message names neither file
    nor component). Hub ids pass: from_pretrained fetches what they lack."""
    root = Path(base_model)
    if not root.is_dir():
        return
    index = read_pipeline_json(base_model, "model_index.json")
    if index is None:
        raise ValueError(f"{root / 'model_index.json'}: no such file; {root} is not a diffusers pipeline folder")
    for name, spec in index.items():
        if name.startswith("_") or not isinstance(spec, list) or spec[0] is None:
            continue
        folder = root / name
        if not folder.is_dir():
            raise ValueError(f"{folder}: no such folder, but model_index.json lists {name}")
        if name in ("unet", "vae", "text_encoder", "text_encoder_2") and not any(
                f.suffix in (".safetensors", ".bin") or f.name.endswith(".index.json") for f in folder.iterdir()):
            raise ValueError(f"{folder}: no weights (diffusion_pytorch_model.safetensors / model.safetensors)")


def load_unet(base_model: str, *, dtype: torch.dtype = torch.float32, lcm_lora: str | None = None,
              lora: str | None = None) -> UNet2DConditionModel:
    """The base UNet; LCM-LoRA fused in (pipe.load_lora_weights + fuse_lora + unload_lora_weights);
    an exported LaSRO LoRA loaded as adapter "default", unfused (as pipe.load_lora_weights leaves it)."""
    from diffusers import StableDiffusionXLPipeline

    check_pipeline_folder(base_model)
    unet = UNet2DConditionModel.from_pretrained(base_model, subfolder="unet", torch_dtype=dtype)
    if lcm_lora:
        # lora_state_dict reads diffusers, kohya and PEFT layouts from a folder, file or hub id
        state, alphas = StableDiffusionXLPipeline.lora_state_dict(lcm_lora)
        check_lora_fits(state, unet, lcm_lora, base_model)
        unet.load_lora_adapter(state, network_alphas=alphas, prefix="unet", adapter_name="lcm")
        unet.fuse_lora(lora_scale=1.0)
        unet.unload_lora()  # fused weights stay; the adapter layers go
    if lora:
        path = Path(lora)
        if not (path / "pytorch_lora_weights.safetensors").is_file() and not path.is_file():
            raise ValueError(f"LoRA {path / 'pytorch_lora_weights.safetensors'}: no such file")
        state, alphas = StableDiffusionXLPipeline.lora_state_dict(str(path))
        check_lora_fits(state, unet, str(path), base_model)
        unet.load_lora_adapter(state, network_alphas=alphas, prefix="unet", adapter_name="default")
    unet.requires_grad_(False)
    return unet


class FewStepModel:
    """UNet (trainable, optionally LoRA), frozen VAE and text encoders, the family's scheduler."""

    def __init__(self, base_model: str, *, device: str = "cpu", dtype: torch.dtype = torch.float32,
                 lora_rank: int = 0, guidance_scale: float | None = None, gradient_checkpointing: bool = False,
                 lcm_lora: str | None = None, lora: str | None = None):
        """`dtype` is the compute dtype of frozen parts (VAE, text encoders; the UNet's base weights
        under LoRA). Trainable weights stay float32; mixed precision comes from autocast. `lora`:
        an exported LoRA folder, loaded as an adapter for sampling (not trained further)."""
        if lora and lora_rank:
            raise ValueError("train a new LoRA (lora_rank) or sample an exported one (lora), not both")
        with MODEL_LOAD_LOCK:
            self._load(str(base_model), device, dtype, lora_rank, gradient_checkpointing, lcm_lora, lora)
        from .guidance import default_guidance

        self.guidance_scale = default_guidance(str(base_model), lcm_lora) if guidance_scale is None else guidance_scale
        if self.unet.config.time_cond_proj_dim is None and self.guidance_scale > 1:
            raise ValueError(f"guidance_scale {self.guidance_scale}: {base_model} has no guidance embedding, and the "
                             "trainer samples without classifier-free guidance; use 0 (SDXL-Turbo, LCM-LoRA)")

    def _load(self, base_model: str, device: str, dtype: torch.dtype, lora_rank: int, gradient_checkpointing: bool,
              lcm_lora: str | None, lora: str | None) -> None:
        self.base_model, self.lcm_lora, self.device, self.dtype = base_model, lcm_lora, torch.device(device), dtype
        check_pipeline_folder(base_model)
        self.scheduler = few_step_scheduler(base_model, lcm_lora)
        self.unet = load_unet(base_model, dtype=dtype if lora_rank > 0 or lora else torch.float32,
                              lcm_lora=lcm_lora, lora=lora).to(self.device)
        self.unet.requires_grad_(not lora)
        vae_dtype = torch.float32 if component_config(base_model, "force_upcast") else dtype  # SDXL VAE overflows in fp16
        self.vae = AutoencoderKL.from_pretrained(base_model, subfolder="vae", torch_dtype=vae_dtype).to(self.device).eval()
        self.vae.requires_grad_(False)
        self.text = TextEncoderBundle(base_model, device=device, dtype=dtype)
        self.lora_rank = lora_rank
        if lora_rank > 0:
            from peft import LoraConfig

            self.unet.requires_grad_(False)
            self.unet.add_adapter(LoraConfig(r=lora_rank, lora_alpha=lora_rank, init_lora_weights="gaussian",
                                             target_modules=LORA_TARGETS))
            for p in self.unet.parameters():  # LoRA weights train in float32 over a low-precision base
                if p.requires_grad:
                    p.data = p.data.float()
        if gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
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
        """The pipelines' get_guidance_scale_embedding of w = guidance_scale − 1 (LCM families)."""
        dim = self.unet.config.time_cond_proj_dim
        if dim is None:  # SDXL-Turbo, LCM-LoRA on a base: no guidance embedding
            return None
        w = torch.full((batch,), self.guidance_scale - 1.0)
        return guidance_scale_embedding(w, dim).to(self.device, self.dtype)

    def schedule(self, steps: int):
        """A fresh scheduler with `steps` timesteps (it keeps a step index: never share one)."""
        sched = copy.copy(self.scheduler)
        sched.set_timesteps(steps, device=self.device)
        return sched

    def noise(self, batch: int, generator: Generator, steps: int = 2) -> torch.Tensor:
        """z_T (B, C, h, w) as the pipelines' prepare_latents draws it (init_noise_sigma depends on steps)."""
        shape = (batch, self.latent_channels, self.latent_size, self.latent_size)
        z = randn_tensor(shape, generator=generator, device=self.device, dtype=self.dtype)
        return z * self.schedule(steps).init_noise_sigma

    def unet_call(self, unet: UNet2DConditionModel, x: torch.Tensor, t: torch.Tensor | int, cond: TextCond,
                  w_emb: torch.Tensor | None) -> torch.Tensor:
        added = None
        if cond.text_embeds is not None:  # SDXL family
            added = {"text_embeds": cond.text_embeds, "time_ids": cond.time_ids}
        return unet(x, t, encoder_hidden_states=cond.encoder_hidden_states, timestep_cond=w_emb,
                    added_cond_kwargs=added).sample

    def _clean(self, sched, out: tuple, x: torch.Tensor) -> torch.Tensor:
        """The step's one-step output: what the pipeline returns if the schedule ends at this step."""
        if isinstance(sched, EulerAncestralDiscreteScheduler):
            # EulerAncestralDiscreteScheduler.step with sigma_to = 0 (so sigma_up = sigma_down = 0),
            # op for op: prev = sample + (sample − x0)/σ · (0 − σ), computed in float32
            sigma, x32 = sched.sigmas[sched.step_index - 1], x.to(torch.float32)
            return (x32 + (x32 - out[1]) / sigma * (torch.zeros_like(sigma) - sigma)).to(out[0].dtype)
        return out[1]  # LCMScheduler.step: denoised = c_out·x0 + c_skip·x

    def sample(self, z_t: torch.Tensor, cond: TextCond, generator: Generator, *,
               unet: UNet2DConditionModel | None = None, steps: int = 2) -> Sample:
        """The stock pipeline's denoising loop, differentiable in θ (every step is plain tensor math).

        LCM: z1 = f_θ(z_T, τ0, c); z_τ1 = √ᾱ·z1 + √(1−ᾱ)·ε; z2 = f_θ(z_τ1, τ1, c).
        Euler ancestral (Turbo): x0 = x − σ·ε_θ(x/√(σ²+1)); x_next = x0 + σ_up·ε; the last step lands on x0.
        """
        unet = unet or self.unet
        sched = self.schedule(steps)
        w_emb = self.w_embedding(z_t.shape[0])
        x, z1, inputs = z_t, None, []
        for t in sched.timesteps:
            inputs.append(x)
            eps = self.unet_call(unet, sched.scale_model_input(x, t), t, cond, w_emb)
            out = sched.step(eps, t, x, generator=generator, return_dict=False)  # (prev_sample, x0 or denoised)
            z1 = self._clean(sched, out, x) if z1 is None else z1
            x = out[0]  # the last step's prev_sample is the pipeline's output (LCMScheduler: denoised)
        return Sample(z1, x, inputs, list(sched.timesteps))

    def step_output(self, unet: UNet2DConditionModel, x: torch.Tensor, i: int, steps: int, cond: TextCond,
                    w_emb: torch.Tensor | None) -> torch.Tensor:
        """Step i's one-step output from input x (z1 for i = 0, z2 for the last step), no noise drawn
        from the caller's generators: the anchor regulariser's f_θ0(x_i, t_i)."""
        sched = self.schedule(steps)
        sched.set_begin_index(i)
        t = sched.timesteps[i]
        eps = self.unet_call(unet, sched.scale_model_input(x, t), t, cond, w_emb)
        out = sched.step(eps, t, x, generator=torch.Generator().manual_seed(0), return_dict=False)
        return self._clean(sched, out, x)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, chunk: int = 16) -> torch.Tensor:
        """(B, C, h, w) latents -> (B, 3, H, W) float32 images in [0, 1] (chunked to bound memory)."""
        out = []
        for z in latents.split(chunk):
            img = self.vae.decode(z.to(self.vae.dtype) / self.vae.config.scaling_factor).sample
            out.append((img.float() / 2 + 0.5).clamp(0, 1).cpu())
        return torch.cat(out)
