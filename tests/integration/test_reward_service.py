"""The reward service, for real: uvicorn on a free port, the client and raw HTTP."""

from __future__ import annotations

import asyncio
import base64
import io
import struct

import httpx
import numpy as np
import pytest
from PIL import Image

from lasro_common import PROTOCOL_HEADER, SAFETENSORS_MEDIA_TYPE, codec
from lasro_common.errors import ServiceError
from reward_service.app import create_app
from reward_service.client import AsyncRewardClient, RewardClient
from reward_service.rewards import Reward
from reward_service.settings import RewardSettings

TOKEN = "t0ken"
JPEG = ["jpeg_compressibility", "jpeg_incompressibility"]


def _app(**kw):
    app = create_app(RewardSettings(rewards=kw.pop("rewards", JPEG), **kw))
    return app


def _ready(app, url):
    assert app.state.rewards.ready.wait(30), app.state.rewards.error
    return url


@pytest.fixture
def service(serve):
    app = _app(api_token=TOKEN, max_body_mb=1, max_batch=8, max_side=256)
    return _ready(app, serve(app))


def flat_and_noise(size=64):
    rng = np.random.default_rng(0)
    flat = np.full((1, 3, size, size), 0.4, np.float32)
    return np.concatenate([flat, rng.random((1, 3, size, size), dtype=np.float32)])


def test_health_is_open_and_everything_else_needs_the_token(service):
    assert httpx.get(f"{service}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{service}/readyz").status_code == 200
    for method, path in [("GET", "/rewards"), ("POST", "/score"), ("GET", "/metrics")]:
        r = httpx.request(method, f"{service}{path}")
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
        r = httpx.request(method, f"{service}{path}", headers={"Authorization": "Bearer wrong"})
        assert r.status_code == 401


def test_jpeg_rewards_rank_flat_above_noise_through_client(service):
    with RewardClient(service, token=TOKEN) as rc:
        names = {r["name"]: r for r in rc.rewards()}
        assert set(names) == set(JPEG) and names["jpeg_compressibility"]["differentiable"] is False
        res = rc.score(flat_and_noise(), ["a", "b"], reward="jpeg_compressibility")
        assert res.scores.shape == (2,) and res.scores[0] > res.scores[1]
        assert res.version == "jpeg_compressibility@1"
        inc = rc.score(flat_and_noise(), reward="jpeg_incompressibility")
        assert inc.scores[0] < inc.scores[1]
        np.testing.assert_allclose(inc.scores, -res.scores, rtol=1e-6)
        # uint8 and the JSON form give the same numbers (PNG is lossless on uint8)
        u8 = (flat_and_noise() * 255 + 0.5).astype(np.uint8)
        a = rc.score(u8, reward="jpeg_compressibility").scores
        b = rc.score(u8, reward="jpeg_compressibility", as_json=True).scores
        np.testing.assert_allclose(a, b)


def test_weighted_combination_is_the_weighted_sum_of_components(service):
    with RewardClient(service, token=TOKEN) as rc:
        res = rc.score(flat_and_noise(), reward={"jpeg_compressibility": 2.0, "jpeg_incompressibility": 0.5})
    c, i = res.components["jpeg_compressibility"], res.components["jpeg_incompressibility"]
    np.testing.assert_allclose(res.scores, 2.0 * c + 0.5 * i, rtol=1e-6)
    assert res.raw["reward"] == {"jpeg_compressibility": 2.0, "jpeg_incompressibility": 0.5}


def test_async_client_and_protocol_header(service):
    async def main():
        async with AsyncRewardClient(service, token=TOKEN) as rc:
            return await asyncio.gather(*(rc.score(flat_and_noise(), reward="jpeg_compressibility") for _ in range(4)))

    results = asyncio.run(main())
    assert all(np.array_equal(r.scores, results[0].scores) for r in results)
    r = httpx.get(f"{service}/healthz")
    assert r.headers[PROTOCOL_HEADER] == "1"
    r = httpx.get(f"{service}/rewards", headers={PROTOCOL_HEADER: "7", "Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "protocol_mismatch"


def _raw(service, content, ctype=SAFETENSORS_MEDIA_TYPE, **headers):
    return httpx.post(f"{service}/score", content=content,
                      headers={"Content-Type": ctype, "Authorization": f"Bearer {TOKEN}", **headers})


def _st(images, **meta):
    return codec.encode({"images": images}, meta)


def _png_b64(arr):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


NAN = np.full((1, 3, 8, 8), np.nan, np.float32)
BAD = [
    ("malformed safetensors", lambda: (b"\x05\x00", SAFETENSORS_MEDIA_TYPE), 400, "malformed_body"),
    ("header lies", lambda: (struct.pack("<Q", 99) + b"{}", SAFETENSORS_MEDIA_TYPE), 400, "malformed_body"),
    ("no images tensor", lambda: (codec.encode({"x": np.zeros(3)}), SAFETENSORS_MEDIA_TYPE), 422, "invalid_input"),
    ("wrong shape", lambda: (_st(np.zeros((2, 4, 8, 8), np.float32)), SAFETENSORS_MEDIA_TYPE), 422, "invalid_shape"),
    ("wrong rank", lambda: (_st(np.zeros((3, 8, 8), np.float32)), SAFETENSORS_MEDIA_TYPE), 422, "invalid_shape"),
    ("wrong dtype", lambda: (_st(np.zeros((1, 3, 8, 8), np.float64)), SAFETENSORS_MEDIA_TYPE), 422, "invalid_dtype"),
    ("NaN", lambda: (_st(NAN), SAFETENSORS_MEDIA_TYPE), 422, "non_finite"),
    ("out of range", lambda: (_st(np.full((1, 3, 8, 8), 2.0, np.float32)), SAFETENSORS_MEDIA_TYPE), 422, "out_of_range"),
    ("prompt count", lambda: (_st(np.zeros((2, 3, 8, 8), np.uint8), prompts=["a"]), SAFETENSORS_MEDIA_TYPE), 422, "batch_mismatch"),
    ("prompts not strings", lambda: (_st(np.zeros((1, 3, 8, 8), np.uint8), prompts=[1]), SAFETENSORS_MEDIA_TYPE), 422, "invalid_input"),
    ("unknown reward", lambda: (_st(np.zeros((1, 3, 8, 8), np.uint8), reward="nope"), SAFETENSORS_MEDIA_TYPE), 404, "unknown_reward"),
    ("bad weight", lambda: (_st(np.zeros((1, 3, 8, 8), np.uint8), reward={"jpeg_compressibility": "x"}), SAFETENSORS_MEDIA_TYPE), 422, "invalid_input"),
    ("batch too big", lambda: (_st(np.zeros((9, 3, 8, 8), np.uint8)), SAFETENSORS_MEDIA_TYPE), 413, "payload_too_large"),
    ("image too big", lambda: (_st(np.zeros((1, 3, 300, 8), np.uint8)), SAFETENSORS_MEDIA_TYPE), 413, "payload_too_large"),
    ("body too big", lambda: (b"\0" * (1024 * 1024 + 1), SAFETENSORS_MEDIA_TYPE), 413, "payload_too_large"),
    ("wrong content type", lambda: (b"hello", "text/plain"), 415, "unsupported_media_type"),
    ("broken JSON", lambda: (b"{not json", "application/json"), 400, "malformed_body"),
    ("JSON without images", lambda: (b'{"prompts": []}', "application/json"), 422, "invalid_input"),
    ("bad base64", lambda: (b'{"images": ["@@@"]}', "application/json"), 400, "invalid_image"),
    ("undecodable image", lambda: (('{{"images": ["{}"]}}'.format(base64.b64encode(b"not a png").decode())).encode(),
                                   "application/json"), 422, "invalid_image"),
    ("mixed sizes", lambda: ((f'{{"images": ["{_png_b64(np.zeros((8, 8, 3), np.uint8))}", "{_png_b64(np.zeros((9, 8, 3), np.uint8))}"]}}').encode(),
                             "application/json"), 422, "invalid_shape"),
    ("empty batch", lambda: (b'{"images": []}', "application/json"), 422, "invalid_shape"),
]


@pytest.mark.parametrize("what, make, status, code", BAD, ids=[b[0] for b in BAD])
def test_bad_input_gets_its_4xx_and_a_json_error(service, what, make, status, code):
    content, ctype = make()
    r = _raw(service, content, ctype)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code and err["message"] and "Traceback" not in r.text
    # the service is unharmed: a good request still works
    ok = _raw(service, _st(np.zeros((1, 3, 8, 8), np.uint8), reward="jpeg_compressibility"))
    assert ok.status_code == 200


def test_chunked_oversize_body_is_refused(service):
    def gen():
        for _ in range(20):
            yield b"\0" * 65536

    r = httpx.post(f"{service}/score", content=gen(),
                   headers={"Content-Type": SAFETENSORS_MEDIA_TYPE, "Authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 413


def test_metrics_count_requests_and_batches(service):
    with RewardClient(service, token=TOKEN) as rc:
        rc.score(flat_and_noise(), reward="jpeg_compressibility")
        text = rc.request("GET", "/metrics").text
    assert 'lasro_requests_total{route="/score",service="reward",status="200"}' in text
    assert 'lasro_batch_samples_count{model="jpeg_compressibility",service="reward"}' in text


class CountingReward(Reward):
    """Mean brightness; counts calls and samples so tests can see batching happen."""

    name = "brightness"

    def __init__(self):
        self.calls = []

    def score(self, images, prompts):
        self.calls.append(len(prompts))
        return images.mean(dim=(1, 2, 3))


def test_concurrent_requests_are_micro_batched(serve):
    reward = CountingReward()
    app = create_app(RewardSettings(batch_max_size=64, batch_max_wait_ms=200), rewards=[reward])
    url = _ready(app, serve(app))

    async def main():
        async with AsyncRewardClient(url) as rc:
            imgs = [np.full((2, 3, 8, 8), i / 20, np.float32) for i in range(16)]
            return await asyncio.gather(*(rc.score(x) for x in imgs))

    results = asyncio.run(main())
    for i, r in enumerate(results):  # every request got its own scores back
        np.testing.assert_allclose(r.scores, [i / 20] * 2, rtol=1e-5)
    assert sum(reward.calls) == 32
    assert len(reward.calls) < 16  # fewer model calls than requests: they were merged


def test_remote_reward_proxies_to_a_second_real_server(serve):
    upstream = create_app(RewardSettings(rewards=JPEG, api_token="up"))
    up_url = _ready(upstream, serve(upstream))
    proxy = create_app(RewardSettings(rewards=["jpeg_compressibility"], remote=[f"far={up_url}/score"],
                                      remote_token="up"))
    url = _ready(proxy, serve(proxy))
    with RewardClient(url) as rc:
        assert {r["name"] for r in rc.rewards()} == {"jpeg_compressibility", "far"}
        u8 = (flat_and_noise() * 255 + 0.5).astype(np.uint8)
        local = rc.score(u8, reward="jpeg_compressibility").scores
        remote = rc.score(u8, reward="far").scores  # upstream's default reward: jpeg_compressibility
        np.testing.assert_allclose(local, remote, rtol=1e-6)


def test_remote_reward_that_answers_garbage_is_a_502(serve):
    from fastapi import FastAPI

    bad = FastAPI()

    @bad.post("/score")
    def _score():
        return {"scores": [float("inf")]}

    url_bad = serve(bad)
    proxy = create_app(RewardSettings(rewards=["jpeg_compressibility"], remote=[f"bad={url_bad}/score"]))
    url = _ready(proxy, serve(proxy))
    r = _raw(url, _st(np.zeros((1, 3, 8, 8), np.uint8), reward="bad"), Authorization="")
    assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_error"


def test_third_party_reward_by_entry_point(serve, tmp_path, monkeypatch):
    pkg = tmp_path / "my_reward_pkg.py"
    pkg.write_text("import torch\nfrom reward_service.rewards import Reward\n"
                   "class Redness(Reward):\n    name = 'redness'\n    description = 'mean red'\n"
                   "    def score(self, images, prompts):\n        return images[:, 0].mean(dim=(1, 2))\n")
    dist = tmp_path / "my_reward_pkg-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-reward-pkg\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[lasro.rewards]\nredness = my_reward_pkg:Redness\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    from reward_service.rewards import available

    assert available()["redness"] == "my_reward_pkg:Redness"
    app = create_app(RewardSettings(rewards=["redness", "jpeg_compressibility"]))
    url = _ready(app, serve(app))
    img = np.zeros((1, 3, 8, 8), np.float32)
    img[:, 0] = 0.75
    with RewardClient(url) as rc:
        assert rc.score(img, reward="redness").scores[0] == pytest.approx(0.75)


def test_client_surfaces_errors_as_service_error(service):
    with RewardClient(service, token=TOKEN, retries=0) as rc, pytest.raises(ServiceError) as e:
        rc.score(np.zeros((1, 3, 8, 8), np.uint8), reward="missing")
    assert e.value.status == 404 and e.value.code == "unknown_reward"
