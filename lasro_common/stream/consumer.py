"""The consumer side of the sample-group stream: exactly-once for a caller that checkpoints.

Protocol (docs/surrogate-learner.md):

1. After a (re)start or reconnect, this consumer's own pending entries (delivered before a crash)
   are read first, walked with a cursor (``XREADGROUP <id>``); then entries left idle by dead
   consumers are reclaimed (``XAUTOCLAIM``, at most every ``claim_idle_ms / 2``); otherwise new
   entries are read (``XREADGROUP >``, blocking only when the caller has nothing else to do).
2. Each new entry is parsed (``SampleGroup``) and passed to the caller's ``handle``. An entry
   whose parse or ``handle`` raises is claimed again (``XCLAIM``, which counts a delivery) until
   it has been delivered ``max_deliveries`` times; then it is copied to ``<stream>:dead`` with the
   reason and acknowledged.
3. A handled entry is NOT acknowledged at once. The caller buffers it, writes a checkpoint that
   holds its buffer together with ``state()`` (the handled ids), and only then calls
   ``committed()``, which XACKs. A crash before the checkpoint redelivers the entry (it was never
   durable); a crash after it redelivers an id that ``state()`` already lists, which is simply
   acknowledged again (``duplicates_skipped``).

Redis going away is never an exception for the caller: ``poll`` records it (``connected``,
``last_error``), backs off exponentially (capped at 2 s) and reconnects on a later call.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import redis

from .record import DEAD_LETTER_SUFFIX, SampleGroup

log = logging.getLogger(__name__)
READ_COUNT = 16  # entries per XREADGROUP / XAUTOCLAIM call
REDIS_DOWN = (redis.ConnectionError, redis.TimeoutError, ConnectionError, TimeoutError, OSError)


def _sid(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _s(x: bytes | str) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


def _entries(reply) -> list:
    """[(id, fields), ...] from an XREADGROUP reply (RESP2 list or RESP3 dict)."""
    if not reply:
        return []
    if isinstance(reply, dict):  # RESP3
        return [e for v in reply.values() for e in (v[0] if v and isinstance(v[0], list) else v)]
    return [e for _, es in reply for e in es]


class GroupConsumer:
    """One named consumer in a consumer group of the sample-group stream (see the module doc).

    ``handle(entry_id, group) -> bool`` buffers a group and returns False when it was a duplicate
    (the same group_id under another entry id); it raises to refuse the entry.
    """

    def __init__(self, redis_factory: Callable[[], redis.Redis], *, stream: str, group: str,
                 consumer: str, claim_idle_ms: int, max_deliveries: int,
                 stop: threading.Event | None = None) -> None:
        self.redis_factory = redis_factory
        self.stream, self.group, self.consumer = stream, group, consumer
        self.claim_idle_ms, self.max_deliveries = claim_idle_ms, max_deliveries
        self._stop = stop or threading.Event()  # waits end early when the owner stops
        self.processed: set[str] = set()  # entry ids handled (buffered, skipped or dead-lettered)
        self.unacked: dict[str, None] = {}  # handled since the last commit (an ordered set)
        self.to_ack: list[str] = []  # committed, XACK not yet confirmed by Redis
        self.retry: list[str] = []  # entries that failed and will be XCLAIMed again
        self.duplicates_skipped = self.dead_letters = 0
        self.uncommitted = False  # something changed that the next checkpoint must hold
        self.connected, self.last_error = False, None
        self.stream_lag: int | None = None
        self.pending: int | None = None
        self._r: redis.Redis | None = None
        self._own_pending_done, self._pel_cursor = False, "0"
        self._claim_cursor, self._next_claim = "0-0", 0.0
        self._backoff, self._next_connect = 0.05, 0.0

    # ---------------------------------------------------------------- checkpointed state
    def state(self) -> dict:
        """What a checkpoint must hold for exactly-once delivery (plain lists and ints)."""
        return {"processed": sorted(self.processed), "unacked": list(self.unacked) + self.to_ack,
                "duplicates_skipped": self.duplicates_skipped, "dead_letters": self.dead_letters}

    def load_state(self, state: dict) -> None:
        self.processed = set(state["processed"])
        self.duplicates_skipped = int(state["duplicates_skipped"])
        self.dead_letters = int(state["dead_letters"])
        # The crash may have happened between the checkpoint and its XACK: ack those again.
        self.to_ack = list(state["unacked"])

    def committed(self) -> None:
        """The caller's checkpoint holding every handled entry is durable: acknowledge them."""
        self.to_ack += list(self.unacked)
        self.unacked, self.uncommitted = {}, False
        try:
            self._flush_acks()
        except REDIS_DOWN as e:
            self._disconnected(e)  # acked after reconnecting; a redelivery is a known duplicate

    def prune(self, keep: set[str]) -> None:
        """Forget handled ids older than the oldest entry still in the stream (they can never
        come back), except ``keep`` (ids the caller still buffers)."""
        if self._r is None:
            return
        try:
            first = self._r.xrange(self.stream, count=1)
        except REDIS_DOWN as e:
            self._disconnected(e)
            return
        if first:
            oldest = _sid(_s(first[0][0]))
            self.processed = {i for i in self.processed if _sid(i) >= oldest or i in keep}

    # ---------------------------------------------------------------- reading
    def poll(self, handle: Callable[[str, SampleGroup], bool], block_ms: int, may_block: bool) -> int:
        """Read one batch of entries and hand each new one to ``handle``; returns how many
        entries were read. Blocks up to ``block_ms`` only when ``may_block``."""
        try:
            r = self._redis(block_ms / 1000, may_block)
            if r is None:
                return 0
            try:
                entries = self._read(r, block_ms if may_block else None)
            except redis.ResponseError as e:
                if "NOGROUP" not in str(e):
                    raise
                log.warning("consumer group vanished (redis lost its state?); re-creating it")
                self._ensure_group()
                self._own_pending_done, self._pel_cursor = False, "0"
                return 0
            for entry_id, fields in entries:
                self._dispatch(r, _s(entry_id), fields, handle)
            self._flush_acks()
            self._refresh_lag(r)
            return len(entries)
        except REDIS_DOWN as e:
            self._disconnected(e)
            return 0

    def _redis(self, wait_s: float, may_block: bool) -> redis.Redis | None:
        if self._r is None:
            delay = self._next_connect - time.monotonic()
            if delay > 0:
                if may_block:  # nothing else to do: wait out the backoff (interruptible)
                    self._stop.wait(min(delay, wait_s))
                return None
            r = self.redis_factory()
            r.ping()
            self._r = r
            self._ensure_group()
            self._own_pending_done, self._pel_cursor = False, "0"  # re-read our own PEL first
            self.connected, self._backoff = True, 0.05
        return self._r

    def _disconnected(self, e: BaseException) -> None:
        self.last_error = f"redis: {type(e).__name__}: {e}"
        if self.connected or self._r is not None:
            log.warning("lost redis: %s", e)
        self.connected, self._r = False, None
        self._next_connect = time.monotonic() + self._backoff
        self._backoff = min(2.0, self._backoff * 2)  # capped exponential backoff

    def _ensure_group(self) -> None:
        try:
            self._r.xgroup_create(self.stream, self.group, id="0", mkstream=True)
        except redis.ResponseError as e:
            if "BUSYGROUP" not in str(e):
                raise

    def _read(self, r: redis.Redis, block_ms: int | None) -> list:
        if self.retry:
            ids, self.retry = self.retry, []
            return r.xclaim(self.stream, self.group, self.consumer, 0, ids)  # bumps delivery count
        if not self._own_pending_done:
            # Our own PEL (entries delivered to this consumer name before a crash/reconnect),
            # walked with a cursor: XREADGROUP with an id returns pending entries after it.
            entries = _entries(r.xreadgroup(self.group, self.consumer, {self.stream: self._pel_cursor},
                                            count=READ_COUNT))
            if entries:
                self._pel_cursor = _s(entries[-1][0])
            else:
                self._own_pending_done = True
            return entries
        if time.monotonic() >= self._next_claim:
            res = r.xautoclaim(self.stream, self.group, self.consumer, self.claim_idle_ms,
                               self._claim_cursor, count=READ_COUNT)
            self._claim_cursor = _s(res[0])
            if self._claim_cursor == "0-0":  # a full pass over the PEL: next one later
                self._next_claim = time.monotonic() + max(self.claim_idle_ms / 2000, 0.5)
            return res[1]
        block = None if block_ms is None else max(1, block_ms)  # None: return at once
        return _entries(r.xreadgroup(self.group, self.consumer, {self.stream: ">"},
                                     count=READ_COUNT, block=block))

    def _dispatch(self, r: redis.Redis, entry_id: str, fields: dict | None,
                  handle: Callable[[str, SampleGroup], bool]) -> None:
        if entry_id in self.unacked:  # ours, handled, waiting for the next commit
            return
        if entry_id in self.processed:
            self.duplicates_skipped += 1
            self.to_ack.append(entry_id)
            return
        if not fields:  # trimmed/deleted while pending: nothing to learn, just release it
            self.to_ack.append(entry_id)
            return
        try:
            fresh = handle(entry_id, SampleGroup.from_fields(fields))
        except Exception as e:
            self._failed(r, entry_id, fields, f"{type(e).__name__}: {e}")
            return
        if not fresh:
            self.duplicates_skipped += 1  # the same group sent twice under two entry ids
        self.processed.add(entry_id)
        self.unacked[entry_id] = None
        self.uncommitted = True

    def _failed(self, r: redis.Redis, entry_id: str, fields: dict, reason: str) -> None:
        info = r.xpending_range(self.stream, self.group, entry_id, entry_id, 1)
        if not info:  # no longer pending (acknowledged elsewhere): not ours to judge
            return
        delivered = int(info[0]["times_delivered"])
        if delivered < self.max_deliveries:
            log.warning("entry %s failed (delivery %d): %s", entry_id, delivered, reason)
            self.retry.append(entry_id)
            return
        dead = {**{_s(k): v for k, v in fields.items()}, "entry_id": entry_id, "reason": reason}
        r.xadd(self.stream + DEAD_LETTER_SUFFIX, dead)
        r.xack(self.stream, self.group, entry_id)
        self.dead_letters += 1
        self.processed.add(entry_id)
        self.uncommitted = True
        log.error("entry %s dead-lettered after %d deliveries: %s", entry_id, delivered, reason)

    def _flush_acks(self) -> None:
        if self.to_ack and self._r is not None:
            self._r.xack(self.stream, self.group, *self.to_ack)
            self.to_ack = []

    def _refresh_lag(self, r: redis.Redis) -> None:
        for g in r.xinfo_groups(self.stream):
            if _s(g["name"]) == self.group:
                self.pending = int(g["pending"])
                lag = g.get("lag")
                if lag is None:  # Redis < 7 has no 'lag': 0 if caught up, else unknown
                    last = _s(r.xinfo_stream(self.stream)["last-generated-id"])
                    lag = 0 if _s(g["last-delivered-id"]) == last else None
                self.stream_lag = None if lag is None else int(lag)

    def status(self) -> dict:
        return {"duplicates_skipped": self.duplicates_skipped, "dead_letters": self.dead_letters,
                "stream_lag": self.stream_lag, "pending": self.pending,
                "unacked": len(self.unacked) + len(self.to_ack),
                "redis_connected": self.connected, "last_error": self.last_error}
