"""Replay buffer, pair eligibility, holdout split and checkpoint files of the surrogate learner."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch

from surrogate_service.buffer import BufferedGroup, ReplayBuffer, eligible_pairs, is_heldout
from surrogate_service.checkpoint import checkpoint_path, load_checkpoint, save_checkpoint


def group(gid: str, rewards: list[float], entry: str | None = None, step: int = 1,
          dtype: torch.dtype = torch.float32) -> BufferedGroup:
    n = len(rewards)
    return BufferedGroup(entry_id=entry or f"1-{gid}", group_id=gid, prompt=f"p {gid}", step=step,
                         latents=torch.randn(n, 4, 8, 8).to(dtype),
                         rewards=torch.tensor(rewards))


def test_pairs_respect_margin_and_order() -> None:
    pairs = eligible_pairs(torch.tensor([0.0, 0.5, 0.5005, 1.0]), margin=1e-3)
    assert sorted(map(tuple, pairs.tolist())) == [(1, 0), (2, 0), (3, 0), (3, 1), (3, 2)]
    assert len(eligible_pairs(torch.tensor([0.3, 0.3, 0.3]), margin=0.0)) == 0  # ties never pair
    assert len(eligible_pairs(torch.tensor([0.0, 1.0]), margin=1.0)) == 0  # strictly above margin


def test_eviction_drops_oldest_and_its_entry_id() -> None:
    buf = ReplayBuffer(capacity=2, margin=0.0)
    for i in range(3):
        assert buf.add(group(f"g{i}", [0.0, 1.0], entry=f"{i}-0"))
    assert len(buf) == 2 and "g0" not in buf and "g2" in buf
    assert not buf.has_entry("0-0") and buf.has_entry("2-0")
    assert buf.num_pairs == 2


def test_dedupe_by_group_id_and_entry_id() -> None:
    buf = ReplayBuffer(capacity=10, margin=0.0)
    assert buf.add(group("a", [0.0, 1.0], entry="1-0"))
    assert not buf.add(group("a", [0.0, 1.0], entry="2-0"))  # same group, new entry id
    assert not buf.add(group("b", [0.0, 1.0], entry="1-0"))  # same entry id, new group
    assert len(buf) == 1


def test_sampling_is_uniform_over_eligible_pairs() -> None:
    buf = ReplayBuffer(capacity=10, margin=0.1)
    buf.add(group("one", [0.0, 1.0]))  # 1 pair
    buf.add(group("three", [0.0, 1.0, 2.0]))  # 3 pairs
    buf.add(group("none", [0.5, 0.55]))  # below the margin: no pair, never sampled
    pairs = buf.sample_pairs(4000, torch.Generator().manual_seed(0))
    counts = Counter(g.group_id for g, _, _ in pairs)
    assert set(counts) == {"one", "three"}
    assert 2.6 < counts["three"] / counts["one"] < 3.4
    for g, w, lose in pairs:
        assert g.rewards[w] - g.rewards[lose] > 0.1
    assert ReplayBuffer(3, 0.0).sample_pairs(5) == []


def test_state_round_trip_through_checkpoint(tmp_path: Path) -> None:
    buf = ReplayBuffer(capacity=5, margin=0.01)
    buf.add(group("a", [0.0, 1.0, 0.5], step=1, dtype=torch.float16))
    buf.add(group("b", [2.0, 1.0], step=2))
    save_checkpoint(tmp_path, {"replay": buf.state(), "ids": ["1-0", "2-5"]})
    assert [p.name for p in tmp_path.iterdir()] == [checkpoint_path(tmp_path).name]  # no temp left
    state = load_checkpoint(tmp_path)  # weights_only=True inside
    back = ReplayBuffer.from_state(state["replay"])
    assert state["ids"] == ["1-0", "2-5"]
    assert [g.group_id for g in back.groups] == ["a", "b"]
    for old, new in zip(buf.groups, back.groups, strict=True):
        assert (old.entry_id, old.prompt, old.step) == (new.entry_id, new.prompt, new.step)
        assert new.latents.dtype == old.latents.dtype and torch.equal(new.latents, old.latents)
        assert torch.equal(new.rewards, old.rewards) and torch.equal(new.pairs, old.pairs)
    smaller = ReplayBuffer.from_state(state["replay"], capacity=1)  # new settings win
    assert [g.group_id for g in smaller.groups] == ["b"]


def test_missing_checkpoint_is_none(tmp_path: Path) -> None:
    assert load_checkpoint(tmp_path / "nowhere") is None


@pytest.mark.parametrize("fraction", [0.1, 0.3])
def test_holdout_split_is_deterministic_and_proportional(fraction: float) -> None:
    ids = [f"group-{i}" for i in range(4000)]
    first = [is_heldout(i, fraction) for i in ids]
    assert first == [is_heldout(i, fraction) for i in ids]  # stable: same answer every time
    assert abs(sum(first) / len(ids) - fraction) < 0.03
    assert not any(is_heldout(i, 0.0) for i in ids)
