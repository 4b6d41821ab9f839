"""Small trainer parts: the lr schedule, the tracking metric, the normaliser, config errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from trainer.config import TrainConfig
from trainer.evaluate import tracking
from trainer.loop import lr_at
from trainer.normalize import GradNormalizer


def cfg(**kw) -> TrainConfig:
    return TrainConfig(**{"iterations": 101, "lr": 1e-4, **kw})


def test_cosine_schedule_runs_from_lr_to_final_ratio():
    c = cfg(lr_schedule="cosine", lr_final_ratio=0.1)
    assert lr_at(c, 0) == pytest.approx(1e-4)
    assert lr_at(c, 50) == pytest.approx(1e-4 * (0.1 + 0.9 * 0.5))  # half way: the mean
    assert lr_at(c, 100) == pytest.approx(1e-5)
    values = [lr_at(c, i) for i in range(101)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))  # never rises


def test_constant_schedule_is_constant():
    c = cfg()
    assert {lr_at(c, i) for i in (0, 37, 100)} == {1e-4}


def test_bad_schedule_is_refused_before_any_work():
    with pytest.raises(ValueError, match="lr_schedule"):
        cfg(lr_schedule="linear")


def test_tracking_is_pair_accuracy_within_prompts():
    true = np.array([1.0, 0.0, 0.5, 0.5])  # 2 prompts x 2 seeds
    assert tracking(np.array([3.0, 1.0, 0.0, 9.0]), true, 2) == 1.0  # prompt 2 has no pair
    assert tracking(np.array([1.0, 3.0, 0.0, 9.0]), true, 2) == 0.0
    assert tracking(np.array([2.0, 2.0, 0.0, 0.0]), true, 2) == 0.5  # a tie counts 1/2
    assert tracking(np.zeros(4), np.ones(4), 2) is None  # no pair anywhere
    # across prompts the surrogate's scale may differ freely: only same-prompt pairs count
    assert tracking(np.array([100.0, 99.0, -5.0, -6.0]), np.array([1.0, 0.0, 1.0, 0.0]), 2) == 1.0


def test_ema_norm_clips_outliers_and_scales_to_unit_mean():
    s = GradNormalizer("ema_norm", clip=3.0)
    g = torch.ones(4, 1, 2, 2)
    g[0] *= 100  # one outlier
    out = s(g)
    norms = out.flatten(1).norm(dim=1)
    m = s.ema
    assert math.isclose(m, float(g.flatten(1).norm(dim=1).mean()), rel_tol=1e-6)
    assert float(norms[0]) == pytest.approx(3.0)  # clipped at clip x the running mean, /mean
    assert torch.allclose(norms[1:], torch.full((3,), 2.0 / m))
