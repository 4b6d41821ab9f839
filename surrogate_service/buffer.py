"""Replay buffer of sample groups for the surrogate learner, and the deterministic holdout split.

One buffered group = one stream entry: one prompt, N latents of one sampling step, their true
rewards. Training pairs are the ordered pairs (w, l) inside a group with r_w - r_l > margin;
they are sampled uniformly over ALL eligible pairs in the buffer (a group with many distinct
rewards contributes more pairs, which is what "uniform over pairs" means).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass, field

import torch

from lasro_diffusion.pairs import eligible_pairs, ordered
from lasro_diffusion.text import TextEncoderBundle

from .model import SurrogateReward


def is_heldout(group_id: str, fraction: float) -> bool:
    """Deterministic split from a hash of ``group_id``: the same group is held out (or not)
    in every process and after every restart, so a held-out group can never leak into training
    when it is redelivered."""
    if fraction <= 0:
        return False
    h = int.from_bytes(hashlib.sha256(group_id.encode()).digest()[:8], "big")
    return h / 2.0**64 < fraction


@dataclass
class BufferedGroup:
    entry_id: str  # Redis stream entry id ("ms-seq")
    group_id: str
    prompt: str
    step: int  # 1 or 2: which head scores these latents
    latents: torch.Tensor  # (N, C, h, w), stored in the dtype it arrived in (fp16 halves memory)
    rewards: torch.Tensor  # (N,) float32
    pairs: torch.Tensor = field(default=None)  # (P, 2) (winner, loser); derived, not saved

    def to_state(self) -> dict:
        return {"entry_id": self.entry_id, "group_id": self.group_id, "prompt": self.prompt,
                "step": self.step, "latents": self.latents, "rewards": self.rewards}


class ReplayBuffer:
    """FIFO of at most ``capacity`` groups (oldest evicted), deduplicated on group_id."""

    def __init__(self, capacity: int, margin: float) -> None:
        self.capacity = int(capacity)
        self.margin = float(margin)
        self._groups: OrderedDict[str, BufferedGroup] = OrderedDict()  # group_id -> group
        self._entry_ids: set[str] = set()
        # Kept as a counter so status() (another thread) never iterates a mutating dict.
        self.num_pairs = 0

    def __len__(self) -> int:
        return len(self._groups)

    def __contains__(self, group_id: str) -> bool:
        return group_id in self._groups

    def has_entry(self, entry_id: str) -> bool:
        return entry_id in self._entry_ids

    @property
    def groups(self) -> list[BufferedGroup]:
        return list(self._groups.values())

    def add(self, group: BufferedGroup) -> bool:
        """Buffer ``group``; False (and nothing changes) if its group_id or entry id is known."""
        if group.group_id in self._groups or group.entry_id in self._entry_ids:
            return False
        group.rewards = group.rewards.to(torch.float32)
        group.pairs = eligible_pairs(group.rewards, self.margin)
        self._groups[group.group_id] = group
        self._entry_ids.add(group.entry_id)
        self.num_pairs += len(group.pairs)
        while len(self._groups) > self.capacity:
            _, old = self._groups.popitem(last=False)  # evict the oldest
            self._entry_ids.discard(old.entry_id)
            self.num_pairs -= len(old.pairs)
        return True

    def sample_pairs(
        self, n: int, generator: torch.Generator | None = None
    ) -> list[tuple[BufferedGroup, int, int]]:
        """``n`` pairs (group, winner index, loser index), uniform over all eligible pairs,
        with replacement. Empty list if the buffer holds no eligible pair."""
        groups = [g for g in self._groups.values() if len(g.pairs)]
        if not groups:
            return []
        counts = torch.tensor([len(g.pairs) for g in groups])  # (G,)
        cum = torch.cumsum(counts, 0)  # (G,)
        flat = torch.randint(int(cum[-1]), (n,), generator=generator)  # (n,) global pair index
        gi = torch.searchsorted(cum, flat, right=True)  # (n,) group of each pair
        start = cum[gi] - counts[gi]
        out = []
        for g, k in zip(gi.tolist(), (flat - start).tolist(), strict=True):
            win, lose = groups[g].pairs[k].tolist()
            out.append((groups[g], win, lose))
        return out

    def state(self) -> dict:
        """Plain dict of tensors/str/int (loadable with torch.load(weights_only=True))."""
        return {"capacity": self.capacity, "margin": self.margin,
                "groups": [g.to_state() for g in self._groups.values()]}

    @classmethod
    def from_state(
        cls, state: dict, capacity: int | None = None, margin: float | None = None
    ) -> ReplayBuffer:
        """Rebuild a buffer; ``capacity``/``margin`` override the saved ones (new settings win)."""
        buf = cls(capacity if capacity is not None else state["capacity"],
                  margin if margin is not None else state["margin"])
        for g in state["groups"]:
            buf.add(BufferedGroup(entry_id=g["entry_id"], group_id=g["group_id"],
                                  prompt=g["prompt"], step=int(g["step"]),
                                  latents=g["latents"], rewards=g["rewards"]))
        return buf


def score_items(model: SurrogateReward, text: TextEncoderBundle,
                items: list[tuple[BufferedGroup, int]], grad: bool) -> torch.Tensor:
    """Scores (len(items),) for (group, latent index) items, in item order. Items may mix
    steps (heads), prompts and latent sizes: one forward per (step, size) bucket."""
    buckets: dict[tuple, list[int]] = {}
    for i, (g, _) in enumerate(items):
        buckets.setdefault((g.step, tuple(g.latents.shape[-2:])), []).append(i)
    order, parts = [], []
    for (step, size), idx in buckets.items():
        z = torch.stack([items[i][0].latents[items[i][1]] for i in idx]).float()  # (B, C, h, w)
        cond = text.encode([items[i][0].prompt for i in idx], size)  # cached per prompt
        with torch.set_grad_enabled(grad):
            parts.append(model(z, cond, step))  # (B,)
        order += idx
    cat = torch.cat(parts)  # bucket order
    return cat[torch.argsort(torch.tensor(order))]  # back to item order (keeps the graph)


@torch.no_grad()
def pair_accuracy(model: SurrogateReward, text: TextEncoderBundle,
                  groups: list[BufferedGroup]) -> float | None:
    """Fraction of eligible pairs the model orders like the true reward; a tie counts 1/2, so
    an untrained (all-zero) head scores exactly 0.5. None when there is no eligible pair."""
    right = total = 0.0
    for g in groups:
        if not len(g.pairs):
            continue
        sc = score_items(model, text, [(g, k) for k in range(len(g.latents))], grad=False)  # (N,)
        r, n = ordered(sc, g.pairs)
        right, total = right + r, total + n
    return right / total if total else None
