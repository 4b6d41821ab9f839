"""What one request may cost a service: memory (a per-service budget every request draws from),
body bytes (buffers that grow with what arrives, not with what a header promises), prompt length.

Every request gets a `Ledger` (set up by the `_Plumbing` middleware in server.py, released when
its answer has been sent): reading the body and decoding images reserve their bytes in it first.
A request that alone exceeds the budget is refused (413); one that does not fit beside the
requests in flight waits up to `wait_s`, then gets 429 with Retry-After (the clients retry).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from .errors import MalformedBody, Overloaded, PayloadTooLarge, WireError

MiB = 1024 * 1024
LEDGER = "lasro.ledger"  # the request's Ledger in the ASGI scope
FIRST_CHUNK = 64 * 1024  # the smallest step in which a body's arrival is reserved


class ReadTimeout(WireError):
    status, code = 408, "request_timeout"


class MemoryBudget:
    """Bytes that the requests in flight may hold at once (body buffers, decoded images)."""

    def __init__(self, limit_bytes: int, wait_s: float = 10.0) -> None:
        self.limit, self.wait_s, self.used, self.peak = int(limit_bytes), wait_s, 0, 0
        self._changed: asyncio.Condition | None = None

    def _cond(self) -> asyncio.Condition:
        if self._changed is None:
            self._changed = asyncio.Condition()
        return self._changed

    async def acquire(self, n: int, what: str) -> None:
        if n <= 0:
            return
        if n > self.limit:
            raise PayloadTooLarge(f"{what} needs {n / MiB:.0f} MiB, more than this service's memory budget "
                                  f"of {self.limit / MiB:.0f} MiB (memory_budget_mb)")
        cond = self._cond()
        deadline = time.monotonic() + self.wait_s
        async with cond:
            while self.used + n > self.limit:
                remaining = deadline - time.monotonic()
                try:
                    if remaining <= 0:
                        raise asyncio.TimeoutError
                    await asyncio.wait_for(cond.wait(), remaining)
                except asyncio.TimeoutError:
                    raise Overloaded(f"the memory budget ({self.limit / MiB:.0f} MiB) is held by requests in "
                                     f"flight; {what} needs {n / MiB:.1f} MiB; retry later") from None
            self.used += n
            self.peak = max(self.peak, self.used)

    async def release(self, n: int) -> None:
        if n <= 0:
            return
        cond = self._cond()
        async with cond:
            self.used -= n
            cond.notify_all()


class Ledger:
    """One request's reservations in the service's budget; all released at the end of the request."""

    def __init__(self, budget: MemoryBudget | None) -> None:
        self.budget, self.held = budget, 0

    async def reserve(self, n: int, what: str) -> None:
        if self.budget is not None:
            await self.budget.acquire(n, what)
            self.held += n

    async def give_back(self, n: int) -> None:
        """Release `n` of the bytes reserved so far (memory freed before the request ends)."""
        if self.budget is not None:
            n = min(n, self.held)
            self.held -= n
            await self.budget.release(n)

    async def release(self) -> None:
        if self.budget is not None:
            held, self.held = self.held, 0
            await self.budget.release(held)


def ledger_of(scope: dict[str, Any]) -> Ledger:
    return scope.get(LEDGER) or Ledger(None)


async def read_body(request: Any) -> bytearray:
    """The whole body in one writable buffer (decoded tensors are views into it).

    Memory follows the data that actually arrives, never the length a header declares: the chunks
    are kept as they come (a client that declares 64 MiB and sends 1 KiB holds 1 KiB) and joined
    into one buffer at the end (one copy, no zero-filling). Both are reserved in the request's
    ledger first; the chunks' share is given back once they are joined."""
    ledger = ledger_of(request.scope)
    declared = request.headers.get("content-length")
    length = int(declared) if declared is not None and declared.isdigit() else None
    chunks: list[bytes] = []
    size = reserved = 0
    async for chunk in request.stream():
        if not chunk:
            continue
        size += len(chunk)
        if length is not None and size > length:
            raise MalformedBody("body is longer than its Content-Length")
        if size > reserved:  # reserve in doubling steps: a few awaits per body, not one per chunk
            step = max(size - reserved, reserved, FIRST_CHUNK)
            await ledger.reserve(step, "the request body")
            reserved += step
        chunks.append(chunk)
    if length is not None and size != length:
        raise MalformedBody(f"body ended after {size} of {length} bytes")
    await ledger.reserve(size, "the request body")
    body = bytearray().join(chunks)
    chunks.clear()
    await ledger.give_back(reserved)
    return body


def check_prompts(prompts: list[str], max_chars: int) -> None:
    """A prompt costs tokenizer time in proportion to its length: refuse absurd ones (413)."""
    for i, p in enumerate(prompts):
        if len(p) > max_chars:
            raise PayloadTooLarge(f"prompt {i} has {len(p):,} characters; the limit is {max_chars:,} "
                                  "(max_prompt_chars)")
