"""Tiny random-initialised diffusers pipelines for tests (no hub downloads, ever).

Two builders, both saving a complete diffusers pipeline folder with ``save_pretrained`` so that
tests exercise exactly the same ``from_pretrained`` code path as real checkpoints:

- :func:`build_tiny_sd_pipeline`   — SD1.5 architecture (LCM-Dreamshaper family), loads as
  ``LatentConsistencyModelPipeline``; ``turbo=True``: the SD-Turbo layout (``StableDiffusionPipeline``,
  Euler-ancestral trailing scheduler, no guidance embedding).
- :func:`build_tiny_sdxl_pipeline` — SDXL architecture (LCM-SDXL / SSD-1B / SDXL-Turbo family),
  loads as ``StableDiffusionXLPipeline`` with an ``LCMScheduler``.

Sizes: latents are 4 x 8 x 8, the VAE has 2 blocks (vae_scale_factor 2, images 16 x 16) and the
UNet has 2 blocks (one down-sampling, so latent sides must be even). The CLIP tokenizer is built
from a word list by lasro_diffusion.tokenizer (the toy world's builder), so different prompts
really give different token ids.
Everything is deterministic: each component is created right after ``torch.manual_seed``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    LatentConsistencyModelPipeline,
    LCMScheduler,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from lasro_diffusion.tokenizer import word_clip_tokenizer

TOKENIZER_MAX_LENGTH = 16  # real CLIP uses 77; short sequences keep tests fast
LATENT_SIZE = 8  # unet sample_size (latent side)
SEED = 0

# Words that get whole-word BPE merges in the tiny vocabulary (toyworld-style captions).
_MERGE_WORDS = ("a", "red", "blue", "green", "circle", "square", "triangle", "and", "cat", "dog")


def tiny_clip_tokenizer() -> CLIPTokenizer:
    """A small but complete byte-level CLIP tokenizer (built, not downloaded)."""
    return word_clip_tokenizer(_MERGE_WORDS, TOKENIZER_MAX_LENGTH)


def _text_config(hidden_size: int, projection_dim: int = 32) -> CLIPTextConfig:
    vocab = tiny_clip_tokenizer().get_vocab()
    return CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=hidden_size,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=2,
        max_position_embeddings=TOKENIZER_MAX_LENGTH,
        projection_dim=projection_dim,
        hidden_act="gelu",
        layer_norm_eps=1e-5,
        bos_token_id=vocab["<|startoftext|>"],
        eos_token_id=vocab["<|endoftext|>"],
        pad_token_id=vocab["<|endoftext|>"],
    )


def _tiny_vae() -> AutoencoderKL:
    torch.manual_seed(SEED)
    return AutoencoderKL(
        block_out_channels=(8, 16),  # 2 blocks -> vae_scale_factor 2
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=4,
        sample_size=LATENT_SIZE * 2,
    )


def _lcm_scheduler() -> LCMScheduler:
    # The SD/SDXL training schedule, as shipped with LCM-Dreamshaper / LCM-SDXL.
    return LCMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        original_inference_steps=50,
        timestep_spacing="leading",
        steps_offset=1,
        set_alpha_to_one=True,
        clip_sample=False,
    )


def build_tiny_sd_pipeline(path: str | Path, *, turbo: bool = False) -> Path:
    """Save a tiny random SD1.5-architecture LCM pipeline folder at ``path`` and return it
    (``turbo=True``: an SD-Turbo-style ``StableDiffusionPipeline`` instead)."""
    path = Path(path)
    torch.manual_seed(SEED)
    unet = UNet2DConditionModel(
        sample_size=LATENT_SIZE,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        time_cond_proj_dim=None if turbo else 32,  # LCM guidance-scale embedding, as in LCM-Dreamshaper
    )
    torch.manual_seed(SEED)
    text_encoder = CLIPTextModel(_text_config(32))
    if turbo:
        from diffusers import StableDiffusionPipeline

        pipe = StableDiffusionPipeline(vae=_tiny_vae(), text_encoder=text_encoder, tokenizer=tiny_clip_tokenizer(),
                                       unet=unet, scheduler=_turbo_scheduler(), safety_checker=None,
                                       feature_extractor=None, image_encoder=None, requires_safety_checker=False)
        pipe.save_pretrained(path, safe_serialization=True)
        return path
    pipe = LatentConsistencyModelPipeline(
        vae=_tiny_vae(),
        text_encoder=text_encoder,
        tokenizer=tiny_clip_tokenizer(),
        unet=unet,
        scheduler=_lcm_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )
    pipe.save_pretrained(path, safe_serialization=True)
    return path


def build_tiny_sdxl_pipeline(path: str | Path, *, turbo: bool = False) -> Path:
    """Save a tiny random SDXL-architecture pipeline folder (LCMScheduler) at ``path``.

    ``turbo=True`` gives the SDXL-Turbo layout instead: no guidance embedding
    (time_cond_proj_dim None) and an EulerAncestralDiscreteScheduler with trailing spacing.

    Mirrors diffusers' own tiny SDXL test components. The two text encoders have different
    widths (32 and 48) on purpose, so a wrong concatenation of their hidden states cannot pass:
    cross_attention_dim = 32 + 48 = 80 and projection_class_embeddings_input_dim =
    projection_dim (32, the pooled text_embeds) + 6 * addition_time_embed_dim (6 * 8).
    """
    path = Path(path)
    projection_dim, add_time_dim = 32, 8
    torch.manual_seed(SEED)
    unet = UNet2DConditionModel(
        sample_size=LATENT_SIZE,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        transformer_layers_per_block=(1, 2),
        addition_embed_type="text_time",
        addition_time_embed_dim=add_time_dim,
        projection_class_embeddings_input_dim=projection_dim + 6 * add_time_dim,
        cross_attention_dim=32 + 48,
        time_cond_proj_dim=None if turbo else 32,  # LCM-SDXL has a w-embedding; SDXL-Turbo none
    )
    torch.manual_seed(SEED)
    text_encoder = CLIPTextModel(_text_config(32, projection_dim))
    torch.manual_seed(SEED + 1)
    text_encoder_2 = CLIPTextModelWithProjection(_text_config(48, projection_dim))
    pipe = StableDiffusionXLPipeline(
        vae=_tiny_vae(),
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tiny_clip_tokenizer(),
        tokenizer_2=tiny_clip_tokenizer(),
        unet=unet,
        scheduler=_turbo_scheduler() if turbo else _lcm_scheduler(),
        image_encoder=None,
        feature_extractor=None,
        force_zeros_for_empty_prompt=True,
    )
    pipe.save_pretrained(path, safe_serialization=True)
    return path


def _turbo_scheduler():
    from diffusers import EulerAncestralDiscreteScheduler

    return EulerAncestralDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                           timestep_spacing="trailing", num_train_timesteps=1000)


def save_tiny_lora(base: str | Path, path: str | Path, rank: int = 4, scale: float = 0.05) -> Path:
    """A non-trivial LoRA for the UNet of ``base`` in diffusers' LoRA file layout (as LCM-LoRA ships)."""
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = UNet2DConditionModel.from_pretrained(base, subfolder="unet")
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    g = torch.Generator().manual_seed(SEED)
    layers = {k: v + scale * torch.randn(v.shape, generator=g)  # peft starts B at zero: make it non-trivial
              for k, v in convert_state_dict_to_diffusers(get_peft_model_state_dict(unet)).items()}
    StableDiffusionXLPipeline.save_lora_weights(path, unet_lora_layers=layers)
    return Path(path)
