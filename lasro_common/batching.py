"""Dynamic micro-batching: concurrent requests are merged into one model call, then split back.

Both services use it. `run(inputs) -> outputs` gets one input per request (the caller concatenates
and splits inside `run`, so this class knows nothing about tensors) and runs in a worker thread,
so the event loop keeps accepting and decoding requests while the model works (the pre / core /
post split of michaelfeil/infinity).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Hashable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from .errors import Overloaded


@dataclass
class _Job:
    item: Any
    size: int
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


class MicroBatcher:
    """Collect up to `max_batch_size` samples (summed `size`) within `max_wait_ms` of the first.

    Requests with different `key`s (say, another reward or image size) never share a call.
    With `enabled=False` every request is its own call (the baseline for the benchmark).
    """

    def __init__(self, run: Callable[[list[Any]], list[Any]], *, max_batch_size: int = 32,
                 max_wait_ms: float = 5.0, max_queue: int = 1024, enabled: bool = True,
                 on_batch: Callable[[int, int], None] | None = None, name: str = "batcher"):
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
        if max_wait_ms < 0:
            raise ValueError(f"max_wait_ms must be >= 0, got {max_wait_ms}")
        self.run, self.max_batch_size, self.max_wait = run, max_batch_size, max_wait_ms / 1000.0
        self.max_queue, self.enabled, self.on_batch = max_queue, enabled, on_batch
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._queues: dict[Hashable, asyncio.Queue[_Job]] = {}
        self._carry: dict[Hashable, _Job] = {}
        self._workers: dict[Hashable, asyncio.Task] = {}
        self._pending = 0

    async def submit(self, item: Any, size: int = 1, key: Hashable = None) -> Any:
        if self._pending >= self.max_queue:
            raise Overloaded(f"{self._pending} requests already queued; retry later")
        loop = asyncio.get_running_loop()
        self._pending += 1
        try:
            if not self.enabled:
                return (await loop.run_in_executor(self._executor, self._call, [item]))[0]
            job = _Job(item, size, loop.create_future())
            queue = self._queues.get(key)
            if queue is None:
                queue = self._queues[key] = asyncio.Queue()
                self._workers[key] = loop.create_task(self._work(key, queue))
            queue.put_nowait(job)
            return await job.future
        finally:
            self._pending -= 1

    def _call(self, items: list[Any]) -> list[Any]:
        out = self.run(items)
        if len(out) != len(items):
            raise RuntimeError(f"batch function returned {len(out)} results for {len(items)} inputs")
        return out

    async def _next_batch(self, key: Hashable, queue: asyncio.Queue) -> list[_Job]:
        first = self._carry.pop(key, None) or await queue.get()
        jobs, total = [first], first.size
        deadline = time.perf_counter() + self.max_wait
        while total < self.max_batch_size:
            remaining = deadline - time.perf_counter()
            try:
                job = queue.get_nowait() if remaining <= 0 else await asyncio.wait_for(queue.get(), remaining)
            except (asyncio.QueueEmpty, asyncio.TimeoutError):
                break
            if total + job.size > self.max_batch_size:
                self._carry[key] = job  # first in line for the next call
                break
            jobs.append(job)
            total += job.size
        return jobs

    async def _work(self, key: Hashable, queue: asyncio.Queue) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = await self._next_batch(key, queue)
            live = [j for j in jobs if not j.future.done()]  # the client may have gone away
            if not live:
                continue
            if self.on_batch:
                self.on_batch(len(live), sum(j.size for j in live))
            try:
                results = await loop.run_in_executor(self._executor, self._call, [j.item for j in live])
            except Exception:
                if len(live) == 1:
                    results = None
                else:  # isolate the failing request: run each alone so the others still succeed
                    for j in live:
                        await self._run_single(loop, j)
                    continue
            if results is None:
                await self._run_single(loop, live[0])
                continue
            for j, r in zip(live, results, strict=True):
                if not j.future.done():
                    j.future.set_result(r)

    async def _run_single(self, loop: asyncio.AbstractEventLoop, job: _Job) -> None:
        try:
            (r,) = await loop.run_in_executor(self._executor, self._call, [job.item])
        except Exception as e:  # handed to the request, which turns it into an error response
            if not job.future.done():
                job.future.set_exception(e)
        else:
            if not job.future.done():
                job.future.set_result(r)

    def close(self) -> None:
        for task in self._workers.values():
            task.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)
