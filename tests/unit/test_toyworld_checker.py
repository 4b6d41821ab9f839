"""toyworld.checker: correct on every drawn shape and colour, ~0 on noise, penalises errors."""

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from toyworld import captions, checker, data


def _img(objects) -> np.ndarray:
    return data.draw_scene(objects).astype(np.float32).transpose(2, 0, 1)[None] / 255.0


@pytest.mark.parametrize("colour", list(captions.COLORS))
@pytest.mark.parametrize("shape", captions.SHAPES)
@pytest.mark.parametrize("size", [data.MIN_SIZE, 11, data.MAX_SIZE_ONE])
def test_every_single_object(colour, shape, size):
    img = _img([(colour, shape, 6, 9, size)])
    assert checker.score(img, [f"a {colour} {shape}"])[0] == 1.0
    others = [s for s in captions.SHAPES if s != shape]
    assert checker.score(img, [f"a {colour} {others[0]}"])[0] == 0.0


def test_dataset_images_score_high_and_noise_low():
    imgs, caps = data.sample_batch(400, 7)
    assert checker.score(imgs, caps).mean() >= 0.99
    imgs, caps = data.sample_batch(200, 8, split="heldout")
    assert checker.score(imgs, caps).mean() >= 0.99
    noise = np.random.default_rng(0).random((200, 3, 32, 32), dtype=np.float32)
    assert checker.score(noise, caps).mean() <= 0.1


def test_pairs_extra_missing_and_merged_objects():
    pair = _img([("red", "circle", 2, 2, 10), ("blue", "square", 18, 18, 10)])
    assert checker.score(pair, ["a red circle and a blue square"])[0] == 1.0
    assert checker.score(pair, ["a blue square and a red circle"])[0] == 1.0
    assert checker.score(pair, ["a red circle"])[0] == 0.5  # extra object
    assert checker.score(pair, ["a red square and a blue circle"])[0] == 0.0  # wrong binding
    single = _img([("red", "circle", 2, 2, 10)])
    assert checker.score(single, ["a red circle and a blue square"])[0] == 0.5  # missing object
    merged = _img([("green", "circle", 4, 8, 12), ("green", "square", 12, 8, 12)])
    assert checker.score(merged, ["a green circle and a green square"])[0] == 0.0


def test_soft_cornered_square_is_a_square():
    """Generated squares often have rounded corners; they must not be read as circles."""
    big = Image.new("RGB", (128, 128))
    ImageDraw.Draw(big).rounded_rectangle((24, 24, 79, 79), radius=12, fill=captions.COLORS["yellow"])
    img = np.asarray(big.resize((32, 32), Image.Resampling.BILINEAR), np.float32).transpose(2, 0, 1)[None] / 255
    assert checker.score(img, ["a yellow square"])[0] == 1.0


def test_parse_caption_and_inputs():
    assert captions.parse_caption("A Red circle and a white triangle") == [("red", "circle"), ("white", "triangle")]
    assert captions.parse_caption("a dog") == []
    imgs, caps = data.sample_batch(4, 1)
    s = checker.score(torch.from_numpy(imgs), caps)
    assert s.dtype == np.float32 and s.shape == (4,)
    with pytest.raises(ValueError, match="prompts"):
        checker.score(imgs, caps[:2])
    with pytest.raises(ValueError, match="shape"):
        checker.score(imgs[0], caps[:1])
