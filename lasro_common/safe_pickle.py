"""Reading pickles from other people's reward servers and clients without running their code.

flow_grpo's and ddpo-pytorch's reward servers speak pickled dicts over HTTP. `pickle.loads` of a
body is remote code execution: a pickle names any importable callable and calls it. `loads` here
reads only plain data:

    dict, list, tuple, str, bytes (bytearray becomes bytes), int, float, bool, None,
    numpy arrays and numpy scalars of bool, integer, float, complex, bytes or str dtype

Anything else (any other class or function, object or structured dtypes, persistent ids, sets)
is refused with `UnsafePickle` before it is called. Numpy objects never reach numpy's own
unpickling code: the names numpy's pickles use (`_reconstruct`, `ndarray`, `dtype`, `scalar`,
`_frombuffer`, and `_codecs.encode` / `bytes()` for protocol 2 bytes) resolve to stand-ins here that record
their arguments and `__setstate__` state; the arrays are built afterwards, from raw bytes, with a
dtype checked against the list above and a byte count that must match the shape exactly (so an
array costs what the pickle carried, never more). Protocols 2 to 5 are read.
"""

from __future__ import annotations

import io
import math
import pickle
from typing import Any

import numpy as np

from .errors import MalformedBody

__all__ = ["UnsafePickle", "dumps", "loads"]

DTYPE_KINDS = frozenset("biufcSU")  # bool, int, uint, float, complex, bytes, str
MAX_DEPTH = 64  # nesting of containers; deeper is refused (the walk below recurses)


class UnsafePickle(MalformedBody):
    """The pickle names something other than plain data (400 unsafe_pickle)."""

    code = "unsafe_pickle"


class _Inert:
    """Base of the stand-ins: BUILD (`__setstate__`) is refused unless a subclass accepts it."""

    __slots__ = ()

    def __setstate__(self, state: Any) -> None:
        raise UnsafePickle(f"the pickle sets the state of {type(self).__name__}, which plain data never does")

    def __reduce__(self):  # never pickled back out
        raise TypeError("not picklable")


class _NdarrayName(_Inert):
    """What `numpy.ndarray` resolves to: a name, never the class (ndarray(shape) would allocate)."""

    __slots__ = ()


NDARRAY = _NdarrayName()


class _Dtype(_Inert):
    """`numpy.dtype(code, align, copy)` with its `__setstate__` state, resolved by `resolve()`."""

    __slots__ = ("code", "state")

    def __init__(self, code: Any, align: Any = False, copy: Any = False) -> None:
        if not isinstance(code, str) or len(code) > 32:
            raise UnsafePickle(f"numpy dtype {str(code)[:40]!r} is not a plain type code")
        self.code, self.state = code, None

    def __setstate__(self, state: Any) -> None:
        if self.state is not None or not isinstance(state, tuple):
            raise UnsafePickle("numpy dtype state is not a tuple")
        self.state = state

    def resolve(self) -> np.dtype:
        """The dtype from its type code and byte order only (never numpy's dtype.__setstate__,
        whose flags could mark plain memory as holding Python objects)."""
        try:
            dt = np.dtype(self.code)
        except (TypeError, ValueError):
            raise UnsafePickle(f"numpy dtype {self.code!r} is not a known type code") from None
        if dt.kind not in DTYPE_KINDS or dt.fields is not None or dt.subdtype is not None:
            raise UnsafePickle(f"numpy dtype {dt} is refused: only bool, integer, float, complex, bytes and "
                               "str arrays are read (object and structured dtypes could carry code)")
        if self.state is not None:
            # numpy's state: (version, byteorder, subarray, names, fields, elsize, alignment, flags[, metadata])
            if len(self.state) < 8 or any(x is not None for x in self.state[2:5]):
                raise UnsafePickle(f"numpy dtype {dt} has a sub-array or fields")
            order, elsize = self.state[1], self.state[5]
            if order not in ("<", ">", "|", "="):
                raise UnsafePickle(f"numpy dtype byte order {order!r} is not one of < > | =")
            if elsize not in (-1, dt.itemsize):
                raise UnsafePickle(f"numpy dtype {dt} claims {elsize!r} bytes per item")
            if order in "<>" and dt.byteorder != "|":
                dt = dt.newbyteorder(order)
        return dt


def _dtype_of(d: Any) -> np.dtype:
    if not isinstance(d, _Dtype):
        raise UnsafePickle("a numpy array's dtype is not a numpy dtype")
    return d.resolve()


def _shape_of(shape: Any) -> tuple[int, ...]:
    if (not isinstance(shape, tuple) or len(shape) > 32
            or not all(type(n) is int and 0 <= n < 2**62 for n in shape)):
        raise UnsafePickle(f"a numpy array's shape {str(shape)[:60]} is not a tuple of sizes")
    return shape


def _array(raw: Any, dt: np.dtype, shape: tuple[int, ...], fortran: bool) -> np.ndarray:
    if not isinstance(raw, bytes | bytearray):
        raise UnsafePickle("a numpy array's data is not raw bytes (object arrays are refused)")
    need = math.prod(shape) * dt.itemsize
    if len(raw) != need:
        raise UnsafePickle(f"a numpy array of shape {shape} and dtype {dt} needs {need} bytes, the pickle has {len(raw)}")
    flat = np.frombuffer(bytes(raw), dtype=dt)  # read-only view of an immutable copy: no aliasing
    return flat.reshape(shape, order="F" if fortran else "C").copy(order="K")


class _Array(_Inert):
    """`numpy._core.multiarray._reconstruct(ndarray, (0,), b'b')` then BUILD with the array state."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        # ndarray.__reduce__'s state: (version, shape, dtype, is_fortran, raw data)
        if self.value is not None or not isinstance(state, tuple) or len(state) != 5:
            raise UnsafePickle("numpy array state is not (version, shape, dtype, fortran, data)")
        _, shape, dtype, fortran, raw = state
        self.value = _array(raw, _dtype_of(dtype), _shape_of(shape), bool(fortran))


def _reconstruct(cls: Any, shape: Any = None, typecode: Any = None) -> _Array:
    if cls is not NDARRAY:
        raise UnsafePickle("numpy _reconstruct is only read for numpy.ndarray")
    return _Array()


class _Built(_Inert):
    """A numpy object already built from checked bytes (`_frombuffer`, `scalar`)."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: Any = "C") -> _Built:
    """Protocol 5's in-band array: numpy._core.numeric._frombuffer(buffer, dtype, shape, order)."""
    if order not in ("C", "F"):
        raise UnsafePickle(f"numpy array order {order!r} is not C or F")
    return _Built(_array(buf, _dtype_of(dtype), _shape_of(shape), order == "F"))


def _scalar(dtype: Any, raw: Any = None) -> _Built:
    """numpy._core.multiarray.scalar(dtype, bytes): np.float32(1.5) and friends."""
    dt = _dtype_of(dtype)
    return _Built(_array(raw, dt, (), False)[()])


def _empty_bytes() -> bytes:
    """Protocol 2's b'': builtins.bytes() with no argument (bytes(n) would allocate n bytes)."""
    return b""


def _codecs_encode(text: Any, encoding: Any = "utf-8") -> bytes:
    """Protocol 2's bytes: _codecs.encode(str, 'latin1')."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise UnsafePickle("_codecs.encode is only read as protocol 2's bytes (a str, 'latin1')")
    return text.encode("latin1")


class _Callable(_Inert):
    """What an admitted name resolves to: a callable that is neither a class (NEWOBJ needs one)
    nor a function (BUILD would write into its __dict__)."""

    __slots__ = ("fn",)

    def __init__(self, fn: Any) -> None:
        object.__setattr__(self, "fn", fn)

    def __call__(self, *args: Any) -> Any:
        return self.fn(*args)


_NUMPY = {"_reconstruct": _reconstruct, "scalar": _scalar}
ADMITTED: dict[tuple[str, str], Any] = {
    **{(m, n): _Callable(f) for m in ("numpy.core.multiarray", "numpy._core.multiarray") for n, f in _NUMPY.items()},
    **{(m, "_frombuffer"): _Callable(_frombuffer) for m in ("numpy.core.numeric", "numpy._core.numeric")},
    ("numpy", "ndarray"): NDARRAY,
    ("numpy", "dtype"): _Callable(_Dtype),
    ("_codecs", "encode"): _Callable(_codecs_encode),
    **{(m, "bytes"): _Callable(_empty_bytes) for m in ("builtins", "__builtin__")},
}


class _Unpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return ADMITTED[(module, name)]
        except KeyError:
            raise UnsafePickle(f"the pickle refers to {module}.{name}: only plain data (dict, list, tuple, str, "
                               "bytes, int, float, bool, None, numpy arrays of plain dtypes) is read") from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickle("the pickle uses persistent ids")


PLAIN = frozenset({str, bytes, int, float, bool, type(None)})


def _plain(obj: Any, depth: int, seen: dict[int, Any]) -> Any:
    """The loaded object with stand-ins replaced by numpy values; anything else refused. `seen`
    keeps shared sub-objects shared (a pickle of many references to one list stays linear)."""
    if type(obj) in PLAIN:
        return obj
    key = id(obj)
    if key in seen:
        return seen[key]
    if depth > MAX_DEPTH:
        raise UnsafePickle(f"the pickle nests containers deeper than {MAX_DEPTH} levels")
    t = type(obj)
    if t is bytearray:
        out: Any = bytes(obj)
    elif t in (_Array, _Built):
        if obj.value is None:
            raise UnsafePickle("a numpy array without its data")
        out = obj.value.item() if isinstance(obj.value, np.generic) else obj.value
    elif t is list:
        out = [_plain(x, depth + 1, seen) for x in obj]
    elif t is tuple:
        out = tuple(_plain(x, depth + 1, seen) for x in obj)
    elif t is dict:
        out = {_plain(k, depth + 1, seen): _plain(v, depth + 1, seen) for k, v in obj.items()}
    else:
        raise UnsafePickle(f"the pickle holds a {t.__name__}, which is not plain data")
    seen[key] = out
    return out


def loads(data: bytes | bytearray | memoryview) -> Any:
    """Plain data from a pickle, or `UnsafePickle` / `MalformedBody` (both 400) without running
    anything the pickle names."""
    try:
        obj = _Unpickler(io.BytesIO(data)).load()
    except MalformedBody:
        raise
    except Exception as e:  # whatever a broken pickle makes the reader raise: a 400, never a 500
        raise MalformedBody(f"the body is not a readable pickle: {type(e).__name__}: {str(e)[:200]}") from None
    try:
        return _plain(obj, 0, {})
    except RecursionError:
        raise UnsafePickle("the pickle nests too deeply") from None


def dumps(obj: Any) -> bytes:
    """Pickle plain data (protocol 4, which every Python 3.4+ reads). Refuses anything `loads`
    would refuse, so this side never sends code either."""
    loads(out := pickle.dumps(obj, protocol=4))
    return out
