"""The committed toy pipelines load through plain `DiffusionPipeline.from_pretrained` and sample."""

import json

import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DiffusionPipeline,
    LatentConsistencyModelPipeline,
    LCMScheduler,
    StableDiffusionPipeline,
)

from toyworld import checker, paths
from toyworld.__main__ import main

PROMPTS = ["a red circle", "a blue square and a yellow triangle"]


@pytest.fixture(scope="module")
def teacher() -> StableDiffusionPipeline:
    pipe = DiffusionPipeline.from_pretrained(paths.TEACHER_DIR, safety_checker=None, feature_extractor=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def lcm() -> LatentConsistencyModelPipeline:
    pipe = DiffusionPipeline.from_pretrained(paths.LCM_DIR, safety_checker=None, feature_extractor=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_folders_are_complete_and_small():
    total = 0
    for d in (paths.TEACHER_DIR, paths.LCM_DIR):
        index = json.loads((d / "model_index.json").read_text())
        assert index["requires_safety_checker"] is False
        for sub in ("vae", "text_encoder", "tokenizer", "unet", "scheduler"):
            assert (d / sub).is_dir(), sub
        total += sum(f.stat().st_size for f in d.rglob("*") if f.is_file())
    assert total <= 20 * 2**20


def test_components(teacher, lcm):
    assert isinstance(teacher, StableDiffusionPipeline) and isinstance(teacher.scheduler, DDIMScheduler)
    assert isinstance(lcm, LatentConsistencyModelPipeline) and isinstance(lcm.scheduler, LCMScheduler)
    assert lcm.unet.config.time_cond_proj_dim is not None and teacher.unet.config.time_cond_proj_dim is None
    for pipe in (teacher, lcm):
        assert pipe.unet.config.sample_size * pipe.vae_scale_factor == 32  # default height/width
        assert pipe.vae.config.latent_channels == 4
        assert next(pipe.unet.parameters()).dtype == torch.float32


@pytest.mark.parametrize("steps", [1, 2])
def test_lcm_samples(lcm, steps):
    out = lcm(PROMPTS, num_inference_steps=steps, guidance_scale=3.0, output_type="pt",
              generator=torch.Generator().manual_seed(0)).images
    assert out.shape == (2, 3, 32, 32) and torch.isfinite(out).all()
    assert checker.score(out, PROMPTS).shape == (2,)


def test_teacher_samples_25_steps(teacher):
    out = teacher(PROMPTS, num_inference_steps=25, guidance_scale=3.0, output_type="pt",
                  generator=torch.Generator().manual_seed(0)).images
    assert out.shape == (2, 3, 32, 32) and torch.isfinite(out).all()


def test_sample_cli(tmp_path, capsys):
    out = tmp_path / "x.png"
    main(["--threads", "1", "sample", "--prompt", "a green triangle", "--steps", "2", "--out", str(out)])
    assert out.exists() and "checker" in capsys.readouterr().out
