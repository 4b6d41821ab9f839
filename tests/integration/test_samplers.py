"""The trainer's sampler is each family's stock diffusers sampler, bit for bit on the CPU: the same
seed gives the pipeline's own latents (output_type="latent") at 1 and 2 steps, for one generator
and for one generator per image, and z1 of a 2-step run is the 1-step pipeline's output.

    sd          SD-LCM (LCM-Dreamshaper, the toy world)   LatentConsistencyModelPipeline
    sd_turbo    SD-Turbo                                  StableDiffusionPipeline, Euler ancestral, guidance 0
    sdxl        SDXL-LCM / LCM-SSD-1B                     StableDiffusionXLPipeline + LCMScheduler
    sdxl_turbo  SDXL-Turbo                                StableDiffusionXLPipeline, Euler ancestral, guidance 0
    lcm_lora    an SDXL base + LCM-LoRA                   LCMScheduler.from_config, load_lora_weights, fuse_lora
"""

from __future__ import annotations

import pytest
import torch
from diffusers import DiffusionPipeline, LCMScheduler

from trainer.fewstep import FewStepModel

PROMPTS = ["a red circle", "a blue square and a green triangle"]
FAMILIES = ["sd", "sd_turbo", "sdxl", "sdxl_turbo", "lcm_lora"]


@pytest.fixture(scope="module")
def families(tiny_pipelines, tmp_path_factory):
    from tests.tiny_models import build_tiny_sd_pipeline

    sd_turbo = build_tiny_sd_pipeline(tmp_path_factory.mktemp("sd_turbo") / "p", turbo=True)
    return {**tiny_pipelines, "sd_turbo": sd_turbo}


def _stock(families, family: str):
    """The pipeline as its model card says to run it."""
    base = families["sdxl_turbo" if family == "lcm_lora" else family]
    pipe = DiffusionPipeline.from_pretrained(str(base))
    if family == "lcm_lora":
        pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
        pipe.load_lora_weights(str(families["lcm_lora"]))
        pipe.fuse_lora()
        pipe.unload_lora_weights()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _gens(kind: str):
    if kind == "one":
        return torch.Generator().manual_seed(7)
    return [torch.Generator().manual_seed(100 + i) for i in range(len(PROMPTS))]


@pytest.mark.parametrize("family", FAMILIES)
def test_sampler_is_the_stock_pipeline_bit_for_bit(families, family):
    base = families["sdxl_turbo" if family == "lcm_lora" else family]
    model = FewStepModel(str(base), lcm_lora=str(families["lcm_lora"]) if family == "lcm_lora" else None)
    assert model.guidance_scale == (8.0 if family in ("sd", "sdxl") else 0.0)  # the family's default
    pipe = _stock(families, family)
    cond = model.encode(PROMPTS)
    for kind in ("one", "per_image"):
        ref = {steps: pipe(PROMPTS, num_inference_steps=steps, guidance_scale=model.guidance_scale,
                           generator=_gens(kind), output_type="latent").images for steps in (1, 2)}
        for steps in (1, 2):
            gen = _gens(kind)
            with torch.no_grad():
                s = model.sample(model.noise(len(PROMPTS), gen, steps), cond, gen, steps=steps)
            diff = (s.z2 - ref[steps]).abs().max().item()
            assert diff <= 1e-5, f"{family} {steps} steps ({kind}): max |Δ| {diff}"
            diff1 = (s.z1 - ref[1]).abs().max().item()  # z1: the 1-step pipeline's output
            assert diff1 <= 1e-5, f"{family} z1 of {steps} steps ({kind}): max |Δ| {diff1}"


def test_anchor_reference_is_the_same_step_with_the_same_weights(families):
    """step_output (the anchor regulariser's f_θ0) reproduces z1 and z2 from the step inputs."""
    for family in ("sd", "sdxl_turbo"):
        model = FewStepModel(str(families[family]))
        gen = torch.Generator().manual_seed(0)
        cond = model.encode(PROMPTS)
        w = model.w_embedding(len(PROMPTS))
        with torch.no_grad():
            s = model.sample(model.noise(len(PROMPTS), gen), cond, gen)
            for i, out in enumerate((s.z1, s.z2)):
                torch.testing.assert_close(model.step_output(model.unet, s.inputs[i], i, 2, cond, w), out,
                                           rtol=0, atol=0)


def test_guidance_above_one_without_a_guidance_embedding_is_refused(families):
    with pytest.raises(ValueError, match="no guidance embedding"):
        FewStepModel(str(families["sdxl_turbo"]), guidance_scale=8.0)
