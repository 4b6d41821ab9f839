"""toyworld.data: deterministic scenes, captions, held-out split."""

import numpy as np
import pytest

from toyworld import captions, data


def test_sample_batch_is_deterministic_and_well_formed():
    a, caps_a = data.sample_batch(16, 123)
    b, caps_b = data.sample_batch(16, np.random.default_rng(123))
    assert a.shape == (16, 3, 32, 32) and a.dtype == np.float32
    assert a.min() >= 0.0 and a.max() <= 1.0
    np.testing.assert_array_equal(a, b)
    assert caps_a == caps_b
    c, _ = data.sample_batch(16, 124)
    assert not np.array_equal(a, c)


def test_draw_scene_uint8_and_colours():
    img = data.draw_scene([("red", "square", 4, 4, 10)])
    assert img.shape == (32, 32, 3) and img.dtype == np.uint8
    assert tuple(img[8, 8]) == captions.COLORS["red"]  # interior is the exact palette colour
    assert tuple(img[0, 0]) == data.BACKGROUND


def test_captions():
    assert captions.caption_for([("red", "circle")]) == "a red circle"
    assert captions.caption_for([("blue", "square", 1, 1, 8), ("yellow", "triangle", 20, 20, 8)]) == (
        "a blue square and a yellow triangle"
    )


def test_heldout_captions_fixed_and_unseen_pairs_never_trained():
    caps = captions.heldout_captions()
    assert caps == captions.heldout_captions() and len(caps) == 48 and len(set(caps)) == 48
    heldout = {frozenset(p) for p in captions.HELDOUT_PAIRS}
    stream = captions.train_caption_stream(0)
    for _ in range(2000):
        objs = captions.parse_caption(next(stream))
        assert frozenset(objs) not in heldout
    unseen = {frozenset(captions.parse_caption(c)) for c in caps[33:]}
    assert unseen == heldout


def test_two_objects_never_touch():
    for scene in data.sample_scenes(300, 5):
        if len(scene) == 2:
            assert data._apart(scene[0], scene[1])


def test_bad_split_is_rejected():
    with pytest.raises(ValueError, match="split"):
        data.sample_batch(1, 0, split="test")
