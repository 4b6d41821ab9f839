"""Online adaptation's first half: label fresh latents with the true reward and stream them.

`RewardLabeler.submit` hands (z1, z2, prompts) to a background thread that decodes them, asks the
reward service for the true (black-box) reward, and publishes one sample group per (prompt, step)
on the Redis stream the surrogate learner consumes (lasro_common/stream). The generator keeps
training meanwhile (ddpo-pytorch scores rewards in the background the same way); the caller only
blocks when more than `max_pending` jobs are in flight.

A Redis outage loses nothing: the producer rides out `outage_s` (lasro_common/stream/producer.py);
beyond that the groups it could not send are written to `spool` (one record body per group,
`<group_id>.safetensors`) and the error reaches the training loop, which checkpoints and stops.
The next labeler on the same spool (a resumed run) sends them first, before any new group.
"""

from __future__ import annotations

import json
import logging
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from lasro_common.stream import RECORD_VERSION, GroupProducer, SampleGroup
from lasro_common.stream.producer import StreamUnavailable
from reward_service.client import RewardClient

from .fewstep import FewStepModel

log = logging.getLogger(__name__)


def reward_spec(reward: str) -> str | dict[str, float]:
    """A reward name, or a JSON object of weighted rewards ('{"a": 1, "b": 0.5}')."""
    return json.loads(reward) if reward.strip().startswith("{") else reward


class RewardLabeler:
    def __init__(self, model: FewStepModel, rewards: RewardClient, producer: GroupProducer | None, *,
                 reward: str, max_pending: int = 2, spool: Path | None = None):
        self.model, self.rewards, self.producer = model, rewards, producer
        self.reward, self.max_pending = reward, max_pending
        self.spool = Path(spool) if spool is not None else None
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
        self._publish(groups)

    def _publish(self, groups: list[SampleGroup]) -> None:
        try:
            self.flush_spool()  # groups of an earlier outage go first
            sent = self.producer.publish(groups)
        except StreamUnavailable:
            self._to_spool(groups)
            raise
        with self._lock:
            self.groups += sent

    def _to_spool(self, groups: list[SampleGroup]) -> None:
        if self.spool is None:
            log.error("redis unreachable and no spool folder: %d sample groups are lost", len(groups))
            return
        self.spool.mkdir(parents=True, exist_ok=True)
        for g in groups:
            tmp = self.spool / f".{g.group_id}.tmp"
            tmp.write_bytes(g.to_fields()["data"])
            tmp.replace(self.spool / f"{g.group_id}.safetensors")
        log.warning("redis unreachable: %d sample groups kept in %s until it is back", len(groups), self.spool)

    def flush_spool(self) -> int:
        """Publish the groups an earlier outage left in the spool (oldest first), then delete
        them; returns how many. Raises StreamUnavailable (and keeps them) if Redis is still down."""
        if self.spool is None or self.producer is None or not self.spool.is_dir():
            return 0
        files = sorted(self.spool.glob("*.safetensors"), key=lambda p: p.stat().st_mtime_ns)
        if not files:
            return 0
        groups = [SampleGroup.from_fields({"v": RECORD_VERSION, "data": f.read_bytes()}) for f in files]
        sent = self.producer.publish(groups)
        for f in files:
            f.unlink()
        with self._lock:
            self.groups += sent
        log.info("sent %d sample groups kept in %s during a redis outage", sent, self.spool)
        return sent

    def drain(self) -> None:
        """Wait for every job; then send what an outage left in the spool."""
        while self._pending:
            self._pending.popleft().result()
        self.flush_spool()

    def settle(self) -> None:
        """Wait for every job without raising: what they could not send is in the spool. For a run
        that is stopping (so its checkpoint counts every query spent)."""
        while self._pending:
            try:
                self._pending.popleft().result()
            except Exception as e:  # already reported by the call that stopped the run
                log.debug("labeler job ended with %s", e)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
