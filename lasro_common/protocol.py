"""The HTTP server's side of slow, idle and too many clients: what only the connection layer can
see, on top of uvicorn's httptools protocol.

- A new connection must start a request within `read_timeout_s`; a request's headers must be
  complete within `read_timeout_s` of its first byte and stay under 64 KiB. Otherwise: 408 (or
  431) and the connection is closed. (Body timeouts are the ASGI middleware's, server.py; idle
  keep-alive connections close after `keep_alive_s`, uvicorn's own timer.)
- At most `max_connections` connections: when a new one would exceed the cap, the connection
  that has waited longest on its client (idle, or half-way through its headers) is closed; if
  every connection has a request in progress, the new one gets 503 and is closed. The listen
  backlog is the cap (at least 128), and the process's open-file limit is raised to the cap plus
  four accept batches plus a reserve, so accept() never fails for want of descriptors.

`server_options(settings)` gives the uvicorn keyword arguments both `python -m <service>` and the
tests' `serve_in_thread` use.
"""

from __future__ import annotations

import json
import logging
import resource
import time
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from . import PROTOCOL_HEADER, PROTOCOL_VERSION

log = logging.getLogger(__name__)
MAX_HEADER_BYTES = 64 * 1024
FD_RESERVE = 256  # descriptors beyond the connection cap: files, Redis, model loading, logs
ACCEPT_DEPTH = 4  # accept batches in flight at most (see _fit_fd_limit)
LOG_EVERY_S = 10.0  # at most one warning per kind per this many seconds (no log floods)


def _raw_error(status: int, reason: str, code: str, message: str) -> bytes:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    return (b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\nconnection: close\r\n"
            b"%s: %s\r\n\r\n" % (status, reason.encode(), len(body), PROTOCOL_HEADER.lower().encode(),
                                 PROTOCOL_VERSION.encode())) + body


class _Throttled:
    """Counts events and logs one line per kind at most every LOG_EVERY_S."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.last: dict[str, float] = {}

    def __call__(self, kind: str, message: str) -> None:
        self.counts[kind] = self.counts.get(kind, 0) + 1
        now = time.monotonic()
        if now - self.last.get(kind, -LOG_EVERY_S) >= LOG_EVERY_S:
            self.last[kind] = now
            log.warning("%s (%d so far)", message, self.counts[kind])


class GuardedProtocol(HttpToolsProtocol):
    """HttpToolsProtocol with a read timeout for headers and new connections, a header size cap
    and a connection cap that evicts connections waiting on their clients first."""

    read_timeout: float = 15.0
    max_connections: int = 1024
    events = _Throttled()

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self._timer = None
        self._in_headers, self._header_bytes = False, 0
        self._waiting_since = time.monotonic()
        super().connection_made(transport)
        if len(self.connections) > self.max_connections and not self._make_room():
            self.events("refused", f"connection cap of {self.max_connections} reached with every connection busy; "
                                   "refusing new connections (503)")
            transport.write(_raw_error(503, "Service Unavailable", "overloaded",
                                       "too many connections; retry later"))
            transport.close()
            return
        self._arm(self.read_timeout)  # a new connection must start its first request in time

    def _waiting_on_client(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _make_room(self) -> bool:
        idle = [p for p in self.connections if p is not self and isinstance(p, GuardedProtocol)
                and p._waiting_on_client() and not p.transport.is_closing()]
        if not idle:
            return False
        oldest = min(idle, key=lambda p: p._waiting_since)
        self.events("evicted", f"connection cap of {self.max_connections} reached; closing the connections idle "
                               "longest on the client's side")
        oldest.transport.close()
        return True

    def _arm(self, delay: float) -> None:
        self._disarm()
        self._timer = self.loop.call_later(delay, self._on_timeout)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timeout(self) -> None:
        self._timer = None
        if self.transport.is_closing():
            return
        if self._in_headers:
            self.events("timeout", f"request headers not complete within {self.read_timeout:g} s; 408 and close")
            self.transport.write(_raw_error(408, "Request Timeout", "request_timeout",
                                            f"request headers not complete within {self.read_timeout:g} s"))
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._in_headers and not self.transport.is_closing():
            self._header_bytes += len(data)
            if self._header_bytes > MAX_HEADER_BYTES:
                self.transport.write(_raw_error(431, "Request Header Fields Too Large", "headers_too_large",
                                                f"request headers exceed {MAX_HEADER_BYTES} bytes"))
                self.transport.close()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_headers, self._header_bytes = True, 0
        self._arm(self.read_timeout)  # the headers must be complete within the read timeout

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._disarm()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        self._waiting_since = time.monotonic()
        super().on_response_complete()  # arms uvicorn's keep-alive timer

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)


def _fit_fd_limit(max_connections: int) -> int:
    """Raise the soft open-file limit to hold the cap; return the cap that fits. Beyond the cap,
    up to ACCEPT_DEPTH accept batches can be open for a moment: asyncio accepts at most `backlog`
    connections per turn of the event loop, calls their connection_made (which closes the ones they
    displace) two turns later, and releases the closed descriptors a turn after that."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = max_connections + ACCEPT_DEPTH * backlog(max_connections) + FD_RESERVE
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            soft = new
        except (ValueError, OSError):
            pass
    if soft != resource.RLIM_INFINITY and soft < want:
        fitted = max(8, (soft - FD_RESERVE) // (1 + ACCEPT_DEPTH))
        log.warning("max_connections %d does not fit the open-file limit %d; using %d", max_connections, soft, fitted)
        return fitted
    return max_connections


def backlog(max_connections: int) -> int:
    """The listen backlog: the cap (at least 128, so a burst of connects is not dropped)."""
    return min(2048, max(128, max_connections))


def protocol_class(read_timeout_s: float, max_connections: int) -> type[GuardedProtocol]:
    return type("GuardedProtocol", (GuardedProtocol,), {"read_timeout": read_timeout_s,
                                                        "max_connections": _fit_fd_limit(max_connections)})


def server_options(settings: Any) -> dict[str, Any]:
    """uvicorn keyword arguments for a service's settings (a ServiceSettings)."""
    http = protocol_class(settings.read_timeout_s, settings.max_connections)
    return {"http": http, "timeout_keep_alive": settings.keep_alive_s, "loop": "asyncio",
            "backlog": backlog(http.max_connections)}
