"""The producer side of the sample-group stream: XADD groups, trimmed by length, through Redis
outages.

- An outage is ridden out: `publish` retries with capped exponential backoff for up to
  `outage_s` after the first failure, then raises `StreamUnavailable` carrying the groups it
  could not send (the trainer spools them to disk, checkpoints and stops; trainer/labeler.py).
  Once it has given up, later calls try once and fail fast until Redis answers again.
- A Redis that came back without what it had acknowledged (no append-only file, or one that
  lost its last second) is noticed before every publish: the stream's last id is below the last
  id this producer wrote. The groups of the journal (the most recent `journal_groups`, at most
  `journal_bytes`) newer than what Redis still has are published again. The learner keeps each
  group_id once, so a group sent twice is never learned twice.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterable

import redis

from ..errors import ServiceUnavailable
from .consumer import REDIS_DOWN, _s, _sid
from .record import DEFAULT_STREAM, SampleGroup

log = logging.getLogger(__name__)
MAXLEN = 100_000  # approximate trim: the stream keeps about this many newest groups


class StreamUnavailable(ServiceUnavailable):
    """Redis stayed unreachable through the producer's outage window; `unsent` are the groups
    of the failed call, in order."""

    def __init__(self, message: str, unsent: list[SampleGroup]) -> None:
        super().__init__(0, "redis_unavailable", message)
        self.unsent = unsent


class GroupProducer:
    """Appends sample groups to the stream in one round trip (MULTI/EXEC: all or none)."""

    def __init__(self, client: redis.Redis, stream: str = DEFAULT_STREAM, maxlen: int = MAXLEN, *,
                 outage_s: float = 120.0, journal_groups: int = 1024, journal_bytes: int = 64 * 1024 * 1024) -> None:
        self.redis, self.stream, self.maxlen = client, stream, maxlen
        self.outage_s, self.journal_groups, self.journal_bytes = outage_s, journal_groups, journal_bytes
        self.failures = 0  # failed attempts (each is redis-py's own retries, ~3 s)
        self.resent = 0  # groups published again because Redis had lost them
        self._journal: deque[tuple[str, dict]] = deque()  # (entry id, fields), oldest first
        self._journal_size = 0
        self._gave_up = False

    def publish(self, groups: Iterable[SampleGroup]) -> int:
        """XADD every group; returns how many were sent. Raises StreamUnavailable (a
        ServiceError) when Redis stays down for `outage_s`."""
        groups = list(groups)
        fields = [g.to_fields() for g in groups]
        delay, deadline = 0.1, None
        while True:
            try:
                self._resend_lost()
                ids = self._xadd(fields)
            except REDIS_DOWN as e:
                self.failures += 1
                now = time.monotonic()
                deadline = deadline or now + (0.0 if self._gave_up else self.outage_s)
                if now >= deadline:
                    self._gave_up = True
                    raise StreamUnavailable(f"redis unreachable for the stream {self.stream!r} "
                                            f"({type(e).__name__}: {e})", groups) from e
                log.warning("redis unreachable (%s); retrying for %.0f s more", e, deadline - now)
                time.sleep(min(delay, deadline - now))
                delay = min(delay * 2, 5.0)
                continue
            self._gave_up = False
            for entry_id, f in zip(ids, fields, strict=True):
                self._remember(entry_id, f)
            return len(groups)

    def _xadd(self, fields: list[dict]) -> list[str]:
        if not fields:
            return []
        pipe = self.redis.pipeline(transaction=True)
        for f in fields:
            pipe.xadd(self.stream, f, maxlen=self.maxlen, approximate=True)
        return [_s(i) for i in pipe.execute()]

    def _remember(self, entry_id: str, fields: dict) -> None:
        self._journal.append((entry_id, fields))
        self._journal_size += len(fields["data"])
        while self._journal and (len(self._journal) > self.journal_groups or self._journal_size > self.journal_bytes):
            self._journal_size -= len(self._journal.popleft()[1]["data"])

    def _resend_lost(self) -> None:
        """Publish again the journal's groups that Redis no longer has (see the module docstring)."""
        if not self._journal:
            return
        try:
            top = _s(self.redis.xinfo_stream(self.stream)["last-generated-id"])
        except redis.ResponseError:  # no such key: the stream itself is gone
            top = "0-0"
        if _sid(top) >= _sid(self._journal[-1][0]):
            return
        lost = [f for i, f in self._journal if _sid(i) > _sid(top)]
        log.warning("redis lost %d of the groups this producer sent (restarted without its data?); "
                    "publishing them again", len(lost))
        ids = self._xadd(lost)
        kept = [(i, f) for i, f in self._journal if _sid(i) <= _sid(top)]
        self._journal = deque(kept + list(zip(ids, lost, strict=True)))
        self.resent += len(lost)
