"""The baselines' losses: RLCM's Gaussian log-likelihood, PPO ratio and advantages, DPO's sign."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.dpo import best_worst_pairs, dpo_loss
from trainer.rlcm import gaussian_log_prob, group_advantages, ppo_loss


def test_gaussian_log_prob_is_the_normal_density_averaged_over_dims() -> None:
    g = torch.Generator().manual_seed(0)
    x, mean = torch.randn(3, 4, 2, 2, generator=g), torch.randn(3, 4, 2, 2, generator=g)
    ref = torch.distributions.Normal(mean, 0.7).log_prob(x).mean(dim=(1, 2, 3))
    torch.testing.assert_close(gaussian_log_prob(x, mean, 0.7), ref)


def test_log_prob_gradient_reaches_the_mean_only() -> None:
    x = torch.randn(2, 3, requires_grad=True)
    mean = torch.zeros(2, 3, requires_grad=True)
    gaussian_log_prob(x, mean, 1.0).sum().backward()
    assert x.grad is None and mean.grad is not None and mean.grad.abs().sum() > 0  # the action is data


def test_group_advantages_are_normalised_per_prompt() -> None:
    r = torch.tensor([1.0, 2.0, 3.0, 4.0, 10.0, 10.0, 10.0, 10.0])
    a = group_advantages(r, 4)
    torch.testing.assert_close(a[:4].mean(), torch.tensor(0.0))
    assert a[:4].std(unbiased=False) == pytest.approx(1.0, abs=1e-3)
    assert torch.all(a[4:] == 0)  # a group of equal rewards teaches nothing


def test_ppo_ratio_is_clipped_in_the_direction_that_would_overshoot() -> None:
    logp_old = torch.zeros(2)
    adv = torch.tensor([1.0, -1.0])
    # at theta_old the ratio is 1: the loss is -mean(A)
    loss, info = ppo_loss(logp_old.clone(), logp_old, adv, clip_range=0.1, adv_clip_max=10)
    assert float(loss) == pytest.approx(0.0) and info["clipfrac"] == 0.0
    # ratio e^1 for a good action: the clipped term (1.1) bounds the gain
    logp = torch.tensor([1.0, 0.0], requires_grad=True)
    loss, info = ppo_loss(logp, logp_old, adv, clip_range=0.1, adv_clip_max=10)
    assert float(loss) == pytest.approx((-1.1 + 1.0) / 2) and info["clipfrac"] == 0.5
    loss.backward()
    assert logp.grad[0] == 0  # beyond the clip: no gradient pushes it further


def test_dpo_loss_prefers_the_winner() -> None:
    ref_w, ref_l = torch.tensor([0.5]), torch.tensor([0.5])
    neutral = dpo_loss(ref_w, ref_l, ref_w, ref_l, beta=100)
    assert float(neutral) == pytest.approx(math.log(2))
    better = dpo_loss(ref_w - 0.01, ref_l, ref_w, ref_l, beta=100)  # the model fits the winner better
    worse = dpo_loss(ref_w, ref_l - 0.01, ref_w, ref_l, beta=100)  # ... or the loser better
    assert float(better) < float(neutral) < float(worse)
    err_w = torch.tensor([0.5], requires_grad=True)
    dpo_loss(err_w, ref_l, ref_w, ref_l, beta=100).backward()
    assert err_w.grad[0] > 0  # descending the loss lowers the winner's error


def test_best_worst_pairs_skip_groups_without_a_preference() -> None:
    r = torch.tensor([0.1, 0.9, 0.5, 0.5, 0.5, 0.5])
    w, lose = best_worst_pairs(r, 3)
    assert w.tolist() == [1] and lose.tolist() == [0]
