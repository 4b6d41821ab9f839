"""The online learner of R_psi: when to train, what to buffer, when to checkpoint.

The stream protocol (reading, reclaiming, retries, dead letters, acknowledging only after a
checkpoint) lives in lasro_common/stream/consumer.py; how R_psi trains (the Bradley-Terry step,
publishing, held-out accuracy) in fit.py. This class decides the rest: which buffer a group goes
to, how many updates new data buys (the replay ratio), and when a checkpoint is written, holding
the buffers and the consumer's handled ids together so that delivery is exactly-once
(docs/surrogate-learner.md).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import redis
import torch

from lasro_common.errors import InvalidInput
from lasro_common.stream import GroupConsumer, SampleGroup
from lasro_diffusion.text import TextEncoderBundle

from .buffer import BufferedGroup, ReplayBuffer, is_heldout
from .checkpoint import (
    MODEL_FILE,
    check_state_model,
    load_checkpoint,
    model_id,
    model_signature,
    save_checkpoint,
    write_model_file,
)
from .fit import Fitter
from .follow import write_published
from .model import SurrogateReward
from .settings import SurrogateSettings
from .slot import ModelSlot

log = logging.getLogger(__name__)
MAX_STEPS_PER_ITER = 8  # bound one iteration so reads, checkpoints and stop() stay responsive


class Learner:
    def __init__(self, model: SurrogateReward, text: TextEncoderBundle, slot: ModelSlot,
                 settings: SurrogateSettings, redis_factory: Callable[[], redis.Redis]) -> None:
        self.model, self.text, self.slot, self.s = model, text, slot, settings
        self.fit = Fitter(model, text, slot, settings)  # how R_psi trains; this class: when
        self.replay = ReplayBuffer(settings.buffer_groups, settings.margin)
        self.heldout = ReplayBuffer(self._heldout_capacity(), settings.margin)
        self.credit = 0.0  # optimiser steps owed to newly buffered training groups
        self.groups_consumed = 0
        self.last_error: str | None = None
        self._stop = threading.Event()
        self.stream = GroupConsumer(redis_factory, stream=settings.stream, group=settings.group,
                                    consumer=settings.consumer, claim_idle_ms=settings.claim_idle_ms,
                                    max_deliveries=settings.max_deliveries, stop=self._stop)
        self._published_version: int | None = None  # last version written for replicas
        self._last_ckpt = time.monotonic()
        self._dirty = False  # trained since the last checkpoint
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # learner-internal only; serving never takes it

    def _heldout_capacity(self) -> int:
        return max(1, round(self.s.buffer_groups * self.s.holdout_fraction))

    # ---------------------------------------------------------------- lifecycle
    def restore(self) -> bool:
        state = load_checkpoint(self.s.checkpoint_dir)
        if state is None:
            return False
        check_state_model(self.s.checkpoint_dir, state, self.s.base_model, self.model.state_dict())
        self.replay = ReplayBuffer.from_state(state["replay"], self.s.buffer_groups, self.s.margin)
        self.heldout = ReplayBuffer.from_state(state["heldout"], self._heldout_capacity(),
                                               self.s.margin)
        self.credit = float(state["credit"])
        self.groups_consumed = int(state["groups_consumed"])
        self.stream.load_state(state)
        self.fit.load(state)  # weights, optimiser, version, accuracy history; publishes them
        log.info("restored learner checkpoint: version %d, %d+%d groups", self.fit.version,
                 len(self.replay), len(self.heldout))
        return True

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="surrogate-learner", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        with self._lock:
            self._checkpoint()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception as e:  # never die silently: record and keep going
                log.exception("learner iteration failed")
                self.last_error = f"{type(e).__name__}: {e}"
                self._stop.wait(1.0)

    # ---------------------------------------------------------------- one iteration
    def run_once(self, block_ms: int = 1000) -> int:
        """Read a batch of groups (blocking only when no training is owed), train what the new
        data bought (at most MAX_STEPS_PER_ITER steps), checkpoint when due."""
        with self._lock:
            handled = self.stream.poll(self._buffer, block_ms, may_block=self.credit < 1)
            for _ in range(min(int(self.credit), MAX_STEPS_PER_ITER)):
                self.credit -= 1
                if self.fit.step(self.replay, self.heldout):
                    self._dirty = True
            due = time.monotonic() - self._last_ckpt >= self.s.checkpoint_every_s
            if (self._dirty or self.stream.uncommitted) and due:
                self._checkpoint()
            return handled

    def _buffer(self, entry_id: str, g: SampleGroup) -> bool:
        """Validate one group and put it in its buffer; False if its group_id is known already.
        Raising refuses the entry (the consumer retries it, then dead-letters it)."""
        latents = torch.from_numpy(g.latents.copy())  # (N, C, h, w)
        if max(latents.shape[-2:]) > self.s.max_latent_side:  # same limit as the endpoints
            raise InvalidInput(f"latent side {max(latents.shape[-2:])} > {self.s.max_latent_side}")
        self.model.validate(latents.float(), self.text.encode([g.prompt] * len(latents),
                                                              tuple(latents.shape[-2:])), g.step)
        if g.group_id in self.replay or g.group_id in self.heldout:
            return False
        item = BufferedGroup(entry_id, g.group_id, g.prompt, g.step, latents,
                             torch.from_numpy(g.rewards.copy()))
        self.groups_consumed += 1
        if is_heldout(g.group_id, self.s.holdout_fraction):
            self.heldout.add(item)
        else:
            self.replay.add(item)
            if len(item.pairs):
                self.credit += self.s.updates_per_group  # replay ratio: train per new training group
        return True

    def heldout_accuracy(self) -> float | None:
        return self.fit.heldout_accuracy(self.heldout.groups)

    # ---------------------------------------------------------------- checkpoint + ack
    def _checkpoint(self) -> None:
        self.stream.prune(keep={g.entry_id for g in self.replay.groups + self.heldout.groups})
        fit = self.fit.state()
        signature = model_signature(fit["model"])
        save_checkpoint(self.s.checkpoint_dir, {
            **fit, **self.stream.state(), "replay": self.replay.state(),
            "heldout": self.heldout.state(), "credit": self.credit,
            "groups_consumed": self.groups_consumed, "base_model": self.s.base_model,
            "model_id": model_id(self.s.base_model), "model_signature": signature})
        if not (self.s.checkpoint_dir / MODEL_FILE).is_file():
            write_model_file(self.s.checkpoint_dir, self.s.base_model, signature)
        self._last_ckpt, self._dirty = time.monotonic(), False
        self.stream.committed()  # only now is every buffered entry durable: acknowledge them
        self._write_published()

    def _write_published(self) -> None:
        """The serving weights for read replicas (follow.py), only when a new version exists.
        Outside the ack path: a failure here concerns replicas, never the learner's data."""
        model, version = self.slot.get()
        if version == self._published_version:
            return
        try:
            write_published(self.s.checkpoint_dir, model, version)
            self._published_version = version
        except OSError as e:
            log.warning("could not write the published weights for replicas: %s", e)

    def status(self) -> dict:
        stream = self.stream.status()
        return {
            "version": self.fit.version, "updates": self.fit.updates,
            "buffer_groups": len(self.replay), "heldout_groups": len(self.heldout),
            "replay_pairs": self.replay.num_pairs, "training_owed": int(self.credit),
            "heldout_pair_accuracy": self.fit.accuracy,
            "heldout_accuracy_history": [list(h) for h in self.fit.history],
            "groups_consumed": self.groups_consumed, **stream,
            "last_error": self.last_error or stream["last_error"],
        }
