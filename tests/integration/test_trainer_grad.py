"""The gradient reaching θ through −⟨g, z⟩ (g served by the surrogate service over HTTP) equals
the gradient of the in-process surrogate loss −R_psi(z(θ)) (S disabled)."""

from __future__ import annotations

import torch

from surrogate_service.app import create_app
from surrogate_service.client import SurrogateClient
from surrogate_service.model import load_surrogate
from surrogate_service.settings import SurrogateSettings
from trainer.fewstep import FewStepModel
from trainer.normalize import GradNormalizer


def test_served_gradient_chain_rule_matches_in_process_autograd(serve, tiny_pipelines):
    base = str(tiny_pipelines["sd"])
    app = create_app(SurrogateSettings(base_model=base, learn=False, head_channels=16))
    url = serve(app)
    assert app.state.surrogate.ready.wait(60)
    ref, _ = load_surrogate(base, head_channels=16)
    g = torch.Generator().manual_seed(3)
    sd = {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in ref.state_dict().items()}
    ref.load_state_dict(sd)
    app.state.surrogate.slot.publish(sd, 1)

    model = FewStepModel(base)
    prompts = ["a red circle", "a blue square"]
    cond = model.encode(prompts)
    z_t = model.noise(2, torch.Generator().manual_seed(0))
    params = model.trainable_parameters()
    S = GradNormalizer("none")

    def theta_grad(loss_fn) -> list[torch.Tensor]:
        s = model.sample(z_t, cond, torch.Generator().manual_seed(1))
        grads = torch.autograd.grad(loss_fn(s), params, allow_unused=True)
        return [torch.zeros_like(p) if gr is None else gr for p, gr in zip(params, grads, strict=True)]

    with SurrogateClient(url) as sc:
        def via_service(s):
            g1 = sc.grad(s.z1.detach(), prompts, 1).grad
            g2 = sc.grad(s.z2.detach(), prompts, 2).grad
            return -(S(g1) * s.z1).sum() - (S(g2) * s.z2).sum()

        served = theta_grad(via_service)

    in_process = theta_grad(lambda s: -ref(s.z1, ref_cond(ref, base, prompts), 1).sum()
                            - ref(s.z2, ref_cond(ref, base, prompts), 2).sum())
    total = sum(float(a.norm()) for a in in_process)
    assert total > 0
    for a, b in zip(served, in_process, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def ref_cond(ref, base, prompts):
    from lasro_diffusion.text import TextEncoderBundle

    return TextEncoderBundle(base).encode(prompts, latent_size=(8, 8))
