"""The online learner of R_psi: Redis stream of sample groups -> replay buffer -> Bradley-Terry.

Exactly-once protocol (docs/surrogate-learner.md): an entry is buffered, then a checkpoint with
the buffer AND the set of processed entry ids is written atomically, and only then is the entry
XACKed. A crash before the checkpoint redelivers the entry (it was never in a durable buffer); a
crash after it redelivers an id the checkpoint already knows, which is just acknowledged.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import redis
import torch

from lasro_common.errors import InvalidInput
from lasro_common.records import DEAD_LETTER_SUFFIX, SampleGroup
from lasro_diffusion.text import TextEncoderBundle

from .buffer import BufferedGroup, ReplayBuffer, is_heldout
from .checkpoint import load_checkpoint, save_checkpoint
from .fit import Fitter
from .follow import write_published
from .model import SurrogateReward
from .settings import SurrogateSettings
from .slot import ModelSlot

log = logging.getLogger(__name__)
READ_COUNT = 16  # entries per XREADGROUP / XAUTOCLAIM call
MAX_STEPS_PER_ITER = 8  # bound one iteration so reads, checkpoints and stop() stay responsive
REDIS_DOWN = (redis.ConnectionError, redis.TimeoutError, ConnectionError, TimeoutError, OSError)


def _sid(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _s(x: bytes | str) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


class Learner:
    def __init__(self, model: SurrogateReward, text: TextEncoderBundle, slot: ModelSlot,
                 settings: SurrogateSettings, redis_factory: Callable[[], redis.Redis]) -> None:
        self.model, self.text, self.slot, self.s = model, text, slot, settings
        self.redis_factory = redis_factory
        self.fit = Fitter(model, text, slot, settings)  # how R_psi trains; this class: when
        self.replay = ReplayBuffer(settings.buffer_groups, settings.margin)
        self.heldout = ReplayBuffer(self._heldout_capacity(), settings.margin)
        self.credit = 0.0
        self._published_version: int | None = None  # last version written for replicas
        self.groups_consumed = self.duplicates_skipped = self.dead_letters = 0
        self.processed: set[str] = set()  # entry ids handled (buffered, skipped or dead-lettered)
        self.unacked: dict[str, None] = {}  # processed since the last checkpoint (ordered set)
        self.to_ack: list[str] = []  # durably checkpointed, XACK not yet confirmed by Redis
        self.retry: list[str] = []  # entries that failed and will be XCLAIMed again
        self.stream_lag: int | None = None
        self.pending: int | None = None
        self.redis_connected, self.last_error = False, None
        self._r: redis.Redis | None = None
        self._own_pending_done, self._pel_cursor = False, "0"  # our PEL first after (re)start
        self._claim_cursor, self._next_claim = "0-0", 0.0
        self._backoff, self._next_connect = 0.05, 0.0
        self._last_ckpt = time.monotonic()
        self._dirty = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # learner-internal only; serving never takes it

    def _heldout_capacity(self) -> int:
        return max(1, round(self.s.buffer_groups * self.s.holdout_fraction))

    # ---------------------------------------------------------------- lifecycle
    def restore(self) -> bool:
        state = load_checkpoint(self.s.checkpoint_dir)
        if state is None:
            return False
        self.replay = ReplayBuffer.from_state(state["replay"], self.s.buffer_groups, self.s.margin)
        self.heldout = ReplayBuffer.from_state(state["heldout"], self._heldout_capacity(),
                                               self.s.margin)
        self.credit = float(state["credit"])
        self.groups_consumed = int(state["groups_consumed"])
        self.duplicates_skipped = int(state["duplicates_skipped"])
        self.dead_letters = int(state["dead_letters"])
        self.processed = set(state["processed"])
        # The crash may have happened between the checkpoint and its XACK: ack those again.
        self.to_ack = list(state["unacked"])
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
        with self._lock:
            handled = 0
            try:
                handled = self._consume(block_ms)
            except REDIS_DOWN as e:
                self._disconnected(e)
            self._train(min(int(self.credit), MAX_STEPS_PER_ITER))
            if self._dirty and time.monotonic() - self._last_ckpt >= self.s.checkpoint_every_s:
                self._checkpoint()
            return handled

    def _disconnected(self, e: BaseException) -> None:
        self.last_error = f"redis: {type(e).__name__}: {e}"
        if self.redis_connected or self._r is not None:
            log.warning("lost redis: %s", e)
        self.redis_connected, self._r = False, None
        self._next_connect = time.monotonic() + self._backoff
        self._backoff = min(2.0, self._backoff * 2)  # capped exponential backoff

    def _redis(self, wait_s: float) -> redis.Redis | None:
        if self._r is None:
            delay = self._next_connect - time.monotonic()
            if delay > 0:
                if self.credit < 1:  # nothing to train either: wait (interruptible by stop)
                    self._stop.wait(min(delay, wait_s))
                return None
            r = self.redis_factory()
            r.ping()
            self._r = r
            self._ensure_group()
            self._own_pending_done, self._pel_cursor = False, "0"  # re-read our own PEL first
            self.redis_connected, self._backoff = True, 0.05
        return self._r

    def _ensure_group(self) -> None:
        try:
            self._r.xgroup_create(self.s.stream, self.s.group, id="0", mkstream=True)
        except redis.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise

    def _consume(self, block_ms: int) -> int:
        r = self._redis(block_ms / 1000)
        if r is None:
            return 0
        try:
            handled = self._read_and_handle(r, block_ms)
        except redis.ResponseError as e:
            if "NOGROUP" not in str(e):
                raise
            log.warning("consumer group vanished (redis lost its state?); re-creating it")
            self._ensure_group()
            self._own_pending_done, self._pel_cursor = False, "0"
            return 0
        self._flush_acks()
        self._refresh_lag(r)
        return handled

    def _read_and_handle(self, r: redis.Redis, block_ms: int) -> int:
        s = self.s
        if self.retry:
            ids, self.retry = self.retry, []
            entries = r.xclaim(s.stream, s.group, s.consumer, 0, ids)  # bumps delivery count
        elif not self._own_pending_done:
            # Our own PEL (entries delivered to this consumer name before a crash/reconnect),
            # walked with a cursor: XREADGROUP with an id returns pending entries after it.
            entries = self._entries(r.xreadgroup(s.group, s.consumer, {s.stream: self._pel_cursor},
                                                 count=READ_COUNT))
            if entries:
                self._pel_cursor = _s(entries[-1][0])
            else:
                self._own_pending_done = True
        elif time.monotonic() >= self._next_claim:
            res = r.xautoclaim(s.stream, s.group, s.consumer, s.claim_idle_ms,
                               self._claim_cursor, count=READ_COUNT)
            self._claim_cursor, entries = _s(res[0]), res[1]
            if self._claim_cursor == "0-0":  # a full pass over the PEL: next one later
                self._next_claim = time.monotonic() + max(s.claim_idle_ms / 2000, 0.5)
        else:
            block = None if self.credit >= 1 else max(1, block_ms)  # training owed: don't block
            entries = self._entries(r.xreadgroup(s.group, s.consumer, {s.stream: ">"},
                                                 count=READ_COUNT, block=block))
        for entry_id, fields in entries:
            self._handle(r, _s(entry_id), fields)
        return len(entries)

    @staticmethod
    def _entries(reply) -> list:
        if not reply:
            return []
        if isinstance(reply, dict):  # RESP3
            return [e for v in reply.values() for e in (v[0] if v and isinstance(v[0], list) else v)]
        return [e for _, es in reply for e in es]

    def _handle(self, r: redis.Redis, entry_id: str, fields: dict | None) -> None:
        s = self.s
        if entry_id in self.unacked:  # ours, buffered, waiting for the next checkpoint
            return
        if entry_id in self.processed:
            self.duplicates_skipped += 1
            self.to_ack.append(entry_id)
            return
        if not fields:  # trimmed/deleted while pending: nothing to learn, just release it
            self.to_ack.append(entry_id)
            return
        try:
            g = SampleGroup.from_fields(fields)
            latents = torch.from_numpy(g.latents.copy())  # (N, C, h, w)
            if max(latents.shape[-2:]) > s.max_latent_side:  # same limit as the endpoints
                raise InvalidInput(f"latent side {max(latents.shape[-2:])} > {s.max_latent_side}")
            self.model.validate(latents.float(), self.text.encode([g.prompt] * len(latents),
                                                                  tuple(latents.shape[-2:])), g.step)
        except Exception as e:
            self._failed(r, entry_id, fields, f"{type(e).__name__}: {e}")
            return
        item = BufferedGroup(entry_id, g.group_id, g.prompt, g.step, latents,
                             torch.from_numpy(g.rewards.copy()))
        if g.group_id in self.replay or g.group_id in self.heldout:
            self.duplicates_skipped += 1  # same group sent twice under two entry ids
        elif is_heldout(g.group_id, s.holdout_fraction):
            self.heldout.add(item)
            self.groups_consumed += 1
        else:
            self.replay.add(item)
            self.groups_consumed += 1
            if len(item.pairs):
                self.credit += s.updates_per_group  # replay ratio: train per new training group
        self.processed.add(entry_id)
        self.unacked[entry_id] = None
        self._dirty = True

    def _failed(self, r: redis.Redis, entry_id: str, fields: dict, reason: str) -> None:
        s = self.s
        info = r.xpending_range(s.stream, s.group, entry_id, entry_id, 1)
        if not info:  # no longer pending (acknowledged elsewhere): not ours to judge
            return
        delivered = int(info[0]["times_delivered"])
        if delivered < s.max_deliveries:
            log.warning("entry %s failed (delivery %d): %s", entry_id, delivered, reason)
            self.retry.append(entry_id)
            return
        dead = {**{_s(k): v for k, v in fields.items()}, "entry_id": entry_id, "reason": reason}
        r.xadd(s.stream + DEAD_LETTER_SUFFIX, dead)
        r.xack(s.stream, s.group, entry_id)
        self.dead_letters += 1
        self.processed.add(entry_id)
        self._dirty = True
        log.error("entry %s dead-lettered after %d deliveries: %s", entry_id, delivered, reason)

    def _flush_acks(self) -> None:
        if self.to_ack and self._r is not None:
            self._r.xack(self.s.stream, self.s.group, *self.to_ack)
            self.to_ack = []

    def _refresh_lag(self, r: redis.Redis) -> None:
        for g in r.xinfo_groups(self.s.stream):
            if _s(g["name"]) == self.s.group:
                self.pending = int(g["pending"])
                lag = g.get("lag")
                if lag is None:  # Redis < 7 has no 'lag': 0 if caught up, else unknown
                    last = _s(r.xinfo_stream(self.s.stream)["last-generated-id"])
                    lag = 0 if _s(g["last-delivered-id"]) == last else None
                self.stream_lag = None if lag is None else int(lag)

    # ---------------------------------------------------------------- training
    def _train(self, steps: int) -> None:
        for _ in range(steps):
            self.credit -= 1
            if self.fit.step(self.replay, self.heldout):
                self._dirty = True

    def heldout_accuracy(self) -> float | None:
        return self.fit.heldout_accuracy(self.heldout.groups)

    # ---------------------------------------------------------------- checkpoint + ack
    def _prune_processed(self) -> None:
        """Forget ids older than the oldest entry still in the stream: they can never come back."""
        if self._r is None:
            return
        first = self._r.xrange(self.s.stream, count=1)
        if first:
            oldest = _sid(_s(first[0][0]))
            keep = {g.entry_id for g in self.replay.groups + self.heldout.groups}
            self.processed = {i for i in self.processed if _sid(i) >= oldest or i in keep}

    def _checkpoint(self) -> None:
        try:
            self._prune_processed()
        except REDIS_DOWN as e:
            self._disconnected(e)
        save_checkpoint(self.s.checkpoint_dir, {
            **self.fit.state(), "replay": self.replay.state(), "heldout": self.heldout.state(), "credit": self.credit,
            "groups_consumed": self.groups_consumed, "dead_letters": self.dead_letters,
            "duplicates_skipped": self.duplicates_skipped, "processed": sorted(self.processed),
            "unacked": list(self.unacked) + self.to_ack})
        self._last_ckpt, self._dirty = time.monotonic(), False
        # Only now is every buffered entry durable: acknowledge them.
        self.to_ack += list(self.unacked)
        self.unacked = {}
        try:
            self._flush_acks()
        except REDIS_DOWN as e:
            self._disconnected(e)  # acked after reconnecting; a redelivery is a known duplicate
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
        return {
            "version": self.fit.version, "updates": self.fit.updates,
            "buffer_groups": len(self.replay), "heldout_groups": len(self.heldout),
            "replay_pairs": self.replay.num_pairs, "training_owed": int(self.credit),
            "heldout_pair_accuracy": self.fit.accuracy,
            "heldout_accuracy_history": [list(h) for h in self.fit.history],
            "groups_consumed": self.groups_consumed, "duplicates_skipped": self.duplicates_skipped,
            "dead_letters": self.dead_letters, "stream_lag": self.stream_lag,
            "pending": self.pending, "unacked": len(self.unacked) + len(self.to_ack),
            "redis_connected": self.redis_connected, "last_error": self.last_error,
        }
