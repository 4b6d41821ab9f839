"""Online adaptation's first half: label fresh latents with the true reward and stream them.

`RewardLabeler.submit` hands (z1, z2, prompts) to a background thread that decodes them, asks the
reward service for the true (black-box) reward, and publishes one sample group per (prompt, step)
on the Redis stream the surrogate learner consumes (lasro_common/stream). The generator keeps
training meanwhile (ddpo-pytorch scores rewards in the background the same way); the caller only
blocks when more than `max_pending` jobs are in flight.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

from lasro_common.stream import GroupProducer, SampleGroup
from reward_service.client import RewardClient

from .fewstep import FewStepModel


def reward_spec(reward: str) -> str | dict[str, float]:
    """A reward name, or a JSON object of weighted rewards ('{"a": 1, "b": 0.5}')."""
    return json.loads(reward) if reward.strip().startswith("{") else reward


class RewardLabeler:
    def __init__(self, model: FewStepModel, rewards: RewardClient, producer: GroupProducer | None, *,
                 reward: str, max_pending: int = 2):
        self.model, self.rewards, self.producer = model, rewards, producer
        self.reward, self.max_pending = reward, max_pending
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="labeler")
        self._pending: deque[Future] = deque()
        self._lock = threading.Lock()
        self.queries = 0  # true-reward queries spent (images scored)
        self.groups = 0  # sample groups published

    def submit(self, z1: torch.Tensor, z2: torch.Tensor, prompts: list[str], n_noises: int, version: int) -> None:
        """z1, z2 (P·N_s, C, h, w), detached; prompts P strings, each repeated N_s times in order."""
        while len(self._pending) >= self.max_pending:
            self._pending.popleft().result()  # backpressure; raises if a job failed
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
        groups = [SampleGroup(p, step, z[i * n:(i + 1) * n].numpy().astype(np.float16), r[i * n:(i + 1) * n],
                              sampler_version=version, reward=self.reward, model=self.model.base_model)
                  for step, z, r in ((1, z1, scores[:b]), (2, z2, scores[b:]))
                  for i, p in enumerate(prompts)]
        sent = self.producer.publish(groups)
        with self._lock:
            self.groups += sent

    def drain(self) -> None:
        while self._pending:
            self._pending.popleft().result()

    def close(self) -> None:
        self._pool.shutdown(wait=True)
