"""The surrogate service, for real (learner off here; see test_learner.py for the learner)."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import pytest
import torch

from lasro_common import SAFETENSORS_MEDIA_TYPE, codec
from lasro_common.errors import ServiceError
from surrogate_service.app import create_app
from surrogate_service.client import AsyncSurrogateClient, SurrogateClient
from surrogate_service.model import load_surrogate, score_and_grad
from surrogate_service.settings import SurrogateSettings

TOKEN = "sur"
PROMPTS = ["a red circle", "a blue square", "a green triangle and a red square"]


def _perturbed_state(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    return {k: v + 0.05 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v
            for k, v in model.state_dict().items()}


@pytest.fixture(scope="module", params=["sd", "sdxl"])
def served(request, tiny_pipelines):
    from tests.conftest import serve_in_thread

    path = str(tiny_pipelines[request.param])
    settings = SurrogateSettings(base_model=path, learn=False, api_token=TOKEN, head_channels=16, max_batch=16,
                                 max_latent_side=32, max_body_mb=1)
    app = create_app(settings)
    with serve_in_thread(app) as url:
        state = app.state.surrogate
        assert state.ready.wait(60), state.error
        # Non-trivial weights (the heads start at zero), published as version 3 by the same path the learner uses.
        reference, text = load_surrogate(path, head_channels=16)
        sd = _perturbed_state(reference)
        reference.load_state_dict(sd)
        state.slot.publish(sd, 3)
        yield url, reference, text


def latents(b=3, dtype=torch.float32, seed=0):
    return torch.randn(b, 4, 8, 8, generator=torch.Generator().manual_seed(seed)).to(dtype)


@pytest.mark.parametrize("head", [1, 2])
def test_grad_is_exactly_in_process_autograd(served, head):
    url, reference, text = served
    z = latents()
    with SurrogateClient(url, token=TOKEN) as sc:
        res = sc.grad(z, PROMPTS, head=head)
    assert res.version == 3
    cond = text.encode(PROMPTS, latent_size=(8, 8))
    want_scores, want_grad = score_and_grad(reference, z, cond, head)
    assert res.grad.shape == z.shape and res.grad.dtype == z.dtype
    assert torch.equal(res.scores, want_scores.float()) and torch.equal(res.grad, want_grad)
    assert res.grad.abs().sum() > 0


def test_directional_finite_difference_through_score_agrees_with_grad(served):
    url, _, _ = served
    z = latents(2, seed=5)
    v = torch.randn(z.shape, generator=torch.Generator().manual_seed(9))
    eps = 1e-2
    with SurrogateClient(url, token=TOKEN) as sc:
        g = sc.grad(z, PROMPTS[:2], head=2).grad
        plus, _ = sc.score(z + eps * v, PROMPTS[:2], head=2)
        minus, _ = sc.score(z - eps * v, PROMPTS[:2], head=2)
    fd = (plus - minus) / (2 * eps)  # (B,): per-sample directional derivative
    analytic = (g * v).flatten(1).sum(1)
    torch.testing.assert_close(fd, analytic, rtol=2e-2, atol=2e-3)


def test_float16_in_float16_out_and_heads_differ(served):
    url, _, _ = served
    with SurrogateClient(url, token=TOKEN) as sc:
        r1 = sc.grad(latents(dtype=torch.float16), PROMPTS, head=1)
        r2 = sc.grad(latents(dtype=torch.float16), PROMPTS, head=2)
        s_np, version = sc.score(latents().numpy(), PROMPTS, head=1)
    assert r1.grad.dtype == torch.float16 and torch.isfinite(r1.grad).all()
    assert not torch.equal(r1.scores, r2.scores)
    assert isinstance(s_np, np.ndarray) and version == 3


def test_concurrent_requests_get_their_own_answers(served):
    url, reference, text = served

    async def main():
        async with AsyncSurrogateClient(url, token=TOKEN) as sc:
            return await asyncio.gather(*(sc.score(latents(1, seed=i), [PROMPTS[i % 3]], head=1) for i in range(8)))

    results = asyncio.run(main())
    for i, (s, version) in enumerate(results):
        with torch.no_grad():
            want = reference(latents(1, seed=i), text.encode([PROMPTS[i % 3]], latent_size=(8, 8)), 1)
        torch.testing.assert_close(s, want.float(), rtol=1e-5, atol=1e-6)
        assert version == 3


def _post(url, body, path="/grad", token=TOKEN, ctype=SAFETENSORS_MEDIA_TYPE):
    return httpx.post(url + path, content=body, headers={"Content-Type": ctype, "Authorization": f"Bearer {token}"})


BAD = [
    ("no latents", lambda: codec.encode({"x": np.zeros(2, np.float32)}, {"prompts": [], "head": 1}), 422, "invalid_input"),
    ("channels", lambda: codec.encode({"latents": np.zeros((1, 3, 8, 8), np.float32)}, {"prompts": ["a"], "head": 1}), 422, "invalid_shape"),
    ("odd size", lambda: codec.encode({"latents": np.zeros((1, 4, 7, 7), np.float32)}, {"prompts": ["a"], "head": 1}), 422, "invalid_shape"),
    ("rank", lambda: codec.encode({"latents": np.zeros((4, 8, 8), np.float32)}, {"prompts": ["a"], "head": 1}), 422, "invalid_shape"),
    ("dtype", lambda: codec.encode({"latents": np.zeros((1, 4, 8, 8), np.float64)}, {"prompts": ["a"], "head": 1}), 422, "invalid_dtype"),
    ("NaN", lambda: codec.encode({"latents": np.full((1, 4, 8, 8), np.nan, np.float32)}, {"prompts": ["a"], "head": 1}), 422, "non_finite"),
    ("Inf", lambda: codec.encode({"latents": np.full((1, 4, 8, 8), np.inf, np.float16)}, {"prompts": ["a"], "head": 1}), 422, "non_finite"),
    ("prompt count", lambda: codec.encode({"latents": np.zeros((2, 4, 8, 8), np.float32)}, {"prompts": ["a"], "head": 1}), 422, "batch_mismatch"),
    ("no prompts", lambda: codec.encode({"latents": np.zeros((1, 4, 8, 8), np.float32)}, {"head": 1}), 422, "invalid_input"),
    ("unknown head", lambda: codec.encode({"latents": np.zeros((1, 4, 8, 8), np.float32)}, {"prompts": ["a"], "head": 3}), 404, "unknown_head"),
    ("batch too big", lambda: codec.encode({"latents": np.zeros((17, 4, 8, 8), np.float32)}, {"prompts": ["a"] * 17, "head": 1}), 413, "payload_too_large"),
    ("latent too big", lambda: codec.encode({"latents": np.zeros((1, 4, 64, 64), np.float32)}, {"prompts": ["a"], "head": 1}), 413, "payload_too_large"),
    ("body too big", lambda: b"\0" * (1024 * 1024 + 1), 413, "payload_too_large"),
    ("garbage", lambda: b"\x01\x02\x03", 400, "malformed_body"),
    ("zero size", lambda: codec.encode({"latents": np.zeros((1, 4, 0, 8), np.float32)}, {"prompts": ["a"], "head": 1}), 422, "invalid_shape"),
    ("huge values", lambda: codec.encode({"latents": np.full((1, 4, 8, 8), 1e30, np.float32)}, {"prompts": ["a"], "head": 1}), 422, "out_of_range"),
]


@pytest.mark.parametrize("what, make, status, code", BAD, ids=[b[0] for b in BAD])
@pytest.mark.parametrize("path", ["/grad", "/score"])
def test_bad_input_gets_its_4xx(served, what, make, status, code, path):
    url, _, _ = served
    r = _post(url, make(), path)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code


def test_auth_content_type_and_status(served):
    url, _, _ = served
    body = codec.encode({"latents": latents(1).numpy()}, {"prompts": ["a"], "head": 1})
    assert _post(url, body, token="nope").status_code == 401
    assert _post(url, body, ctype="application/json").status_code == 415
    assert httpx.get(url + "/healthz").status_code == 200 and httpx.get(url + "/readyz").status_code == 200
    with SurrogateClient(url, token=TOKEN) as sc:
        st = sc.status()
        assert st["version"] == 3 and st["learning"] is False
        with pytest.raises(ServiceError) as e:
            sc.grad(latents(1), ["a", "b"], head=1)
        assert e.value.status == 422
