"""Every model family the trainer supports, as a tiny random pipeline of the real structure:
the surrogate serves /grad for it and the trainer runs LaSRO iterations on it.

    sd          SD1.5 family (LCM-Dreamshaper-v7), LCMScheduler, w-embedding
    sdxl        SDXL family (LCM-SDXL; LCM-SSD-1B is the same architecture with fewer blocks)
    sdxl_turbo  SDXL-Turbo: no guidance embedding, Euler scheduler config
    lcm_lora    an SDXL base without distillation + an LCM-LoRA fused at load
"""

from __future__ import annotations

import pytest
import torch

from lasro_common import redis_util
from reward_service.app import create_app as reward_app
from reward_service.settings import RewardSettings
from surrogate_service.app import create_app as surrogate_app
from surrogate_service.client import SurrogateClient
from surrogate_service.settings import SurrogateSettings
from tests.e2e.test_trainer_run import Brightness
from trainer.config import TrainConfig
from trainer.fewstep import FewStepModel


@pytest.mark.parametrize("family, lora_rank", [("sd", 0), ("sdxl", 0), ("sdxl", 4), ("sdxl_turbo", 0), ("lcm_lora", 4)])
def test_lasro_iterations_on_each_architecture(family, lora_rank, tiny_pipelines, tmp_path, serve, caplog):
    from trainer.loop import train

    base = str(tiny_pipelines["sdxl_turbo" if family == "lcm_lora" else family])
    lcm_lora = str(tiny_pipelines["lcm_lora"]) if family == "lcm_lora" else None
    redis_url = redis_util.embedded_redis_url(tmp_path / "redis")
    rew = reward_app(RewardSettings(), rewards=[Brightness()])
    sur = surrogate_app(SurrogateSettings(base_model=base, learn=False, head_channels=16))
    rurl, surl = serve(rew), serve(sur)
    assert rew.state.rewards.ready.wait(30) and sur.state.surrogate.ready.wait(60), sur.state.surrogate.error
    slot = sur.state.surrogate.slot  # non-trivial weights (heads start at zero, so would the gradient)
    g = torch.Generator().manual_seed(0)
    slot.publish({k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in slot.get()[0].state_dict().items()}, 1)

    z = torch.randn(2, 4, 8, 8)
    with SurrogateClient(surl) as sc:
        res = sc.grad(z, ["a red circle", "a cat"], head=2)
    assert res.grad.shape == z.shape and torch.isfinite(res.grad).all() and res.grad.abs().sum() > 0

    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle\na blue square\n")
    before = FewStepModel(base, lcm_lora=lcm_lora).unet.state_dict()
    cfg = TrainConfig(base_model=base, lcm_lora=lcm_lora, lora_rank=lora_rank, teacher_model=None,
                      regularizer="anchor", reward="brightness", reward_url=rurl, surrogate_url=surl,
                      redis_url=redis_url, prompts=prompts, eval_prompts=prompts, eval_seeds=1, iterations=2,
                      prompts_per_iter=2, n_noises=2, lr=1e-3, out=tmp_path / "run", progress=False)
    summary = train(cfg)
    assert summary["iterations"] == 2 and summary["queries"] == 2 * 2 * 2 * 2
    from safetensors.torch import load_file

    saved = load_file(str(tmp_path / "run/checkpoint/unet.safetensors"))
    if lora_rank:
        assert saved and all("lora" in k for k in saved)  # only the adapter is saved
    else:
        assert any(not torch.equal(saved[k], before[k]) for k in before)
    _exported_model_samples_as_the_trainer(tmp_path / "run", base, lcm_lora, caplog)


def _exported_model_samples_as_the_trainer(run, base, lcm_lora, caplog) -> None:
    """OUT/model in plain diffusers (from_pretrained, or load_lora_weights on the base with no
    warning about the UNet) gives the trainer's own samples of the best checkpoint, same seed."""
    import json
    import logging

    from diffusers import DiffusionPipeline, LCMScheduler

    from trainer.export import resolve_model

    model = run / "model"
    meta = json.loads((model / "lasro.json").read_text())
    if meta["kind"] == "full":
        pipe = DiffusionPipeline.from_pretrained(str(model))
    else:
        pipe = DiffusionPipeline.from_pretrained(base)
        if lcm_lora:  # as the model card says: LCM-LoRA fused first, with an LCMScheduler
            pipe.scheduler = LCMScheduler.from_config(pipe.scheduler.config)
            pipe.load_lora_weights(lcm_lora)
            pipe.fuse_lora()
            pipe.unload_lora_weights()
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            pipe.load_lora_weights(str(model))
        # diffusers notes "safe to ignore" for the text encoders of every UNet-only LoRA (LCM-LoRA too)
        assert [r.getMessage() for r in caplog.records if "text_encoder" not in r.getMessage()] == []
    pipe.set_progress_bar_config(disable=True)
    trainer_model = resolve_model(str(run)).load()
    prompts = ["a red circle", "a cat"]
    for steps in (1, 2):
        ref = pipe(prompts, num_inference_steps=steps, guidance_scale=meta["guidance_scale"], output_type="latent",
                   generator=torch.Generator().manual_seed(5)).images
        gen = torch.Generator().manual_seed(5)
        with torch.no_grad():
            s = trainer_model.sample(trainer_model.noise(2, gen, steps), trainer_model.encode(prompts), gen, steps=steps)
        torch.testing.assert_close(s.z2, ref, rtol=0, atol=1e-5)


def test_anchor_under_lora_switches_adapters_off_instead_of_copying(tiny_pipelines):
    from trainer.regularizers import AnchorRegularizer

    m = FewStepModel(str(tiny_pipelines["sdxl"]), lora_rank=4, guidance_scale=8.0)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a trained adapter: f_θ differs from f_θ0
        for p in m.trainable_parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    reg = AnchorRegularizer(m)
    assert reg.ref is None  # no second UNet in memory
    cond = m.encode(["a cat", "a dog"])
    s = m.sample(m.noise(2, torch.Generator().manual_seed(1)), cond, torch.Generator().manual_seed(2))
    loss = reg.loss(s, cond, torch.Generator().manual_seed(3))
    copy_ = m.frozen_copy()
    copy_.disable_adapters()  # the initial model, built the expensive way
    reg.ref = copy_
    assert loss.item() > 0 and torch.equal(loss, reg.loss(s, cond, torch.Generator().manual_seed(3)))
    assert all(p.requires_grad for p in m.trainable_parameters())  # adapters back on and trainable
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.trainable_parameters())
