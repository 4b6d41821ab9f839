"""POST /grad for real: uvicorn on a free port, a tiny random CLIP loaded by path, raw HTTP."""

from __future__ import annotations

import asyncio
import json

import httpx
import numpy as np
import pytest
import torch

from lasro_common import SAFETENSORS_MEDIA_TYPE, codec
from reward_service.app import create_app
from reward_service.rewards import build
from reward_service.settings import RewardSettings
from tests.unit.test_reward_models import PROMPTS, build_tiny_clip, images

ST = {"Content-Type": SAFETENSORS_MEDIA_TYPE}


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory: pytest.TempPathFactory):
    return build_tiny_clip(tmp_path_factory.mktemp("tiny_clip"))


@pytest.fixture
def service(serve, tiny_clip):
    rewards = [build("clip_score", {"model": str(tiny_clip), "batch_size": 2}), build("jpeg_compressibility")]
    app = create_app(RewardSettings(max_batch=8, max_side=128), rewards=rewards)
    url = serve(app)
    assert app.state.rewards.ready.wait(60), app.state.rewards.error
    return url


def post_grad(url: str, x, prompts=None, reward=None, **kw) -> httpx.Response:
    meta = {k: v for k, v in (("prompts", prompts), ("reward", reward)) if v is not None}
    return httpx.post(f"{url}/grad", content=codec.encode({"images": x}, meta), headers=ST, timeout=60, **kw)


def local_grad(tiny_clip, x: torch.Tensor, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    r = build("clip_score", {"model": str(tiny_clip)})
    r.setup("cpu")
    x = x.clone().requires_grad_(True)
    s = r.score(x, prompts)
    (g,) = torch.autograd.grad(s.sum(), x)
    return s.detach(), g


def test_grad_equals_in_process_autograd(service, tiny_clip):
    x = images(3, 40, 48)
    r = post_grad(service, x.numpy(), PROMPTS, "clip_score")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith(SAFETENSORS_MEDIA_TYPE)
    out = codec.decode(r.content)
    assert out.tensors["scores"].dtype == np.float32 and out.tensors["grad"].dtype == np.float32
    assert out.tensors["grad"].shape == (3, 3, 40, 48)
    assert out.metadata["version"] == "clip_score@1"
    s, g = local_grad(tiny_clip, x, PROMPTS)
    np.testing.assert_allclose(out.tensors["scores"], s.numpy(), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(out.tensors["grad"], g.numpy(), rtol=1e-3, atol=1e-5)
    # /score gives the same numbers as /grad's scores
    sc = httpx.post(f"{service}/score", content=codec.encode({"images": x.numpy()},
                    {"prompts": PROMPTS, "reward": "clip_score"}), headers=ST, timeout=60)
    np.testing.assert_allclose(sc.json()["scores"], out.tensors["scores"], rtol=1e-4, atol=1e-3)


def test_weights_scale_scores_and_gradients(service):
    x = images(2, 32, 32).numpy()
    one = codec.decode(post_grad(service, x, PROMPTS[:2], "clip_score").content).tensors
    res = post_grad(service, x, PROMPTS[:2], {"clip_score": -0.5})
    two = codec.decode(res.content)
    assert two.metadata["reward"] == {"clip_score": -0.5}
    np.testing.assert_allclose(two.tensors["scores"], -0.5 * one["scores"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(two.tensors["grad"], -0.5 * one["grad"], rtol=1e-5, atol=1e-7)


def test_non_differentiable_reward_is_422_not_differentiable(service):
    x = images(2, 32, 32).numpy()
    for reward in ("jpeg_compressibility", {"clip_score": 1.0, "jpeg_compressibility": 1.0}):
        r = post_grad(service, x, PROMPTS[:2], reward)
        assert r.status_code == 422 and r.json()["error"]["code"] == "not_differentiable", r.text


@pytest.mark.parametrize("case, status, code", [
    ("json", 415, "unsupported_media_type"),
    ("shape", 422, "invalid_shape"),
    ("nan", 422, "non_finite"),
    ("range", 422, "out_of_range"),
    ("prompts", 422, "batch_mismatch"),
    ("unknown", 404, "unknown_reward"),
    ("too_big", 413, "payload_too_large"),
    ("garbage", 400, None),
])
def test_bad_inputs_are_4xx_with_an_error_body(service, case, status, code):
    x = images(2, 32, 32).numpy()
    if case == "json":
        r = httpx.post(f"{service}/grad", content=json.dumps({"images": [], "reward": "clip_score"}),
                       headers={"Content-Type": "application/json"})
    elif case == "garbage":
        r = httpx.post(f"{service}/grad", content=b"not safetensors at all", headers=ST)
    else:
        bad = {"shape": x[:, :2], "nan": np.where(x > 0.5, np.nan, x).astype(np.float32),
               "range": x * 3, "too_big": np.zeros((2, 3, 256, 256), np.float32)}.get(case, x)
        prompts = PROMPTS if case == "prompts" else PROMPTS[:2]
        r = post_grad(service, bad, prompts, "nope" if case == "unknown" else "clip_score")
    assert r.status_code == status, r.text
    assert set(r.json()) == {"error"}
    if code:
        assert r.json()["error"]["code"] == code


def test_concurrent_requests_are_batched_without_mixing_results(service):
    """Requests merged into one model call (same reward and size) each get their own rows back."""
    xs = [images(b, 32, 32, seed=b).numpy() for b in (1, 2, 3)]
    alone = [codec.decode(post_grad(service, x, PROMPTS[: len(x)], "clip_score").content).tensors for x in xs]

    async def all_at_once():
        async with httpx.AsyncClient(timeout=60) as c:
            return await asyncio.gather(*[
                c.post(f"{service}/grad", content=codec.encode({"images": x}, {"prompts": PROMPTS[: len(x)]}),
                       headers=ST) for x in xs])

    for r, want in zip(asyncio.run(all_at_once()), alone, strict=True):
        got = codec.decode(r.content).tensors
        np.testing.assert_allclose(got["scores"], want["scores"], rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(got["grad"], want["grad"], rtol=1e-3, atol=1e-6)
