"""Tiny diffusers / transformers components of the toy world, built locally (nothing downloaded).

Shapes: images (B, 3, 32, 32) -> VAE latents (B, 4, 8, 8) (3 VAE blocks = scale 4);
prompts -> token ids (B, 16) -> text embeddings (B, 16, 64) for UNet cross-attention.
"""

from __future__ import annotations

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    LCMScheduler,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from lasro_diffusion.tokenizer import word_clip_tokenizer
from toyworld.captions import COLORS, SHAPES

MAX_TOKENS = 16  # "a yellow triangle and a white square" is 9 tokens with BOS/EOS
TEXT_DIM = 64
TIME_COND_PROJ_DIM = 64  # guidance-scale embedding width of the LCM student (w-conditioning)
WORDS = ["a", "an", "and", *COLORS, *SHAPES]

# Stable Diffusion's noise schedule (the one LCM-SSD-1B and LCM-SD use).
SCHEDULE = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    prediction_type="epsilon", clip_sample=False, set_alpha_to_one=False, steps_offset=1,
)


def build_tokenizer() -> CLIPTokenizer:
    """A CLIP byte-level BPE tokenizer with each caption word as one token (any text still
    tokenizes, byte by byte)."""
    return word_clip_tokenizer(WORDS, MAX_TOKENS)


def build_text_encoder(tokenizer: CLIPTokenizer) -> CLIPTextModel:
    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=TEXT_DIM, intermediate_size=4 * TEXT_DIM,
        num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=MAX_TOKENS,
        projection_dim=TEXT_DIM, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    return CLIPTextModel(config)


def build_vae() -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, sample_size=32,
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(32, 32, 64), layers_per_block=1, norm_num_groups=16,
    )


def build_unet(time_cond_proj_dim: int | None = None) -> UNet2DConditionModel:
    """Teacher UNet (time_cond_proj_dim=None) or LCM student (w-embedding via time_cond_proj)."""
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(48, 96, 96), norm_num_groups=16,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=TEXT_DIM, attention_head_dim=8, time_cond_proj_dim=time_cond_proj_dim,
    )


def student_from_teacher(teacher: UNet2DConditionModel) -> UNet2DConditionModel:
    """As in train_lcm_distill_sd_wds.py: same config plus time_cond_proj_dim, teacher weights
    copied (the new w-projection layer starts from its default init)."""
    student = build_unet(TIME_COND_PROJ_DIM)
    missing, unexpected = student.load_state_dict(teacher.state_dict(), strict=False)
    assert not unexpected and all("cond_proj" in k for k in missing), (missing, unexpected)
    return student


def ddpm_scheduler() -> DDPMScheduler:
    return DDPMScheduler(**{k: v for k, v in SCHEDULE.items() if k != "set_alpha_to_one"})


def ddim_scheduler() -> DDIMScheduler:
    return DDIMScheduler(**SCHEDULE)


def lcm_scheduler() -> LCMScheduler:
    return LCMScheduler(**SCHEDULE, original_inference_steps=50, timestep_scaling=10.0)


@torch.no_grad()
def encode_prompts(tokenizer: CLIPTokenizer, text_encoder: CLIPTextModel, prompts: list[str]) -> torch.Tensor:
    """(B, 16, 64) embeddings exactly as StableDiffusionPipeline.encode_prompt computes them."""
    ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt").input_ids
    return text_encoder(ids)[0]


def tokenize(tokenizer: CLIPTokenizer, prompts: list[str]) -> torch.Tensor:
    return tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length,
                     truncation=True, return_tensors="pt").input_ids


@torch.no_grad()
def fold_latent_stats(vae: AutoencoderKL, mean: torch.Tensor, std: float) -> None:
    """Centre the latents inside the VAE, because the stock pipelines apply only
    `scaling_factor` (not `shift_factor`) when decoding.

    quant_conv outputs (mean, logvar) channels; subtracting `mean` from the mean-part bias gives
    centred latents z' = z - m. post_quant_conv must then see z' + m:
    post_quant_conv(z' + m) = W z' + (W m + b), so its bias absorbs W m.
    """
    c = mean.numel()  # (4,)
    vae.quant_conv.bias[:c] -= mean
    w = vae.post_quant_conv.weight  # (4, 4, 1, 1)
    vae.post_quant_conv.bias += (w[:, :, 0, 0] @ mean)
    vae.register_to_config(scaling_factor=float(1.0 / std))
