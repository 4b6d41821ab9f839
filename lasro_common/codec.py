"""Tensors on the wire: safetensors bodies, parsed by hand so decoding is zero-copy and every
malformed body becomes a `MalformedBody` (never a 500, never pickle).

Format (https://github.com/huggingface/safetensors): 8-byte little-endian header length N,
N bytes of JSON header {name: {dtype, shape, data_offsets}, "__metadata__": {str: str}}, data.
Our metadata values are JSON-encoded (`"prompts": "[\"a red circle\"]"`); a value that is not
valid JSON is kept as the plain string, so `metadata={"reward": "jpeg_compressibility"}` from
`safetensors.torch.save` works too.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import MalformedBody

_DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype("<f8"), "F32": np.dtype("<f4"), "F16": np.dtype("<f2"),
    "I64": np.dtype("<i8"), "I32": np.dtype("<i4"), "I16": np.dtype("<i2"), "I8": np.dtype("i1"),
    "U8": np.dtype("u1"), "BOOL": np.dtype("?"),
}
_NAMES = {v: k for k, v in _DTYPES.items()}
MAX_HEADER_BYTES = 16 * 1024 * 1024
MAX_NDIM = 32  # numpy's limit is 64; no tensor of ours has more than 4
MAX_DIM = 2**40  # numpy dimensions are int64; 2**40 of anything is beyond every body limit


@dataclass
class Decoded:
    tensors: dict[str, np.ndarray] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    def torch(self, name: str):
        """The tensor `name` as a torch.Tensor sharing memory with the body (no copy)."""
        import torch

        arr = self.tensors[name]
        # torch.from_numpy refuses read-only buffers silently only with a warning; copy those.
        return torch.from_numpy(arr if arr.flags.writeable else arr.copy())


def _as_numpy(value: Any) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    mod = type(value).__module__
    if mod.startswith("torch"):
        import torch

        if value.dtype == torch.bfloat16:
            raise ValueError("bfloat16 is not sent on the wire; call .float() or .half() first")
        return value.detach().cpu().contiguous().numpy()
    return np.asarray(value)


def encode(tensors: Mapping[str, Any], metadata: Mapping[str, Any] | None = None) -> bytes:
    """Serialise named tensors (numpy or torch) and JSON-able metadata to a safetensors body."""
    arrays = {k: np.asarray(_as_numpy(v), order="C") for k, v in tensors.items()}
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = {k: json.dumps(v) for k, v in metadata.items()}
    offset = 0
    for name, arr in arrays.items():
        dt = arr.dtype.newbyteorder("<") if arr.dtype.byteorder == ">" else arr.dtype
        if dt not in _NAMES:
            raise ValueError(f"tensor {name!r}: dtype {arr.dtype} is not supported on the wire")
        header[name] = {"dtype": _NAMES[dt], "shape": list(arr.shape),
                        "data_offsets": [offset, offset + arr.nbytes]}
        offset += arr.nbytes
    hbytes = json.dumps(header, separators=(",", ":")).encode()
    hbytes += b" " * (-len(hbytes) % 8)  # align the data section to 8 bytes
    # One copy in all: join takes the arrays' buffers directly.
    parts = [struct.pack("<Q", len(hbytes)), hbytes]
    # flat uint8 views of each array (works for 0-d and zero-size arrays, which memoryview.cast refuses)
    parts += [memoryview(a.astype(a.dtype.newbyteorder("<"), copy=False).reshape(-1).view(np.uint8))
              for a in arrays.values()]
    return b"".join(parts)


def decode(body: bytes | bytearray | memoryview) -> Decoded:
    """Parse a safetensors body. Arrays are views into `body` (writable if `body` is a bytearray)."""
    buf = memoryview(body)
    if len(buf) < 8:
        raise MalformedBody("safetensors body shorter than its 8-byte header length")
    (hlen,) = struct.unpack_from("<Q", buf, 0)
    if hlen > MAX_HEADER_BYTES or 8 + hlen > len(buf):
        raise MalformedBody(f"safetensors header length {hlen} does not fit a {len(buf)}-byte body")
    try:
        header = json.loads(bytes(buf[8 : 8 + hlen]))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MalformedBody(f"safetensors header is not valid JSON: {e}") from None
    except RecursionError:
        raise MalformedBody("safetensors header is nested too deeply") from None
    if not isinstance(header, dict):
        raise MalformedBody("safetensors header must be a JSON object")
    data = buf[8 + hlen :]
    out = Decoded(metadata=_decode_metadata(header.pop("__metadata__", None) or {}))
    for name, info in header.items():
        out.tensors[name] = _view(name, info, data)
    return out


def _decode_metadata(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
        raise MalformedBody("__metadata__ must map strings to strings")
    meta: dict[str, Any] = {}
    for k, v in raw.items():
        try:
            meta[k] = json.loads(v)
        except json.JSONDecodeError:
            meta[k] = v
        except RecursionError:
            raise MalformedBody(f"__metadata__ {k!r} is nested too deeply") from None
    return meta


def _ints(value: Any) -> list[int] | None:
    """A JSON list of plain integers (not floats, not booleans, not Infinity), else None."""
    if not isinstance(value, list) or not all(type(v) is int for v in value):
        return None
    return value


def _view(name: str, info: Any, data: memoryview) -> np.ndarray:
    # Every number is checked as a Python int before numpy sees it: a shape of 2**64, or one whose
    # product overflows int64 (2**32 x 2**32), would otherwise wrap around or raise OverflowError.
    dtype = _DTYPES.get(info.get("dtype")) if isinstance(info, dict) and isinstance(info.get("dtype"), str) else None
    shape = _ints(info.get("shape")) if isinstance(info, dict) else None
    offsets = _ints(info.get("data_offsets")) if isinstance(info, dict) else None
    if dtype is None or shape is None or offsets is None or len(offsets) != 2:
        raise MalformedBody(
            f"tensor {name!r}: needs dtype (one of {sorted(_DTYPES)}), shape (a list of integers) and "
            "data_offsets (two integers)"
        )
    if len(shape) > MAX_NDIM or any(not 0 <= s <= MAX_DIM for s in shape):
        raise MalformedBody(f"tensor {name!r}: shape {shape[:8]} lies outside the data section (sizes must be "
                            f"0..{MAX_DIM}, at most {MAX_NDIM} dimensions)")
    start, end = offsets
    if not 0 <= start <= end <= len(data):
        raise MalformedBody(f"tensor {name!r}: data_offsets {start}..{end} outside the data section")
    nbytes = math.prod(shape) * dtype.itemsize  # exact: Python integers do not overflow
    if end - start != nbytes:
        raise MalformedBody(
            f"tensor {name!r}: {end - start} bytes for shape {shape[:8]} of {info['dtype']} (expected {nbytes})"
        )
    return np.frombuffer(data, dtype=dtype, count=nbytes // dtype.itemsize, offset=start).reshape(tuple(shape))
