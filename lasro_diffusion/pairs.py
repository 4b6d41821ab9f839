"""Pair metrics over a group of samples of one prompt ranked by a true reward.

The surrogate learns from, and is judged on, the ordered pairs (winner, loser) inside a group:
the Bradley-Terry loss trains on them, the learner's held-out accuracy and the trainer's tracking
metric count how many of them a scorer orders like the true reward.
"""

from __future__ import annotations

import torch


def eligible_pairs(rewards: torch.Tensor, margin: float) -> torch.Tensor:
    """(N,) rewards -> (P, 2) long tensor of (winner, loser) indices with r_w - r_l > margin."""
    diff = rewards[:, None] - rewards[None, :]  # (N, N): diff[i, j] = r_i - r_j
    return torch.nonzero(diff > margin, as_tuple=False)  # (P, 2), strictly above margin


def ordered(scores: torch.Tensor, pairs: torch.Tensor) -> tuple[float, int]:
    """(pairs ordered like the true reward, pairs) for (P, 2) (winner, loser) indices into
    `scores`; a tie counts 1/2, so an all-zero scorer gets exactly half."""
    d = scores[pairs[:, 0]] - scores[pairs[:, 1]]  # (P,)
    return float((d > 0).sum()) + 0.5 * float((d == 0).sum()), len(d)
