"""R1 generated and hostile requests (no 5xx), R5 auth on every route, R6 no code-running
deserialisation of network data. Both services run as `python -m` processes on 127.0.0.1."""

from __future__ import annotations

import ast
import base64
import io
import json
import os
import pickle
import random
import struct
import time
from collections import defaultdict
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

from lasro_common import PROTOCOL_HEADER, SAFETENSORS_MEDIA_TYPE, codec

from .harness import ROOT, TOKEN, RedisProc, Service, surrogate_env, wait_for

OPEN = {"/healthz", "/readyz"}


def _services(tmp: Path, learn_redis: str | None = None) -> tuple[Service, Service]:
    rew = Service("reward_service", tmp, {"REWARD_REWARDS": '["jpeg_compressibility", "toy_attribute_binding"]',
                                          "REWARD_MAX_SIDE": "512"})
    env = surrogate_env(tmp, SURROGATE_LEARN="true", SURROGATE_REDIS_URL=learn_redis) if learn_redis else \
        {"SURROGATE_LEARN": "false"}
    sur = Service("surrogate_service", tmp, env)
    rew.start()
    sur.start()
    return rew, sur


# ------------------------------------------------------------------ hand-made hostile bodies
def _png(side: int = 32, fmt: str = "PNG") -> str:
    buf = io.BytesIO()
    Image.new("RGB", (side, side), "red").save(buf, format=fmt)
    return base64.b64encode(buf.getvalue()).decode()


def _raw_st(header: str, data: bytes = b"") -> bytes:
    h = header.encode()
    return struct.pack("<Q", len(h)) + h + data


NEST = "[" * 100_000 + "]" * 100_000


def hostile_bodies() -> list[tuple[str, bytes, str]]:
    """(what, body, content type): every finding of issue 15 and its neighbours."""
    st = SAFETENSORS_MEDIA_TYPE
    img = np.zeros((1, 3, 32, 32), np.uint8)
    lat = np.zeros((1, 4, 8, 8), np.float32)
    out = [
        ("nested JSON", ('{"images": ' + NEST + "}").encode(), "application/json"),
        ("nested JSON prompts", ('{"images": ["x"], "prompts": ' + NEST + "}").encode(), "application/json"),
        ("nested safetensors header", _raw_st('{"x": ' + NEST + "}"), st),
        ("nested metadata", _raw_st(json.dumps({"__metadata__": {"prompts": NEST}})), st),
        ("shape 2^32 x 2^32", _raw_st('{"images": {"dtype": "U8", "shape": [4294967296, 4294967296], "data_offsets": [0, 0]}}'), st),
        ("latents 2^32 x 2^32", _raw_st('{"latents": {"dtype": "F32", "shape": [4294967296, 4294967296, 1, 1], "data_offsets": [0, 0]}}'), st),
        ("dimension 2^64", _raw_st('{"images": {"dtype": "U8", "shape": [18446744073709551616], "data_offsets": [0, 0]}}'), st),
        ("dimension 2^64 x 0", _raw_st('{"latents": {"dtype": "F32", "shape": [18446744073709551616, 0], "data_offsets": [0, 0]}}'), st),
        ("offsets Infinity", _raw_st('{"images": {"dtype": "U8", "shape": [1], "data_offsets": [0, Infinity]}}', b"\0" * 8), st),
        ("offsets NaN", _raw_st('{"latents": {"dtype": "U8", "shape": [1], "data_offsets": [NaN, 1]}}', b"\0" * 8), st),
        ("head 1.0", codec.encode({"latents": lat}, {"prompts": ["a"], "head": 1.0}), st),
        ("head true", codec.encode({"latents": lat}, {"prompts": ["a"], "head": True}), st),
        ("head 2^70", codec.encode({"latents": lat}, {"prompts": ["a"], "head": 2**70}), st),
        ("weight 1e308", codec.encode({"images": img}, {"reward": {"jpeg_compressibility": 1e308}}), st),
        ("weight 1e39", codec.encode({"images": img.astype(np.float32)}, {"reward": {"jpeg_compressibility": 1e39}}), st),
        ("weight Infinity", b'{"images": ["' + _png().encode() + b'"], "reward": {"jpeg_compressibility": Infinity}}',
         "application/json"),
        ("5 MB prompt", codec.encode({"images": img}, {"prompts": ["x" * 5_000_000]}), st),
        ("5 MB prompt (latents)", codec.encode({"latents": lat}, {"prompts": ["x" * 5_000_000], "head": 1}), st),
        ("latents 1e30", codec.encode({"latents": np.full((1, 4, 8, 8), 1e30, np.float32)}, {"prompts": ["a"], "head": 1}), st),
        ("latents NaN", codec.encode({"latents": np.full((1, 4, 8, 8), np.nan, np.float32)}, {"prompts": ["a"], "head": 1}), st),
        ("latents fp16 6e4", codec.encode({"latents": np.full((1, 4, 8, 8), 6e4, np.float16)}, {"prompts": ["a"], "head": 2}), st),
        ("images NaN", codec.encode({"images": np.full((1, 3, 8, 8), np.nan, np.float32)}), st),
        ("zero-size batch", codec.encode({"images": np.zeros((0, 3, 8, 8), np.uint8)}), st),
        ("16 x 2048^2 PNG", json.dumps({"images": [_png(2048)] * 16}).encode(), "application/json"),
        ("GIF", json.dumps({"images": [_png(8, "GIF")]}).encode(), "application/json"),
        ("BMP", json.dumps({"images": [_png(8, "BMP")]}).encode(), "application/json"),
        ("TIFF", json.dumps({"images": [_png(8, "TIFF")]}).encode(), "application/json"),
        ("truncated PNG", json.dumps({"images": [_png(64)[:60]]}).encode(), "application/json"),
        ("pickle body", pickle.dumps({"x": 1}), "application/octet-stream"),
        ("empty body", b"", st),
        ("8 header bytes only", struct.pack("<Q", 2**63), st),
    ]
    return out


def _random_request(rng: random.Random, path: str, method: str) -> dict:
    """A random mutation: random bytes, content type, query, headers, method."""
    ctype = rng.choice([SAFETENSORS_MEDIA_TYPE, "application/json", "text/plain", "", "multipart/form-data",
                        "application/json; charset=utf-16"])
    body = bytes(rng.getrandbits(8) for _ in range(rng.choice([0, 1, 8, 64, 1024])))
    if rng.random() < 0.3 and body:
        body = struct.pack("<Q", rng.choice([0, 2, 8, len(body), 2**31, 2**64 - 1])) + body
    query = {f"q{rng.randint(0, 9)}": "".join(chr(rng.randint(32, 0x2FFF)) for _ in range(rng.randint(0, 8)))}
    headers = {"Content-Type": ctype, PROTOCOL_HEADER: rng.choice(["1", "1.9", "2", "x", ""])}
    m = method if rng.random() < 0.8 else rng.choice(["GET", "POST", "PUT", "DELETE", "PATCH"])
    return {"method": m, "url": path, "content": body if m != "GET" else None, "params": query, "headers": headers}


def r1_fuzz(tmp: Path, per_endpoint: int) -> dict:
    """>= per_endpoint requests per endpoint: schemathesis cases (positive and negative), then the
    hand-made hostile bodies, then random mutations to fill the quota. Counts every 5xx."""
    import schemathesis
    from hypothesis import strategies as st
    from schemathesis import GenerationMode
    from schemathesis.transport.requests import serialize_binary

    @schemathesis.serializer(SAFETENSORS_MEDIA_TYPE)
    def _safetensors(ctx, value):  # generated safetensors bodies go on the wire as raw bytes
        return {"data": serialize_binary(value)}

    rew, sur = _services(tmp)
    counts: dict[str, dict[str, int]] = defaultdict(lambda: {"schemathesis": 0, "hostile": 0, "random": 0, "5xx": 0})
    fivexx: list[str] = []
    transport: list[str] = []
    t0 = time.monotonic()
    try:
        for svc in (rew, sur):
            schema = schemathesis.openapi.from_url(f"{svc.url}/openapi.json")
            client = httpx.Client(base_url=svc.url, timeout=60)

            def send(key: str, kind: str, what: str, _k: dict = counts, _c: httpx.Client = client, **req) -> None:
                try:
                    r = _c.request(**req)
                except (UnicodeEncodeError, ValueError, TypeError, httpx.InvalidURL, httpx.LocalProtocolError):
                    _k[key]["unsendable"] = _k[key].get("unsendable", 0) + 1  # httpx refused to send it
                    return
                except httpx.TransportError as e:  # counted and reported; the service must stay up
                    _k[key][kind] += 1
                    _k[key]["transport_errors"] = _k[key].get("transport_errors", 0) + 1
                    transport.append(f"{key} {what}: {type(e).__name__}")
                    return
                _k[key][kind] += 1
                if r.status_code >= 500:
                    _k[key]["5xx"] += 1
                    fivexx.append(f"{key} {what}: {r.status_code} {r.text[:200]}")

            for result in schema.get_all_operations():
                op = result.ok()
                key = f"{svc.module.split('_')[0]} {op.method.upper()} {op.path}"
                strategy = st.one_of(op.as_strategy(GenerationMode.POSITIVE), op.as_strategy(GenerationMode.NEGATIVE))

                _generated(strategy, per_endpoint, key, svc, send)
                if op.method.upper() == "POST":
                    for what, body, ctype in hostile_bodies():
                        send(key, "hostile", what, method="POST", url=op.path, content=body,
                             headers={"Content-Type": ctype, **svc.headers})
                rng = random.Random(hash(key) & 0xFFFF)
                while sum(counts[key][k] for k in ("schemathesis", "hostile", "random")) < per_endpoint:
                    req = _random_request(rng, op.path, op.method.upper())
                    req["headers"].update(svc.headers if rng.random() < 0.8 else {})
                    send(key, "random", f"random {req['method']}", **req)
            client.close()
        alive = all(httpx.get(f"{s.url}/healthz", timeout=10).status_code == 200 for s in (rew, sur))
    finally:
        rew.stop()
        sur.stop()
    total = {k: sum(v[k] for v in counts.values()) for k in ("schemathesis", "hostile", "random", "5xx")}
    least = min(sum(v[k] for k in ("schemathesis", "hostile", "random")) for v in counts.values())
    return {"id": "R1", "holds": total["5xx"] == 0 and least >= per_endpoint and alive,
            "summary": f"{len(counts)} endpoints, >= {least} requests each ({sum(total.values()) - total['5xx']} in all: "
                       f"{total['schemathesis']} schemathesis, {total['hostile']} hostile, {total['random']} random); "
                       f"{total['5xx']} x 5xx",
            "endpoints": {k: dict(v) for k, v in counts.items()}, "five_xx": fivexx[:20],
            "transport_errors": transport[:20],
            "services_alive_after": alive, "seconds": round(time.monotonic() - t0, 1)}


def _generated(strategy, n: int, key: str, svc: Service, send) -> None:
    """Up to n schemathesis cases (hypothesis stops early when an operation has fewer distinct
    inputs), each with the right, a missing or a wrong token."""
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st

    tokens = {"right": svc.headers, "missing": {}, "wrong": {"Authorization": "Bearer nope"}}

    @settings(max_examples=n, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case=strategy, auth=st.sampled_from(["right", "right", "missing", "wrong"]))
    def run(case, auth):
        kw = case.as_transport_kwargs(base_url=svc.url, headers=tokens[auth])
        send(key, "schemathesis", f"schemathesis case {case.method} {case.path}", method=kw["method"],
             url=kw["url"], headers=dict(kw.get("headers") or {}), params=kw.get("params"),
             content=_body(kw), timeout=60)

    run()


def _body(kw: dict) -> bytes | None:
    if "json" in kw:
        return json.dumps(kw["json"]).encode()
    data = kw.get("data")
    if isinstance(data, dict) and "data" in data:  # what our safetensors serializer hands back
        data = data["data"]
    if isinstance(data, str):
        return data.encode()
    return data


# ------------------------------------------------------------------ R5
def r5_auth(tmp: Path) -> dict:
    rew, sur = _services(tmp)
    checked, failures = [], []
    try:
        for svc in (rew, sur):
            spec = httpx.get(f"{svc.url}/openapi.json", timeout=10).json()
            for path, ops in spec["paths"].items():
                if path in OPEN:
                    continue
                for method in ops:
                    for name, headers in (("missing", {}), ("wrong", {"Authorization": "Bearer wrong-" + TOKEN})):
                        r = httpx.request(method.upper(), svc.url + path, headers=headers, timeout=30)
                        ok = (r.status_code == 401 and r.json().get("error", {}).get("code") == "unauthorized"
                              and r.headers.get_list(PROTOCOL_HEADER) == ["1"])
                        (checked if ok else failures).append(f"{svc.module} {method.upper()} {path} ({name}): {r.status_code}")
            for path in OPEN:
                if httpx.get(svc.url + path, timeout=10).status_code != 200:
                    failures.append(f"{svc.module} {path} is not open")
    finally:
        rew.stop()
        sur.stop()
    return {"id": "R5", "holds": not failures and bool(checked),
            "summary": f"{len(checked)} checks ({len(checked) // 2} routes x missing/wrong token): all 401; "
                       f"{len(failures)} failures; /healthz, /readyz open",
            "checked": checked, "failures": failures}


# ------------------------------------------------------------------ R6
UNSAFE_CALLS = {("pickle", "load"), ("pickle", "loads"), ("pickle", "Unpickler"), ("dill", "load"), ("dill", "loads"),
                ("marshal", "loads"), ("marshal", "load"), ("shelve", "open"), ("joblib", "load"),
                ("pandas", "read_pickle"), ("pd", "read_pickle"), ("jsonpickle", "decode")}
NETWORK_FACING = ("lasro_common", "lasro_diffusion", "reward_service", "surrogate_service", "trainer")
OFFLINE = ("toyworld",)  # `python -m toyworld build`: reads only the files its own earlier stages wrote
SCANNED = NETWORK_FACING + OFFLINE


def scan_sources() -> list[str]:
    """Every call in the project's packages that can run code while reading data."""
    hits = []
    for pkg in SCANNED:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in ast.walk(tree):
                if not isinstance(node, ast.Call):
                    continue
                f, where = node.func, f"{path.relative_to(ROOT)}:{node.lineno}"
                kw = {k.arg: k.value for k in node.keywords}
                if isinstance(f, ast.Name) and f.id in ("eval", "exec"):
                    hits.append(f"{where} {f.id}()")
                if not isinstance(f, ast.Attribute):
                    continue
                owner = f.value.id if isinstance(f.value, ast.Name) else getattr(f.value, "attr", "")
                if (owner, f.attr) in UNSAFE_CALLS:
                    hits.append(f"{where} {owner}.{f.attr}()")
                elif f.attr == "load" and owner == "torch":
                    safe = isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True
                    if not safe:
                        hits.append(f"{where} torch.load() without weights_only=True")
                elif f.attr == "load" and owner in ("np", "numpy"):
                    if isinstance(kw.get("allow_pickle"), ast.Constant) and kw["allow_pickle"].value:
                        hits.append(f"{where} numpy.load(allow_pickle=True)")
                elif f.attr == "load" and owner == "yaml":
                    hits.append(f"{where} yaml.load()")
    return hits


class _Bomb:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def r6_no_code_from_data(tmp: Path) -> dict:
    """Static: no pickle-like loader in the code. Dynamic: a pickle that would create a file if
    unpickled, sent to every POST route in every body form and as a stream entry: no file."""
    all_hits = scan_sources()
    hits = [h for h in all_hits if h.split("/")[0] in NETWORK_FACING]
    offline = [h for h in all_hits if h not in hits]
    marker = tmp / "UNPICKLED"
    payload = pickle.dumps(_Bomb(marker))
    redis = RedisProc(tmp / "redis")
    redis.start()
    rew, sur = _services(tmp, learn_redis=redis.url)
    sent, statuses = 0, defaultdict(int)
    try:
        forms = [("application/octet-stream", payload), ("application/python-pickle", payload),
                 (SAFETENSORS_MEDIA_TYPE, payload), ("application/json", payload),
                 (SAFETENSORS_MEDIA_TYPE, codec.encode({"images": np.frombuffer(payload, np.uint8)},
                                                       {"prompts": base64.b64encode(payload).decode()})),
                 (SAFETENSORS_MEDIA_TYPE, _raw_st(json.dumps({"__metadata__": {"prompts": payload.decode("latin-1")}}))),
                 ("application/json", json.dumps({"images": [base64.b64encode(payload).decode()]}).encode())]
        for svc, paths in ((rew, ["/score", "/grad"]), (sur, ["/score", "/grad"])):
            for path in paths:
                for ctype, body in forms:
                    r = httpx.post(svc.url + path, content=body, headers={"Content-Type": ctype, **svc.headers}, timeout=30)
                    sent += 1
                    statuses[r.status_code] += 1
        r = redis.client()
        entry = r.xadd("lasro:groups", {"v": 1, "data": payload})
        r.xadd("lasro:groups", {"v": 1, "data": b"\x80\x04" + payload})
        wait_for(lambda: len(r.xrange("lasro:groups:dead")) == 2, 120, "both entries dead-lettered")
        dead = [f[b"entry_id"].decode() for _, f in r.xrange("lasro:groups:dead")]
    finally:
        rew.stop()
        sur.stop()
        redis.kill()
    ran = marker.exists()
    return {"id": "R6", "holds": not hits and not ran and not any(s >= 500 for s in statuses),
            "summary": f"{len(hits)} code-running loaders in the {len(NETWORK_FACING)} network-facing packages "
                       f"(torch.load only with weights_only=True; {len(offline)} in the offline toy-world build, "
                       f"on its own files); a pickle bomb sent {sent} ways over HTTP and twice through Redis "
                       f"(dead-lettered) ran {'SOMETHING' if ran else 'nothing'}",
            "unsafe_calls": hits, "offline_build_calls": offline, "http_statuses": dict(statuses), "dead_lettered": dead,
            "first_entry": entry.decode(), "marker_created": ran}
