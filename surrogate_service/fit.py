"""Bradley-Terry fitting of R_psi: one update on pairs sampled from the replay buffer, publishing
the weights to the serving slot every `publish_every` updates, held-out pair accuracy every
`eval_every` updates. The learner (learner.py) decides *when* to train; this decides *how*."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lasro_diffusion.text import TextEncoderBundle

from .buffer import BufferedGroup, ReplayBuffer, pair_accuracy, score_items
from .model import SurrogateReward
from .settings import SurrogateSettings
from .slot import ModelSlot

EVAL_MAX_GROUPS = 256  # held-out groups scored per evaluation (most recent), bounds its cost
HISTORY = 50  # [version, accuracy] points kept for /status


class Fitter:
    def __init__(self, model: SurrogateReward, text: TextEncoderBundle, slot: ModelSlot | None,
                 settings: SurrogateSettings) -> None:
        """`slot` None: train only, never publish (offline studies, bench/surrogate_data.py)."""
        self.model, self.text, self.slot, self.s = model, text, slot, settings
        # The slot may have frozen a shared module; the training copy must train.
        model.requires_grad_(True)
        if model.freeze_backbone:
            model.backbone.requires_grad_(False)
        self.opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                     lr=settings.lr, weight_decay=settings.weight_decay)
        self.gen = torch.Generator().manual_seed(0)
        self.version, self.updates = (slot.version if slot else 0), 0
        self.accuracy: float | None = None
        self.history: list[list[float]] = []

    def step(self, replay: ReplayBuffer, heldout: ReplayBuffer) -> bool:
        """One AdamW step on `pairs_per_update` pairs; False (nothing done) if there is no pair."""
        pairs = replay.sample_pairs(self.s.pairs_per_update, self.gen)
        if not pairs:
            return False
        self.model.train()
        items = [(g, w) for g, w, _ in pairs] + [(g, lo) for g, _, lo in pairs]
        sc = score_items(self.model, self.text, items, grad=True)  # (2P,): winners, losers
        n = len(pairs)
        loss = -F.logsigmoid(sc[:n] - sc[n:]).mean()  # Bradley-Terry
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.updates += 1
        if self.slot is not None and self.updates % self.s.publish_every == 0:
            self.publish()
        if self.updates % self.s.eval_every == 0:
            self.evaluate(heldout.groups)
        return True

    def publish(self) -> None:
        self.version += 1
        # load_state_dict in the slot copies the tensors into a fresh serving model.
        self.slot.publish(self.model.state_dict(), self.version)

    def heldout_accuracy(self, groups: list[BufferedGroup]) -> float | None:
        """Pair accuracy of the training copy on the most recent held-out groups."""
        self.model.eval()
        try:
            return pair_accuracy(self.model, self.text, groups[-EVAL_MAX_GROUPS:])
        finally:
            self.model.train()

    def evaluate(self, groups: list[BufferedGroup]) -> None:
        """Scoring the held-out groups costs more than several updates: every `eval_every`, not
        at every publish."""
        self.accuracy = self.heldout_accuracy(groups)
        if self.accuracy is not None:
            self.history = (self.history + [[self.version, self.accuracy]])[-HISTORY:]

    def state(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                "version": self.version, "updates": self.updates, "history": self.history}

    def load(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.version, self.updates = int(state["version"]), int(state["updates"])
        self.history = [list(h) for h in state["history"]]
        self.accuracy = self.history[-1][1] if self.history else None
        self.slot.publish(self.model.state_dict(), self.version)
