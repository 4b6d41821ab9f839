"""The report's teacher line: a committed measurement (trainer/toy_teacher.json) that the code
reproduces, shown only for runs whose evaluation it matches."""

from __future__ import annotations

import json

import numpy as np
import pytest

from toyworld import captions
from toyworld.paths import LCM_DIR
from trainer.reference import FILE, measure, teacher_reward


def test_the_committed_measurement_is_what_the_code_measures():
    """Re-measure the first held-out prompts at seed 0: the same generators, the same scores."""
    ref = json.loads(FILE.read_text())
    assert (ref["prompts"], ref["seeds"]) == (len(captions.heldout_captions()), 4)
    assert ref["mean"] == pytest.approx(np.mean(ref["scores"])) and 0.9 < ref["mean"] < 1.0
    again = measure(seeds=1, prompts=captions.heldout_captions()[:6])
    committed = np.asarray(ref["scores"]).reshape(ref["prompts"], ref["seeds"])[:6, 0]
    np.testing.assert_allclose(again["scores"], committed, atol=1e-6)


def test_the_line_is_shown_only_where_the_measurement_applies():
    ref = json.loads(FILE.read_text())
    scores = np.asarray(ref["scores"]).reshape(ref["prompts"], ref["seeds"])
    toy = {"base_model": str(LCM_DIR), "reward": "toy_attribute_binding", "eval_prompts": None, "eval_seeds": 2}
    value, label = teacher_reward(toy)
    assert value == pytest.approx(scores[:, :2].mean()) and "committed" in label  # the run's own 2 seeds
    assert teacher_reward({**toy, "eval_seeds": 8})[0] == pytest.approx(scores.mean())  # at most the 4 measured
    assert teacher_reward({**toy, "reward": "jpeg_compressibility"}) is None
    assert teacher_reward({**toy, "eval_prompts": "mine.txt"}) is None
    assert teacher_reward({**toy, "base_model": "latent-consistency/lcm-ssd-1b"}) is None
