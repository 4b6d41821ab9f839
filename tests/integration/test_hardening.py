"""Issue 15, request side: what one request may cost, what every answer looks like, and what a
hostile body gets. Real uvicorn servers (tests/conftest.py), raw HTTP and the project's clients."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import socket
import threading

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from lasro_common import PROTOCOL_HEADER, SAFETENSORS_MEDIA_TYPE, codec
from lasro_common.errors import ServiceError
from reward_service.app import create_app
from reward_service.client import RewardClient
from reward_service.rewards import Reward
from reward_service.settings import RewardSettings

TOKEN = "t0ken"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ST = {"Content-Type": SAFETENSORS_MEDIA_TYPE, **AUTH}


class Brightness(Reward):
    """Mean brightness: cheap and differentiable, so /grad can be exercised without weights."""

    name = "brightness"
    differentiable = True

    def score(self, images, prompts):
        return images.mean(dim=(1, 2, 3))


class Contrast(Brightness):
    """Scores of a few units, like the JPEG rewards: a weight of 1e308 overflows their sum."""

    name = "contrast"

    def score(self, images, prompts):
        return 4.0 * images.std(dim=(1, 2, 3)) + 2.0


def _start(serve, **kw):
    rewards = kw.pop("rewards", None) or [Brightness(), Contrast()]
    app = create_app(RewardSettings(api_token=TOKEN, **kw), rewards=rewards)
    url = serve(app)
    assert app.state.rewards.ready.wait(30), app.state.rewards.error
    return app, url


@pytest.fixture
def service(serve):
    return _start(serve, max_batch=16, max_side=1024, max_decoded_mb=16, max_body_mb=8)[1]


def _png_b64(side: int, seed: int = 0) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (side, side), (seed % 256, 40, 90)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _st(images, **meta) -> bytes:
    return codec.encode({"images": images}, meta)


# ------------------------------------------------------------------ defect 1: decoded size
def test_json_score_is_refused_by_decoded_size_before_decoding(service):
    """4 PNGs of 1024 x 1024: 20 KB on the wire, 48 MiB as float32 > the 16 MiB cap."""
    body = {"images": [_png_b64(1024, i) for i in range(4)]}
    r = httpx.post(f"{service}/score", json=body, headers=AUTH, timeout=60)
    assert r.status_code == 413, r.text[:300]
    assert r.json()["error"]["code"] == "payload_too_large" and "decoded" in r.json()["error"]["message"]
    ok = httpx.post(f"{service}/score", json={"images": [_png_b64(256)]}, headers=AUTH, timeout=60)
    assert ok.status_code == 200, ok.text


def test_safetensors_score_is_refused_by_decoded_size(service):
    """uint8 becomes float32: 6 MiB on the wire, 24 MiB decoded."""
    r = httpx.post(f"{service}/score", content=_st(np.zeros((2, 3, 1024, 1024), np.uint8)), headers=ST, timeout=60)
    assert r.status_code == 413 and "decoded" in r.json()["error"]["message"], r.text[:300]


def test_image_decoding_runs_off_the_event_loop(serve, monkeypatch):
    """Decoding a batch of PNGs is CPU work: it must run in a worker thread, never on the loop
    that answers /healthz."""
    seen: list[bool] = []
    real = Image.open

    def spy(*a, **kw):
        try:
            asyncio.get_running_loop()
            seen.append(True)
        except RuntimeError:
            seen.append(False)
        return real(*a, **kw)

    monkeypatch.setattr(Image, "open", spy)
    _, url = _start(serve)
    r = httpx.post(f"{url}/score", json={"images": [_png_b64(64), _png_b64(64)]}, headers=AUTH, timeout=60)
    assert r.status_code == 200, r.text
    assert seen and not any(seen), f"{sum(seen)} of {len(seen)} images were opened on the event loop"


def test_memory_budget_bounds_requests_in_flight(serve):
    """A request that alone exceeds the service's memory budget can never run: 413, said so."""
    _, url = _start(serve, max_side=2048, max_decoded_mb=512, memory_budget_mb=32)
    body = {"images": [_png_b64(2048)]}  # 48 MiB as float32
    r = httpx.post(f"{url}/score", json=body, headers=AUTH, timeout=60)
    assert r.status_code == 413 and "memory budget" in r.json()["error"]["message"], r.text[:300]


# ------------------------------------------------------------------ defect 5: hostile bodies
NESTED = "[" * 50_000 + "]" * 50_000


@pytest.mark.parametrize("body", [
    '{"images": ' + NESTED + "}",
    '{"images": ["x"], "prompts": ' + NESTED + "}",
    '{"images": [], "reward": {"a": ' + NESTED + "}}",
], ids=["images", "prompts", "reward"])
def test_deeply_nested_json_is_a_400(service, body):
    r = httpx.post(f"{service}/score", content=body, headers={"Content-Type": "application/json", **AUTH})
    assert r.status_code == 400 and r.json()["error"]["code"] == "malformed_body", r.text[:300]


def test_hostile_safetensors_header_is_a_400(service):
    import struct

    header = b'{"images": {"dtype": "U8", "shape": [4294967296, 4294967296], "data_offsets": [0, 0]}}'
    body = struct.pack("<Q", len(header)) + header
    r = httpx.post(f"{service}/score", content=body, headers=ST)
    assert r.status_code == 400 and r.json()["error"]["code"] == "malformed_body", r.text[:300]


# ------------------------------------------------------------------ defect 6: finite results
def test_huge_weight_is_not_a_200_with_null_scores(service):
    img = np.full((2, 3, 8, 8), 0.5, np.float32)
    r = httpx.post(f"{service}/score", content=_st(img, reward={"contrast": 1e308}), headers=ST)
    assert r.status_code == 422 and r.json()["error"]["code"] == "non_finite_output", r.text[:300]
    r = httpx.post(f"{service}/score", content=_st(img, reward={"brightness": 1e300}), headers=ST)
    assert r.status_code == 200 and all(np.isfinite(r.json()["scores"])), r.text[:300]


def test_grad_with_a_weight_beyond_float32_is_a_422(service):
    img = np.full((1, 3, 8, 8), 0.5, np.float32)
    r = httpx.post(f"{service}/grad", content=_st(img, reward={"brightness": 1e39}), headers=ST)
    assert r.status_code == 422 and r.json()["error"]["code"] == "non_finite_output", r.text[:300]
    r = httpx.post(f"{service}/grad", content=_st(img, reward={"brightness": 2.0}), headers=ST)
    out = codec.decode(r.content)
    assert np.isfinite(out.tensors["grad"]).all() and np.isfinite(out.tensors["scores"]).all()


# ------------------------------------------------------------------ defect 8: prompt length
def test_prompt_length_is_capped(service):
    img = np.zeros((1, 3, 8, 8), np.uint8)
    r = httpx.post(f"{service}/score", content=_st(img, prompts=["x" * 5_000_000]), headers=ST, timeout=30)
    assert r.status_code == 413 and "prompt" in r.json()["error"]["message"], r.text[:300]
    r = httpx.post(f"{service}/score", json={"images": [_png_b64(8)], "prompts": ["y" * 100_000]},
                   headers=AUTH, timeout=30)
    assert r.status_code == 413, r.text[:300]


# ------------------------------------------------------------------ defect 10: small ones
def test_405_names_the_allowed_methods(service):
    r = httpx.get(f"{service}/score", headers=AUTH)
    assert r.status_code == 405 and r.headers["allow"] == "POST", r.headers
    assert set(r.json()) == {"error"}


def test_protocol_header_is_sent_once_on_every_answer(service):
    answers = [httpx.get(f"{service}/healthz"),
               httpx.get(f"{service}/rewards"),  # 401
               httpx.get(f"{service}/rewards", headers=AUTH),  # 200
               httpx.post(f"{service}/score", content=b"{", headers={"Content-Type": "application/json", **AUTH}),
               httpx.post(f"{service}/score", content=b"\0" * (9 * 1024 * 1024), headers=ST),  # 413 early
               httpx.get(f"{service}/rewards", headers={PROTOCOL_HEADER: "9", **AUTH}),  # 400 early
               httpx.get(f"{service}/nope", headers=AUTH)]
    for r in answers:
        assert r.headers.get_list(PROTOCOL_HEADER) == ["1"], (r.status_code, r.headers)


def test_openapi_documents_401_on_every_protected_route_and_the_docs_pages_are_open(service):
    spec = httpx.get(f"{service}/openapi.json").json()
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            if path in ("/healthz", "/readyz"):
                continue
            assert "401" in op["responses"], (method, path)
    assert httpx.get(f"{service}/redoc").status_code == 200  # served offline (tests/integration/test_api_docs.py)
    assert httpx.get(f"{service}/docs").status_code == 200


def test_only_png_and_jpeg_are_accepted_over_http(service):
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(buf, format="BMP")
    r = httpx.post(f"{service}/score", json={"images": [base64.b64encode(buf.getvalue()).decode()]}, headers=AUTH)
    assert r.status_code == 422 and "PNG or JPEG" in r.json()["error"]["message"], r.text[:300]


# ------------------------------------------------------------------ defect 7: early answers
def _early_answer_server(status: int, code: str) -> tuple[str, threading.Thread]:
    """A raw server that answers as soon as the headers are in and closes without reading the
    body: the kernel then resets the connection under a client that is still sending."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()

    def run():
        conn, _ = srv.accept()
        data = b""
        while b"\r\n\r\n" not in data:
            data += conn.recv(65536)
        body = json.dumps({"error": {"code": code, "message": "refused early"}}).encode()
        conn.sendall(b"HTTP/1.1 %d Early\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
                     b"connection: close\r\n\r\n%s" % (status, len(body), body))
        conn.close()
        srv.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return f"http://127.0.0.1:{srv.getsockname()[1]}", t


@pytest.mark.parametrize("status, code", [(401, "unauthorized"), (413, "payload_too_large"), (400, "protocol_mismatch")])
def test_client_turns_an_early_answer_into_the_servers_error(status, code):
    url, t = _early_answer_server(status, code)
    big = np.zeros((64, 3, 256, 256), np.float32)  # 48 MiB: far more than the socket buffers hold
    with RewardClient(url, retries=0) as rc, pytest.raises(ServiceError) as e:
        rc.score(big)
    t.join(10)
    assert e.value.status == status and e.value.code == code, e.value


def test_service_refuses_a_large_upload_early_and_the_client_gets_the_error(serve):
    _, url = _start(serve, max_body_mb=1)
    big = np.zeros((64, 3, 256, 256), np.float32)
    with RewardClient(url, retries=0) as rc, pytest.raises(ServiceError) as e:
        rc.score(big)
    assert e.value.status == 413
    with RewardClient(url, token="wrong", retries=0) as rc, pytest.raises(ServiceError) as e:
        rc.score(np.zeros((8, 3, 128, 128), np.float32))  # 1.5 MiB > 1 MiB, but 401 comes first
    assert e.value.status in (401, 413)
    with RewardClient(url, token=TOKEN) as rc:  # the service is unharmed
        assert rc.score(np.zeros((1, 3, 8, 8), np.float32)).scores.shape == (1,)


# ------------------------------------------------------------------ surrogate side
@pytest.fixture(scope="module")
def surrogate(tiny_pipelines):
    from surrogate_service.app import create_app as surrogate_app
    from surrogate_service.settings import SurrogateSettings
    from tests.conftest import serve_in_thread

    app = surrogate_app(SurrogateSettings(base_model=str(tiny_pipelines["sd"]), learn=False, head_channels=16,
                                          max_latent_side=32, max_batch=8, api_token=TOKEN))
    with serve_in_thread(app) as url:
        assert app.state.surrogate.ready.wait(60), app.state.surrogate.error
        yield url


@pytest.mark.parametrize("head", [1.0, 2.0, "1.0", [1], {"h": 1}, -1, 2**70])
def test_surrogate_head_must_be_the_integer_1_or_2(surrogate, head):
    body = codec.encode({"latents": np.zeros((1, 4, 8, 8), np.float32)}, {"prompts": ["a"], "head": head})
    for path in ("/grad", "/score"):
        r = httpx.post(surrogate + path, content=body, headers=ST)
        assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_head", (path, r.text[:300])


def test_surrogate_prompt_length_is_capped(surrogate):
    body = codec.encode({"latents": np.zeros((1, 4, 8, 8), np.float32)}, {"prompts": ["x" * 5_000_000], "head": 1})
    r = httpx.post(surrogate + "/grad", content=body, headers=ST, timeout=30)
    assert r.status_code == 413 and "prompt" in r.json()["error"]["message"], r.text[:300]


def test_surrogate_answers_stay_finite_at_the_latent_limit(surrogate):
    from surrogate_service.client import SurrogateClient

    z = torch.full((2, 4, 8, 8), 9e3)
    with SurrogateClient(surrogate, token=TOKEN) as sc:
        try:
            res = sc.grad(z, ["a", "b"], head=1)
        except ServiceError as e:
            assert 400 <= e.status < 500
        else:
            assert torch.isfinite(res.scores).all() and torch.isfinite(res.grad).all()
