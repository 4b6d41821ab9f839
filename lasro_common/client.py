"""Client base for every service: httpx, explicit timeouts, retries with backoff on connect
errors, 429 and 503 (honouring Retry-After), JSON errors raised as `ServiceError`."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator
from typing import Any

import httpx

from . import PROTOCOL_HEADER, PROTOCOL_VERSION
from .errors import ServiceError, ServiceUnavailable
from .transport import MAX_BYTES, FastTransport

RETRY_STATUS = frozenset({429, 503})


def _delays(retries: int, backoff: float, cap: float) -> Iterator[float]:
    for attempt in range(retries):
        yield min(cap, backoff * 2**attempt) * (0.5 + random.random() / 2)  # full jitter, halved


def _retry_after(resp: httpx.Response, default: float) -> float:
    try:
        return min(30.0, float(resp.headers.get("retry-after", default)))
    except ValueError:
        return default


def raise_for_error(resp: httpx.Response) -> None:
    if resp.is_success:
        return
    try:
        err = resp.json()["error"]
        code, message = str(err["code"]), str(err["message"])
    except Exception:
        code, message = f"http_{resp.status_code}", resp.text[:500]
    cls = ServiceUnavailable if resp.status_code in RETRY_STATUS else ServiceError
    raise cls(resp.status_code, code, message)


class _Base:
    def __init__(self, base_url: str, *, token: str | None = None, timeout: float = 120.0,
                 connect_timeout: float = 5.0, retries: int = 4, backoff: float = 0.25, max_backoff: float = 8.0):
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.retries, self.backoff, self.max_backoff = retries, backoff, max_backoff
        self.headers = {PROTOCOL_HEADER: PROTOCOL_VERSION}
        if token:
            self.headers["Authorization"] = f"Bearer {token}"
        self.timeout = httpx.Timeout(timeout, connect=connect_timeout)


class SyncClient(_Base):
    """Blocking client; one pooled connection per host. Use as a context manager or call close()."""

    def __init__(self, base_url: str, **kw: Any):
        super().__init__(base_url, **kw)
        self._http = httpx.Client(base_url=self.base_url, headers=self.headers, timeout=self.timeout,
                                  transport=FastTransport())

    def request(self, method: str, path: str, *, max_bytes: int | None = None, **kw: Any) -> httpx.Response:
        """`max_bytes`: read at most this many bytes of the reply, else raise transport.ReplyTooLarge
        without reading the rest (for peers we do not trust)."""
        if max_bytes is not None:
            kw["extensions"] = {**kw.get("extensions", {}), MAX_BYTES: max_bytes}
        delays = _delays(self.retries, self.backoff, self.max_backoff)
        while True:
            try:
                resp = self._http.request(method, path, **kw)
            except (httpx.ConnectError, httpx.RemoteProtocolError) as e:
                delay = next(delays, None)
                if delay is None:
                    raise ServiceUnavailable(0, "unreachable", f"{self.base_url}{path}: {e}") from e
                time.sleep(delay)
                continue
            if resp.status_code in RETRY_STATUS:
                delay = next(delays, None)
                if delay is not None:
                    time.sleep(_retry_after(resp, delay))
                    continue
            raise_for_error(resp)
            return resp

    def close(self) -> None:
        self._http.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class AsyncClient(_Base):
    """asyncio client with the same retry policy as `SyncClient`."""

    def __init__(self, base_url: str, **kw: Any):
        super().__init__(base_url, **kw)
        self._http = httpx.AsyncClient(base_url=self.base_url, headers=self.headers, timeout=self.timeout)

    async def request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        delays = _delays(self.retries, self.backoff, self.max_backoff)
        while True:
            try:
                resp = await self._http.request(method, path, **kw)
            except (httpx.ConnectError, httpx.RemoteProtocolError) as e:
                delay = next(delays, None)
                if delay is None:
                    raise ServiceUnavailable(0, "unreachable", f"{self.base_url}{path}: {e}") from e
                await asyncio.sleep(delay)
                continue
            if resp.status_code in RETRY_STATUS:
                delay = next(delays, None)
                if delay is not None:
                    await asyncio.sleep(_retry_after(resp, delay))
                    continue
            raise_for_error(resp)
            return resp

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
