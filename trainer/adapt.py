"""Online adaptation: fresh samples -> decode -> true reward -> sample groups on the Redis stream.

Runs in a background thread so the generator keeps training while the (slow, black-box)
reward is computed (ddpo-pytorch scores rewards in the background the same way). The
caller only blocks when more than `max_pending` jobs are in flight, and that wait is counted.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

from lasro_common.records import SampleGroup
from reward_service.client import RewardClient

from .fewstep import FewStepModel


def reward_spec(reward: str) -> str | dict[str, float]:
    return json.loads(reward) if reward.strip().startswith("{") else reward


class AdaptPipe:
    def __init__(self, model: FewStepModel, rewards: RewardClient, redis, *, stream: str, reward: str,
                 max_pending: int = 2):
        self.model, self.rewards, self.redis, self.stream = model, rewards, redis, stream
        self.reward, self.max_pending = reward, max_pending
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="adapt")
        self._pending: deque[Future] = deque()
        self.queries = 0  # true-reward queries spent (images scored)
        self.groups = 0
        self.blocked_s = 0.0
        self._lock = threading.Lock()
        self.last_rewards: dict[int, float] = {}

    def submit(self, z1: torch.Tensor, z2: torch.Tensor, prompts: list[str], n_noises: int, version: int) -> None:
        """z1, z2 (P·N_s, C, h, w), detached; prompts P strings, each repeated N_s times in order."""
        while len(self._pending) >= self.max_pending:
            t = time.perf_counter()
            self._pending.popleft().result()  # backpressure; raises if a job failed
            self.blocked_s += time.perf_counter() - t
        self._pending.append(self._pool.submit(self._job, z1.cpu(), z2.cpu(), prompts, n_noises, version))
        while self._pending and self._pending[0].done():
            self._pending.popleft().result()

    def _job(self, z1: torch.Tensor, z2: torch.Tensor, prompts: list[str], n: int, version: int) -> None:
        images = self.model.decode(torch.cat([z1, z2]))  # (2B, 3, H, W)
        reps = [p for p in prompts for _ in range(n)]
        scores = self.rewards.score(images, reps + reps, reward=reward_spec(self.reward)).scores  # (2B,)
        with self._lock:
            self.queries += len(scores)
        b = z1.shape[0]
        pipe = self.redis.pipeline(transaction=False)
        for step, z, r in ((1, z1, scores[:b]), (2, z2, scores[b:])):
            self.last_rewards[step] = float(np.mean(r))
            for i, p in enumerate(prompts):
                sl = slice(i * n, (i + 1) * n)
                g = SampleGroup(p, step, z[sl].numpy().astype(np.float16), r[sl], sampler_version=version,
                                reward=self.reward, model=self.model.base_model)
                pipe.xadd(self.stream, g.to_fields(), maxlen=100_000, approximate=True)
        pipe.execute()
        with self._lock:
            self.groups += 2 * len(prompts)

    def drain(self) -> None:
        while self._pending:
            self._pending.popleft().result()

    def close(self) -> None:
        self._pool.shutdown(wait=True)
