"""lasro_common.safe_pickle: plain data and numpy arrays in, anything that could run code refused
before it runs (checked by a file the payload would create)."""

from __future__ import annotations

import contextlib
import os
import pickle

import numpy as np
import pytest

from lasro_common import safe_pickle
from lasro_common.errors import MalformedBody
from lasro_common.safe_pickle import UnsafePickle

_core = np._core if hasattr(np, "_core") else np.core


class Touch:
    def __init__(self, path, fn=os.system):
        self.path, self.fn = str(path), fn

    def __reduce__(self):
        return (self.fn, (f"touch {self.path}",))


class Reduces:
    """Pickles as `fn(*args)` then BUILD with `state`: hand-made numpy pickles."""

    def __init__(self, fn, args, state=None):
        self.r = (fn, args) if state is None else (fn, args, state)

    def __reduce__(self):
        return self.r


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_plain_data_and_numpy_arrays_round_trip(protocol):
    data = {
        "images": [b"\xff\xd8jpeg", b""], "n": 3, "x": -1.5, "flag": True, "none": None, "t": (1, "a"),
        "prompts": np.array_split(np.array(["a red circle", "b"]), 1)[0],  # what flow_grpo's client sends
        "meta_datas": list(np.array_split([{"tag": "counting", "include": [{"class": "cat", "count": 2}]}], 1)[0]),
        "f32": np.arange(6, dtype=np.float32).reshape(2, 3), "big_endian": np.arange(3, dtype=">i4"),
        "fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)), "u8": np.zeros((2, 4, 4, 3), np.uint8),
        "bytes_arr": np.array([b"ab", b"c"]), "bool": np.array([True, False]), "c64": np.array([1 + 2j]),
        "scalar": np.float32(0.25), "empty": np.zeros((0, 3)),
    }
    out = safe_pickle.loads(pickle.dumps(data, protocol=protocol))
    for k, v in data.items():
        if isinstance(v, np.ndarray):
            assert out[k].dtype == v.dtype and out[k].shape == v.shape and (out[k] == v).all(), k
            assert out[k].flags.writeable
        else:
            assert out[k] == v, k
    assert out["prompts"].tolist() == ["a red circle", "b"] and type(out["scalar"]) is float
    assert out["fortran"].flags.f_contiguous


@pytest.mark.parametrize("payload, words", [
    (lambda p: Touch(p), "posix.system"),
    (lambda p: {"images": [Touch(p)]}, "posix.system"),
    (lambda p: Touch(p, eval), "builtins.eval"),
    (lambda p: np.array([Touch(p)], dtype=object), "posix.system"),
    (lambda p: np.array([1, "a"], dtype=object), "object"),
    (lambda p: np.zeros(2, dtype=[("a", "f4")]), "structured"),
    (lambda p: np.array(["2020-01-01"], dtype="datetime64[D]"), "datetime64"),
    (lambda p: {1, 2}, "set"),
    (lambda p: bytearray(b"x"), "bytearray"),
    (lambda p: Reduces(np.ndarray, ((10**12,),)), ""),  # ndarray(shape) would allocate
    (lambda p: Reduces(bytes, (10**12,)), ""),  # so would bytes(n); only protocol 2's bytes() is read
    (lambda p: Reduces(_core.multiarray._reconstruct, (np.ndarray, (0,), b"b"),
                       (1, (10**6,), np.dtype("f8"), False, b"\0" * 8)), "needs 8000000 bytes"),
])
def test_refused_without_running(tmp_path, payload, words):
    blob = pickle.dumps(payload(tmp_path / "pwned"), protocol=4)
    with pytest.raises(MalformedBody) as e:
        safe_pickle.loads(blob)
    assert e.value.status == 400 and words in e.value.message, e.value.message
    assert not (tmp_path / "pwned").exists()


def test_protocol_0_inst_and_persistent_ids_are_refused(tmp_path):
    target = tmp_path / "pwned"
    inst = f"(S'touch {target}'\nios\nsystem\n.".encode()  # INST: protocol 0's call
    with pytest.raises(UnsafePickle, match="os.system"):
        safe_pickle.loads(inst)
    with pytest.raises(UnsafePickle, match="persistent"):
        safe_pickle.loads(b"Pid\n.")  # PERSID
    assert not target.exists()
    os.system(inst.decode().split("'")[1])  # noqa: S605 - the command itself works: the refusal is what saved us
    assert target.exists()


def test_dtype_state_cannot_smuggle_object_flags():
    # numpy's dtype state ends in its flags; 0x3f would mark a float dtype as holding PyObject pointers
    dt = Reduces(np.dtype, ("f8", False, True), (3, "<", None, None, None, -1, -1, 0x3F))
    arr = Reduces(_core.multiarray._reconstruct, (np.ndarray, (0,), b"b"),
                  (1, (2,), dt, False, np.array([1.5, 2.5]).tobytes()))
    out = safe_pickle.loads(pickle.dumps(arr, protocol=4))
    assert out.dtype == np.float64 and not out.dtype.hasobject and out.tolist() == [1.5, 2.5]
    fields = Reduces(np.dtype, ("V8", False, True), (3, "|", None, ("a",), {"a": (np.dtype("O"), 0)}, 8, 1, 0x3F))
    with pytest.raises(UnsafePickle):
        safe_pickle.loads(pickle.dumps(fields, protocol=4))


def test_admitted_names_cannot_be_rebuilt_or_instantiated_as_classes():
    dtype_global = b"\x80\x04cnumpy\ndtype\n"
    with pytest.raises(UnsafePickle, match="sets the state"):  # BUILD on what numpy.dtype resolves to
        safe_pickle.loads(dtype_global + b"}(Vfn\nK\x01ub.")
    with pytest.raises(MalformedBody):  # NEWOBJ needs a class; none is handed out
        safe_pickle.loads(dtype_global + b"Vf8\n\x85\x81.")


def test_shared_and_cyclic_structures():
    x: list = [b"img"]
    for _ in range(40):  # 2**40 paths, 41 objects: must stay linear
        x = [x, x]
    out = safe_pickle.loads(pickle.dumps(x))
    assert out[0] is out[1]
    cyc: list = []
    cyc.append(cyc)
    with pytest.raises(UnsafePickle, match="deeper"):
        safe_pickle.loads(pickle.dumps(cyc))
    with pytest.raises(MalformedBody, match="truncated|not a readable"):
        safe_pickle.loads(pickle.dumps({"a": 1})[:-3])


def test_dumps_sends_plain_data_only():
    assert pickle.loads(safe_pickle.dumps({"scores": [1.0], "only_strict": True})) == {"scores": [1.0],  # noqa: S301
                                                                                       "only_strict": True}
    with pytest.raises(UnsafePickle):
        safe_pickle.dumps({"f": print})


SAMPLES = [pickle.dumps(x, protocol=p) for p in (2, 4, 5) for x in (
    {"images": [b"\xff\xd8" * 8], "prompts": np.array(["a", "bc"]), "meta_datas": [{"tag": "t"}], "only_strict": True},
    np.arange(12, dtype=np.float32).reshape(3, 4), [np.float64(1.5), (1, None)])]


def test_mutated_pickles_are_read_or_refused_never_crash():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    @settings(max_examples=400, deadline=None)
    @given(st.sampled_from(SAMPLES), st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), max_size=4),
           st.integers(0, 10**6))
    def check(blob, flips, cut):
        data = bytearray(blob)
        for at, value in flips:
            data[at % len(data)] = value
        with contextlib.suppress(MalformedBody):  # UnsafePickle is one: a 400 either way; anything else fails
            safe_pickle.loads(bytes(data[: max(1, cut % (len(data) + 1))]))

    check()
