import contextlib
import json
import struct

import numpy as np
import pytest
import safetensors.numpy
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lasro_common import codec
from lasro_common.errors import MalformedBody


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64, np.uint8, np.int8, np.int16,
                                   np.int32, np.int64, np.bool_])
def test_roundtrip_every_dtype_and_matches_reference_library(dtype):
    arr = (np.arange(24).reshape(2, 3, 4) % 7).astype(dtype)
    body = codec.encode({"x": arr, "s": np.float32(3.5)}, {"prompts": ["a", "b"], "head": 2})
    d = codec.decode(body)
    assert np.array_equal(d.tensors["x"], arr) and d.tensors["x"].dtype == arr.dtype
    assert d.tensors["s"].shape == () and d.tensors["s"] == 3.5
    assert d.metadata == {"prompts": ["a", "b"], "head": 2}
    ref = safetensors.numpy.load(body)  # the official parser reads our bodies
    assert np.array_equal(ref["x"], arr)


def test_reads_bodies_written_by_safetensors_with_plain_string_metadata():
    t = torch.randn(2, 4, 8, 8).half()
    from safetensors.torch import save

    d = codec.decode(save({"latents": t}, metadata={"reward": "jpeg_compressibility", "prompts": '["x", "y"]'}))
    assert torch.equal(d.torch("latents"), t)
    assert d.metadata == {"reward": "jpeg_compressibility", "prompts": ["x", "y"]}


def test_decode_is_zero_copy_on_a_bytearray():
    body = bytearray(codec.encode({"x": np.zeros(1000, np.float32)}))
    d = codec.decode(body)
    t = d.torch("x")
    t[0] = 7.0  # writes through to the body: no copy was made
    assert codec.decode(body).tensors["x"][0] == 7.0


def test_zero_size_and_scalar_tensors_roundtrip():
    d = codec.decode(codec.encode({"e": np.zeros((1, 4, 0, 8), np.float32), "s": np.float16(2.0)}))
    assert d.tensors["e"].shape == (1, 4, 0, 8) and d.tensors["s"].shape == () and d.tensors["s"] == 2.0


def test_torch_bfloat16_is_refused_with_advice():
    with pytest.raises(ValueError, match="float"):
        codec.encode({"x": torch.zeros(2, dtype=torch.bfloat16)})


def _body(header: dict, data: bytes = b"") -> bytes:
    h = json.dumps(header).encode()
    return struct.pack("<Q", len(h)) + h + data


@pytest.mark.parametrize("body, match", [
    (b"", "shorter"),
    (struct.pack("<Q", 10**9) + b"{}", "does not fit"),
    (struct.pack("<Q", 4) + b"nope", "not valid JSON"),
    (_body([1, 2]), "JSON object"),
    (_body({"x": {"dtype": "F99", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4), "dtype"),
    (_body({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 4), "expected 8"),
    (_body({"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 40]}}, b"\0" * 4), "outside"),
    (_body({"x": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, b"\0" * 4), "outside"),
    (_body({"__metadata__": {"a": 1}}), "strings"),
])
def test_malformed_bodies_raise_malformed_body(body, match):
    with pytest.raises(MalformedBody, match=match):
        codec.decode(body)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_never_raise_anything_but_malformed_body(data):
    for body in (data, struct.pack("<Q", len(data)) + data):
        with contextlib.suppress(MalformedBody):
            codec.decode(body)


@settings(max_examples=100, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=5).filter(lambda s: s != "__metadata__"),
                       st.lists(st.floats(width=32, allow_nan=False), max_size=8), max_size=4),
       st.dictionaries(st.text(max_size=8), st.text(max_size=8) | st.integers(), max_size=3))
def test_roundtrip_property(tensors, meta):
    arrays = {k: np.asarray(v, np.float32) for k, v in tensors.items()}
    d = codec.decode(codec.encode(arrays, meta))
    assert d.metadata == meta
    assert set(d.tensors) == set(arrays)
    for k, v in arrays.items():
        assert np.array_equal(d.tensors[k], v)
