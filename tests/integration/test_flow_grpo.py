"""flow_grpo's reward-server dialect, both ways, on real servers: our `--flow-grpo-route` called by a
client written in their style (requests + pickle), and our `--remote NAME=flow_grpo+URL` calling a
server written in their style; pickles that would run code are refused without running it."""

from __future__ import annotations

import base64
import contextlib
import gzip
import io
import json
import os
import pickle
from http.server import BaseHTTPRequestHandler

import httpx
import numpy as np
import pytest
import requests
import torch
from PIL import Image

from reward_service.app import create_app
from reward_service.client import RewardClient
from reward_service.rewards import Reward
from reward_service.settings import RewardSettings
from tests.flow_grpo_peer import brightness, http_server, jpeg_batch, their_client, their_server

TOKEN = "t0ken"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class Mean(Reward):
    """Mean brightness: easy to compute on the test's side."""

    name = "mean"

    def score(self, images, prompts):
        return images.mean(dim=(1, 2, 3))


class FromMetadata(Reward):
    """GenEval-shaped: reads per-sample metadata (`count`) and the prompt's length."""

    name = "from_metadata"

    def score(self, images, prompts, metadata):
        return torch.tensor([m.get("count", -1) + len(p) / 100 for p, m in zip(prompts, metadata, strict=True)],
                            dtype=torch.float32)


def _images(b: int = 3, size: int = 32, seed: int = 0) -> np.ndarray:
    """uint8 (B, H, W, 3): flat colours (JPEG keeps their mean)."""
    rng = np.random.default_rng(seed)
    return np.broadcast_to(rng.integers(0, 256, (b, 1, 1, 3), dtype=np.uint8), (b, size, size, 3)).copy()


def _serve(serve, **kw):
    rewards = kw.pop("rewards", None) or [Mean(), FromMetadata()]
    app = create_app(RewardSettings(**kw), rewards=rewards)
    url = serve(app)
    assert app.state.rewards.ready.wait(30), app.state.rewards.error
    return url


class Pwned:
    """A pickle that runs `touch PATH` when unpickled by pickle.loads."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


@pytest.fixture
def service(serve):
    return _serve(serve, flow_grpo_route="/", api_token=TOKEN, max_batch=8, max_side=256, max_body_mb=1,
                  max_decoded_mb=2)


# ------------------------------------------------------------------ server side: their client, our route
def test_their_client_gets_scores_and_outputs_matching_our_score_route(service):
    images = _images(5)
    prompts = ["a red circle", "a blue square", "two cats", "a dog", "x"]
    scores = their_client(f"{service}/", images, prompts, headers=AUTH, batch_size=2)  # 3 requests, numpy prompts
    # the same JPEG files through our JSON /score give the same numbers
    b64 = [base64.b64encode(j).decode() for j in jpeg_batch(images)]
    ours = httpx.post(f"{service}/score", json={"images": b64, "prompts": prompts, "reward": "mean"},
                      headers=AUTH).json()["scores"]
    np.testing.assert_allclose(scores, ours, rtol=1e-6)
    np.testing.assert_allclose(scores, images.reshape(5, -1).mean(1) / 255.0, atol=2 / 255)
    reply = pickle.loads(requests.post(f"{service}/", data=pickle.dumps({"images": jpeg_batch(images[:2])}),
                                       headers=AUTH).content)
    assert reply["outputs"] == reply["scores"] and reply["version"] == "mean@1"
    assert set(reply) == {"scores", "outputs", "components", "version"}


def test_per_sample_metadata_reaches_the_reward_both_routes(serve):
    url = _serve(serve, flow_grpo_route="/flow", flow_grpo_reward="from_metadata")
    images = _images(2)
    meta = [{"tag": "counting", "count": 3, "prompt": "three apples"}, {"tag": "color_attr", "count": 7}]
    # GenEval's client: no prompts, meta_datas as list(np.array_split(...)[i]), only_strict
    body = {"images": jpeg_batch(images), "meta_datas": list(np.array_split(meta, 1)[0]), "only_strict": False}
    reply = pickle.loads(requests.post(f"{url}/flow", data=pickle.dumps(body)).content)
    assert reply["scores"] == [3.0, 7.0]  # second has no 'prompt': every prompt is ""
    meta[1]["prompt"] = "seven"
    reply = pickle.loads(requests.post(f"{url}/flow", data=pickle.dumps({**body, "meta_datas": meta})).content)
    np.testing.assert_allclose(reply["scores"], [3.12, 7.05], rtol=1e-6)  # prompts taken from the metadata
    # our own /score: JSON and safetensors
    with RewardClient(url) as rc:
        chw = images.transpose(0, 3, 1, 2)
        for as_json in (True, False):
            res = rc.score(chw, ["ab", "abcd"], reward="from_metadata", metadata=[{"count": 1}, None],
                           as_json=as_json)
            np.testing.assert_allclose(res.scores, [1.02, -0.96], rtol=1e-6)
        info = {r["name"]: r for r in rc.rewards()}
        assert info["from_metadata"]["metadata"] is True and info["mean"]["metadata"] is False
    r = httpx.post(f"{url}/score", json={"images": [base64.b64encode(jpeg_batch(images)[0]).decode()],
                                         "metadata": [{}, {}]})
    assert r.status_code == 422 and r.json()["error"]["code"] == "batch_mismatch"


def test_a_pickle_that_would_run_code_is_refused_and_does_not_run(service, tmp_path):
    jpegs = jpeg_batch(_images(1))
    hostile = {
        "global": {"images": jpegs, "prompts": ["a"], "x": Pwned(tmp_path / "a")},
        "nested": {"images": [jpegs[0], Pwned(tmp_path / "b")]},
        "top": Pwned(tmp_path / "c"),
        "object_array": {"images": jpegs, "prompts": np.array(["a", Pwned(tmp_path / "d")], dtype=object)},
    }
    for what, payload in hostile.items():
        r = requests.post(f"{service}/", data=pickle.dumps(payload), headers=AUTH)
        assert r.status_code == 400, (what, r.status_code, r.text)
        assert r.json()["error"]["code"] == "unsafe_pickle", (what, r.text)
        assert "posix.system" in r.json()["error"]["message"] or "object" in r.json()["error"]["message"]
    assert not any(tmp_path.iterdir()), list(tmp_path.iterdir())  # nothing was touched
    # the same pickle does run code under plain pickle.loads: the test's payload is real
    pickle.loads(pickle.dumps(Pwned(tmp_path / "real")))  # noqa: S301
    assert (tmp_path / "real").exists()


def test_limits_auth_and_media_types_of_the_route(service):
    jpegs = jpeg_batch(_images(1))
    ok = pickle.dumps({"images": jpegs})
    assert requests.post(f"{service}/", data=ok).status_code == 401
    assert requests.post(f"{service}/", data=ok, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert requests.post(f"{service}/", data=ok, headers=AUTH).status_code == 200

    def error(payload: bytes, **headers) -> tuple[int, str]:
        r = requests.post(f"{service}/", data=payload, headers={**AUTH, **headers})
        return r.status_code, r.json()["error"]["code"]

    assert error(pickle.dumps({"images": jpegs * 9})) == (413, "payload_too_large")  # max_batch 8
    assert error(b"\x80\x04" + b"\0" * (2 * 1024 * 1024)) == (413, "payload_too_large")  # max_body_mb 1
    big = io.BytesIO()
    Image.new("RGB", (300, 8)).save(big, format="JPEG")
    assert error(pickle.dumps({"images": [big.getvalue()]})) == (413, "payload_too_large")  # max_side 256
    wide = jpeg_batch(_images(8, size=200))  # 8 x 3 x 200 x 200 float32 = 3.7 MiB > max_decoded_mb 2
    assert error(pickle.dumps({"images": wide})) == (413, "payload_too_large")
    assert error(b"not a pickle") == (400, "malformed_body")
    assert error(pickle.dumps([1, 2])) == (422, "invalid_input")
    assert error(pickle.dumps({"images": [b"GIF89a..."]})) == (422, "invalid_image")
    assert error(pickle.dumps({"images": jpegs, "prompts": ["a", "b"]})) == (422, "batch_mismatch")
    assert error(pickle.dumps({"images": jpegs, "prompts": ["x" * 5000]})) == (413, "payload_too_large")
    assert error(ok, **{"Content-Type": "application/json"}) == (415, "unsupported_media_type")
    r = requests.post(f"{service}/", data=ok, headers={**AUTH, "Content-Type": "application/octet-stream"})
    assert r.status_code == 200 and len(pickle.loads(r.content)["scores"]) == 1


def test_the_route_is_off_by_default_and_checked_at_start(serve):
    url = _serve(serve)
    jpegs = jpeg_batch(_images(1))
    assert requests.post(f"{url}/", data=pickle.dumps({"images": jpegs})).status_code in (404, 405)
    assert not any("flow_grpo" in str(op.get("tags")) for ops in httpx.get(f"{url}/openapi.json").json()["paths"].values()
                   for op in ops.values())
    with pytest.raises(ValueError, match="route of the service"):
        RewardSettings(flow_grpo_route="/score")
    app = create_app(RewardSettings(flow_grpo_route="/", flow_grpo_reward="nope"), rewards=[Mean()])
    url = serve(app)
    r = httpx.get(f"{url}/readyz")
    assert r.status_code == 503 and "flow_grpo_reward 'nope'" in r.json()["error"]["message"]


# ------------------------------------------------------------------ client side: our --remote, their server
def test_remote_flow_grpo_server_scores_through_our_score_route(serve):
    with their_server(brightness) as far:
        url = _serve(serve, rewards=[Mean()], remote=[f"bright=flow_grpo+{far['url']}/"],
                     reward_options={"bright": {"batch_size": 2}})
        images = _images(3)
        chw = images.transpose(0, 3, 1, 2)
        meta = [{"tag": "single_object", "n": i} for i in range(3)]
        with RewardClient(url) as rc:
            res = rc.score(chw, ["a", "b", "c"], reward="bright", metadata=meta)
            mean = rc.score(chw, reward="mean").scores
        np.testing.assert_allclose(res.scores, mean, atol=2 / 255)  # JPEG of flat colours
        assert res.version == "bright@1"
        sent = far["requests"]
        assert [len(d["images"]) for d in sent] == [2, 1]  # batch_size
        first = sent[0]
        assert first["prompts"] == ["a", "b"] and first["meta_datas"] == meta[:2] and first["only_strict"] is True
        # JPEG at flow_grpo's quality: byte for byte what their client makes of the same pixels
        assert first["images"] == jpeg_batch(images[:2])


def test_remote_reads_outputs_or_a_named_key_and_refuses_a_hostile_reply(serve, tmp_path):
    def deqa(images, data):
        return {"outputs": [0.25] * len(images)}

    def ddpo_llava(images, data):  # ddpo-pytorch's bertscore server: numpy (B, 1) arrays
        return {"recall": np.full((len(images), 1), 0.5, np.float32), "outputs": [["text"]] * len(images)}

    images = _images(2).transpose(0, 3, 1, 2)
    with their_server(deqa) as a, their_server(ddpo_llava) as b, \
            their_server(raw_reply=pickle.dumps({"scores": [1.0, Pwned(tmp_path / "x")]})) as c, \
            their_server(lambda images, data: {"scores": [1.0]}) as d, \
            their_server(lambda images, data: 1 / 0) as e:
        url = _serve(serve, rewards=[Mean()], remote=[f"deqa=flow_grpo+{a['url']}", f"llava=flow_grpo+{b['url']}/",
                                                      f"evil=flow_grpo+{c['url']}", f"short=flow_grpo+{d['url']}",
                                                      f"broken=flow_grpo+{e['url']}"],
                     reward_options={"llava": {"score_key": "recall"}})
        with RewardClient(url, retries=0) as rc:
            assert rc.score(images, reward="deqa").scores.tolist() == [0.25, 0.25]
            assert rc.score(images, reward="llava").scores.tolist() == [0.5, 0.5]
            for name, words in (("evil", "plain-data pickle"), ("short", "2 finite scores"),
                                ("broken", "ZeroDivisionError")):
                r = httpx.post(f"{url}/score", json={"images": [base64.b64encode(j).decode() for j in
                                                                jpeg_batch(_images(2))], "reward": name})
                assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_error", (name, r.text)
                assert words in r.json()["error"]["message"], (name, r.text)
    assert not (tmp_path / "x").exists()


@contextlib.contextmanager
def _endless_json():
    """A JSON endpoint whose reply has no Content-Length and never ends (until the client hangs up)."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            if body.get("reward") == "gzip":  # a small gzip body (a bomb would be small too): refused unread
                reply = gzip.compress(b'{"scores": [1.0, 1.0]}')
                self.send_header("Content-Encoding", "gzip")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)
                return
            self.end_headers()
            try:
                self.wfile.write(b'{"scores": [1.0, 1.0], "pad": "')
                while True:
                    self.wfile.write(b"x" * 65536)
            except OSError:  # the client stopped reading
                pass

        def log_message(self, *args) -> None:
            pass

    with http_server(Handler) as url:
        yield url


def test_remote_reply_over_the_size_limit_is_refused_both_forms(serve):
    big = pickle.dumps({"scores": [1.0, 1.0], "pad": b"x" * (3 << 19)})  # 1.5 MiB
    small = pickle.dumps({"scores": [1.0, 2.0], "pad": b"x" * (1 << 19)})  # 0.5 MiB
    with their_server(raw_reply=big) as a, their_server(raw_reply=small) as b, _endless_json() as c:
        url = _serve(serve, rewards=[Mean()],
                     remote=[f"big=flow_grpo+{a['url']}", f"small=flow_grpo+{b['url']}", f"bigjson={c}/score",
                             f"gzipped={c}/score"],
                     reward_options={"gzipped": {"upstream_reward": "gzip"},
                                     **{n: {"max_reply_mb": 1} for n in ("big", "small", "bigjson")}})
        images = _images(2).transpose(0, 3, 1, 2)
        with RewardClient(url, retries=0) as rc:
            assert rc.score(images, reward="small").scores.tolist() == [1.0, 2.0]
        for name in ("big", "bigjson"):
            r = httpx.post(f"{url}/score", json={"images": [base64.b64encode(j).decode() for j in
                                                            jpeg_batch(_images(2))], "reward": name})
            assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_error", (name, r.text)
            assert "over the limit of 1,048,576 bytes" in r.json()["error"]["message"], (name, r.text)
        r = httpx.post(f"{url}/score", json={"images": [base64.b64encode(j).decode() for j in
                                                        jpeg_batch(_images(2))], "reward": "gzipped"})
        assert r.status_code == 502 and "gzip-encoded, which was not asked for" in r.text, r.text


def test_remote_options_are_checked_at_start(serve):
    app = create_app(RewardSettings(rewards=[], remote=["far=flow_grpo+http://127.0.0.1:9/"],
                                    reward_options={"far": {"jpeg_qualty": 90}}))
    url = serve(app)
    r = httpx.get(f"{url}/readyz")
    assert r.status_code == 503 and "jpeg_qualty" in r.json()["error"]["message"]
    with pytest.raises(ValueError, match="NAME=flow_grpo"):
        RewardSettings(remote=["far=flow_grpo+ftp://x"])
