"""Sampling through the stock diffusers pipelines and scoring with the checker."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from diffusers import DiffusionPipeline, LatentConsistencyModelPipeline, StableDiffusionPipeline
from PIL import Image, ImageDraw

from toyworld import checker

TEACHER_STEPS = 25
TEACHER_GUIDANCE = 3.0  # classifier-free guidance scale of the teacher (DDIM, 25 steps)
LCM_GUIDANCE = 3.0  # LCM guidance_scale; the pipeline feeds w = guidance_scale − 1 = 2 to the UNet
EVAL_SEEDS = 4  # held-out captions × seeds = evaluation set size


def load_pipeline(path: str | Path) -> DiffusionPipeline:
    """Plain `DiffusionPipeline.from_pretrained`, exactly as for LCM-SSD-1B (no safety checker)."""
    pipe = DiffusionPipeline.from_pretrained(str(path), safety_checker=None, feature_extractor=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@torch.no_grad()
def generate(pipe: DiffusionPipeline, prompts: list[str], steps: int, guidance: float | None = None,
             seed: int = 0, batch_size: int = 256) -> torch.Tensor:
    """Images (B, 3, 32, 32) float in [0, 1]. One generator per chunk, seeded from (seed, chunk),
    so the same prompts and seed give the same initial noise to teacher and LCM."""
    is_lcm = isinstance(pipe, LatentConsistencyModelPipeline)
    if guidance is None:
        guidance = LCM_GUIDANCE if is_lcm else TEACHER_GUIDANCE
    out = []
    for i in range(0, len(prompts), batch_size):
        g = torch.Generator().manual_seed(seed * 100_003 + i)
        res = pipe(prompts[i : i + batch_size], num_inference_steps=steps, guidance_scale=guidance,
                   generator=g, output_type="pt")
        out.append(res.images.float().clamp(0, 1))
    return torch.cat(out)


def eval_prompts(captions: list[str], seeds: int = EVAL_SEEDS) -> list[str]:
    return [c for _ in range(seeds) for c in captions]


def checker_mean(pipe: DiffusionPipeline, prompts: list[str], steps: int,
                 guidance: float | None = None, seed: int = 0) -> float:
    images = generate(pipe, prompts, steps, guidance, seed)
    return float(checker.score(images, prompts).mean())


def save_grid(images: torch.Tensor | np.ndarray, prompts: list[str], path: str | Path, title: str,
              cols: int = 8, scale: int = 4) -> None:
    """PNG grid: each image upscaled ×scale, its caption and checker score underneath."""
    images = torch.as_tensor(images).float().clamp(0, 1)
    scores = checker.score(images, prompts)
    cell_w, cell_h = 32 * scale + 24, 32 * scale + 40
    rows = (len(prompts) + cols - 1) // cols
    canvas = Image.new("RGB", (cols * cell_w, rows * cell_h + 20), (40, 40, 40))
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 4), title, fill=(255, 255, 255))
    for i, (img, p, s) in enumerate(zip(images, prompts, scores, strict=True)):
        x, y = (i % cols) * cell_w + 4, (i // cols) * cell_h + 20
        arr = (img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        canvas.paste(Image.fromarray(arr).resize((32 * scale, 32 * scale), Image.Resampling.NEAREST), (x, y))
        colour = (255, 255, 255) if s >= 1 else (255, 120, 120)
        words = p.split(" and ")
        for j, line in enumerate(words):
            draw.text((x, y + 32 * scale + 2 + 11 * j), line + (f" [{s:.1f}]" if j == len(words) - 1 else ""), fill=colour)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


def teacher_pipeline(vae, text_encoder, tokenizer, unet, scheduler) -> StableDiffusionPipeline:
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def lcm_pipeline(vae, text_encoder, tokenizer, unet, scheduler) -> LatentConsistencyModelPipeline:
    pipe = LatentConsistencyModelPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                          unet=unet, scheduler=scheduler, safety_checker=None,
                                          feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe
