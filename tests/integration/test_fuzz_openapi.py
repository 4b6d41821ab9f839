"""Property-based fuzzing of both services' OpenAPI schemas (schemathesis): no input gives a 5xx,
and every error is the JSON error body. Safetensors bodies are fuzzed as raw bytes, plus a
strategy-independent set of well-formed safetensors with hostile contents."""

from __future__ import annotations

import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.transport.requests import serialize_binary

from lasro_common import codec
from reward_service.app import create_app as reward_app
from reward_service.settings import RewardSettings


@schemathesis.serializer("application/x-safetensors")
def _safetensors(ctx, value):  # fuzzed bodies go on the wire as they are
    return {"data": serialize_binary(value)}


def _reward_app():
    return reward_app(RewardSettings(rewards=["jpeg_compressibility", "jpeg_incompressibility"],
                                     api_token="fuzz", max_batch=16, max_side=512))


# The schema is read through its own app instance: reading it runs that app's lifespan, which must
# not share state with the live server under test.
reward = _reward_app()
reward_schema = schemathesis.openapi.from_asgi("/openapi.json", _reward_app())


@pytest.fixture(scope="module")
def live_url():
    from tests.conftest import serve_in_thread

    with serve_in_thread(reward) as url:
        assert reward.state.rewards.ready.wait(30)
        yield url


def _check(response, case) -> None:
    assert response.status_code < 500, (case.method, case.path, response.status_code, response.text[:300])
    if response.status_code >= 400 and case.path != "/metrics":
        assert set(response.json()) == {"error"}, response.text[:300]


@reward_schema.parametrize()
@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
def test_reward_service_no_5xx_for_any_input(case, live_url):
    for headers in ({"Authorization": "Bearer fuzz"}, {}):
        _check(case.call(base_url=live_url, headers=headers), case)


def _surrogate_app(base):
    from surrogate_service.app import create_app
    from surrogate_service.settings import SurrogateSettings

    return create_app(SurrogateSettings(base_model=str(base), learn=False, head_channels=16, max_latent_side=64,
                                        max_batch=8))


def _tiny_base():
    import tempfile
    from pathlib import Path

    from tests.tiny_models import build_tiny_sd_pipeline

    return build_tiny_sd_pipeline(Path(tempfile.mkdtemp(prefix="lasro-fuzz-")) / "sd")


_BASE = _tiny_base()
surrogate = _surrogate_app(_BASE)
surrogate_schema = schemathesis.openapi.from_asgi("/openapi.json", _surrogate_app(_BASE))


@pytest.fixture(scope="module")
def surrogate_url():
    from tests.conftest import serve_in_thread

    with serve_in_thread(surrogate) as url:
        assert surrogate.state.surrogate.ready.wait(60)
        yield url


HOSTILE = [
    ({"latents": np.zeros((1, 4, 8, 8), np.float32)}, {"prompts": ["x" * 10_000], "head": 1}),
    ({"latents": np.zeros((1, 4, 8, 8), np.float32)}, {"prompts": [None], "head": 1}),
    ({"latents": np.zeros((1, 4, 8, 8), np.float32)}, {"prompts": "abc", "head": True}),
    ({"latents": np.zeros((1, 4, 8, 8), np.float32)}, {"prompts": ["a"], "head": "1.5"}),
    ({"latents": np.zeros((1, 4, 0, 8), np.float32)}, {"prompts": ["a"], "head": 1}),
    ({"latents": np.zeros((1, 4, 8, 8), np.int64)}, {"prompts": ["a"], "head": 1}),
    ({"latents": np.zeros((), np.float32)}, {"prompts": ["a"], "head": 1}),
    ({"latents": np.full((1, 4, 8, 8), 1e30, np.float32)}, {"prompts": ["a"], "head": 1}),
    ({"latents": np.full((1, 4, 8, 8), 6e4, np.float16)}, {"prompts": ["a"], "head": 2}),
]


@pytest.mark.parametrize("tensors, meta", HOSTILE)
@pytest.mark.parametrize("path", ["/grad", "/score"])
def test_surrogate_service_hostile_safetensors_bodies_get_4xx(surrogate_url, path, tensors, meta):
    import httpx

    r = httpx.post(surrogate_url + path, content=codec.encode(tensors, meta),
                   headers={"Content-Type": "application/x-safetensors"})
    assert r.status_code < 500, (r.status_code, r.text[:300])
    if r.status_code >= 400:
        assert set(r.json()) == {"error"}
    else:
        assert np.isfinite(codec.decode(r.content).tensors["scores"]).all() if path == "/grad" else None not in r.json()["scores"]


@surrogate_schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_surrogate_service_no_5xx_for_any_input(case, surrogate_url):
    _check(case.call(base_url=surrogate_url), case)
