"""The producer side of the sample-group stream: XADD groups, trimmed by length."""

from __future__ import annotations

from collections.abc import Iterable

import redis

from .record import DEFAULT_STREAM, SampleGroup

MAXLEN = 100_000  # approximate trim: the stream keeps about this many newest groups


class GroupProducer:
    """Appends sample groups to the stream in one round trip (a non-transactional pipeline)."""

    def __init__(self, client: redis.Redis, stream: str = DEFAULT_STREAM, maxlen: int = MAXLEN) -> None:
        self.redis, self.stream, self.maxlen = client, stream, maxlen

    def publish(self, groups: Iterable[SampleGroup]) -> int:
        """XADD every group; returns how many were sent."""
        pipe = self.redis.pipeline(transaction=False)
        n = 0
        for g in groups:
            pipe.xadd(self.stream, g.to_fields(), maxlen=self.maxlen, approximate=True)
            n += 1
        pipe.execute()
        return n
