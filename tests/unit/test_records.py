import numpy as np
import pytest

from lasro_common.errors import InvalidInput, MalformedBody
from lasro_common.stream import SampleGroup


def test_roundtrip_through_stream_fields():
    g = SampleGroup("a red circle", 2, np.random.randn(4, 4, 8, 8).astype(np.float16),
                    np.array([0.1, 0.5, 1.0, 0.0]), sampler_version=7, reward="toy", model="toy/lcm")
    fields = {k.encode(): (v if isinstance(v, bytes) else str(v).encode()) for k, v in g.to_fields().items()}
    back = SampleGroup.from_fields(fields)  # as redis-py returns them: bytes keys and values
    assert back.prompt == g.prompt and back.step == 2 and back.sampler_version == 7
    assert back.group_id == g.group_id and back.reward == "toy"
    assert np.array_equal(back.latents, g.latents) and back.latents.dtype == np.float16
    assert np.array_equal(back.rewards, g.rewards)


def test_version_mismatch_and_bad_content_are_refused():
    g = SampleGroup("x", 1, np.zeros((2, 4, 8, 8), np.float32), np.zeros(2))
    f = g.to_fields()
    with pytest.raises(MalformedBody, match="version"):
        SampleGroup.from_fields({**f, "v": 99})
    with pytest.raises(InvalidInput):
        SampleGroup("x", 3, np.zeros((2, 4, 8, 8)), np.zeros(2))
    with pytest.raises(InvalidInput):
        SampleGroup("x", 1, np.zeros((2, 4, 8, 8)), np.array([0.0, np.nan]))
