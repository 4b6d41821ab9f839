"""Hostile bodies found by fuzzing (issue 15): every one must become a 4xx `WireError` with a
message, never another exception (which the services would answer with a 500)."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from lasro_common import codec
from lasro_common.errors import InvalidInput, MalformedBody, PayloadTooLarge, WireError
from lasro_common.images import decode_b64_images


def _body(header: dict | str, data: bytes = b"") -> bytes:
    raw = header if isinstance(header, str) else json.dumps(header)
    h = raw.encode()
    return struct.pack("<Q", len(h)) + h + data


NESTED = "[" * 100_000 + "]" * 100_000
HOSTILE_HEADERS = {
    "shape overflows int64 (2^32 x 2^32)": {"x": {"dtype": "U8", "shape": [2**32, 2**32], "data_offsets": [0, 0]}},
    "dimension 2^64": {"x": {"dtype": "U8", "shape": [2**64], "data_offsets": [0, 0]}},
    "dimension 2^64 times zero": {"x": {"dtype": "U8", "shape": [2**64, 0], "data_offsets": [0, 0]}},
    "data_offsets Infinity": '{"x": {"dtype": "U8", "shape": [1], "data_offsets": [0, Infinity]}}',
    "data_offsets NaN": '{"x": {"dtype": "U8", "shape": [1], "data_offsets": [NaN, 1]}}',
    "shape of floats": {"x": {"dtype": "U8", "shape": [1.5], "data_offsets": [0, 1]}},
    "shape of booleans": {"x": {"dtype": "U8", "shape": [True], "data_offsets": [0, 1]}},
    "shape not a list": {"x": {"dtype": "U8", "shape": 7, "data_offsets": [0, 1]}},
    "negative dimension": {"x": {"dtype": "F32", "shape": [-1, -4], "data_offsets": [0, 16]}},
    "three offsets": {"x": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1, 2]}},
    "tensor info not an object": {"x": [1, 2, 3]},
    "dtype not hashable": {"x": {"dtype": ["U8"], "shape": [1], "data_offsets": [0, 1]}},
    "deeply nested header": '{"x": ' + NESTED + "}",
    "deeply nested metadata value": {"__metadata__": {"prompts": NESTED}},
}


@pytest.mark.parametrize("header", HOSTILE_HEADERS.values(), ids=HOSTILE_HEADERS.keys())
def test_hostile_safetensors_headers_are_malformed_body(header):
    with pytest.raises(MalformedBody) as e:
        codec.decode(bytearray(_body(header, b"\0" * 16)))
    assert e.value.message and e.value.status == 400


_json_scalars = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
                          st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=8))
_json = st.recursive(_json_scalars, lambda kids: st.one_of(st.lists(kids, max_size=4),
                                                          st.dictionaries(st.text(max_size=6), kids, max_size=4)),
                     max_leaves=12)
_info = st.fixed_dictionaries({"dtype": st.one_of(st.sampled_from(["U8", "F32", "F16", "BOOL"]), _json),
                               "shape": st.one_of(st.lists(st.one_of(st.integers(-3, 2**65), _json), max_size=4), _json),
                               "data_offsets": st.one_of(st.lists(st.one_of(st.integers(-3, 2**65), _json),
                                                                  max_size=3), _json)})


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(header=st.dictionaries(st.text(max_size=4), st.one_of(_info, _json), max_size=3),
       data=st.binary(max_size=64))
def test_any_json_header_is_decoded_or_malformed_body(header, data):
    try:
        body = _body(json.dumps(header, allow_nan=True), data)
    except (ValueError, OverflowError):
        return
    with contextlib.suppress(MalformedBody):
        codec.decode(bytearray(body))


def _encode(fmt: str, size=(8, 8), mode="RGB") -> str:
    buf = io.BytesIO()
    Image.new(mode, size, "red").save(buf, format=fmt)
    return base64.b64encode(buf.getvalue()).decode()


@pytest.mark.parametrize("fmt, mode", [("GIF", "P"), ("BMP", "RGB"), ("TIFF", "RGB"), ("WEBP", "RGB"),
                                       ("PPM", "RGB"), ("ICO", "RGB")])
def test_only_png_and_jpeg_are_decoded(fmt, mode):
    with pytest.raises(InvalidInput, match="PNG or JPEG"):
        decode_b64_images([_encode(fmt, mode=mode)], max_batch=4, max_side=64)


def test_png_and_jpeg_still_decode():
    out = decode_b64_images([_encode("PNG"), _encode("JPEG")], max_batch=4, max_side=64)
    assert out.shape == (2, 3, 8, 8) and out.dtype == np.float32


def test_decoded_size_is_checked_from_headers_before_any_pixel_is_decoded():
    """Sixteen 2048 x 2048 PNGs: 17 KB each on the wire, 768 MiB as float32. The plan reads only
    their headers and refuses the request by its decoded size."""
    from lasro_common.images import plan_b64_images

    big = _encode("PNG", size=(2048, 2048))
    assert len(big) < 64 * 1024
    plan = plan_b64_images([big] * 16, max_batch=256, max_side=2048)
    assert plan.shape == (16, 3, 2048, 2048) and plan.decoded_bytes == 16 * 3 * 2048 * 2048 * 4
    with pytest.raises(PayloadTooLarge, match="decoded"):
        plan.check(max_decoded_bytes=256 * 1024 * 1024)


def test_decoded_pixels_match_the_reference_conversion():
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 256, (2, 12, 10, 3), dtype=np.uint8)
    items = []
    for a in arr:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="PNG")
        items.append(base64.b64encode(buf.getvalue()).decode())
    out = decode_b64_images(items, max_batch=4, max_side=64)
    want = arr.transpose(0, 3, 1, 2).astype(np.float32) / 255.0
    assert np.array_equal(out, want)


@pytest.mark.parametrize("nested", ["images", "prompts"])
def test_deeply_nested_json_in_score_is_a_400(nested):
    from reward_service.scoring import parse_request

    body = ('{"' + nested + '": ' + NESTED + "}").encode()
    with pytest.raises(WireError) as e:
        parse_request("application/json", bytearray(body), {}, None, max_batch=4, max_side=64)
    assert 400 <= e.value.status < 500


def test_requests_too_large_to_copy_are_scored_one_call_each(monkeypatch):
    """Merging requests copies their images: above MERGE_COPY_LIMIT each keeps its own call (and
    its own memory), below it they share one."""
    from reward_service import scoring
    from reward_service.rewards import Reward

    class Counting(Reward):
        name = "counting"

        def __init__(self):
            self.calls = []

        def score(self, images, prompts):
            self.calls.append(images.shape[0])
            return images.mean(dim=(1, 2, 3))

    reward = Counting()
    run = scoring.make_batch_fn(reward)
    items = [(np.full((2, 3, 8, 8), v, np.float32), ["a", "b"]) for v in (0.25, 0.75)]
    monkeypatch.setattr(scoring, "MERGE_COPY_LIMIT", 10**9)
    out = run(items)
    assert reward.calls == [4] and [o.tolist() for o in out] == [[0.25, 0.25], [0.75, 0.75]]
    monkeypatch.setattr(scoring, "MERGE_COPY_LIMIT", 1000)
    out = run(items)
    assert reward.calls == [4, 2, 2] and [o.tolist() for o in out] == [[0.25, 0.25], [0.75, 0.75]]
