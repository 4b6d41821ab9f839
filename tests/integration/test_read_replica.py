"""One learner, one read replica: the replica serves the versions the learner publishes."""

from __future__ import annotations

import time

import numpy as np
import torch

from lasro_common import redis_util
from lasro_common.stream import DEFAULT_STREAM, SampleGroup
from surrogate_service.app import create_app
from surrogate_service.client import SurrogateClient
from surrogate_service.settings import SurrogateSettings


def _wait(cond, timeout: float = 120.0):
    deadline = time.monotonic() + timeout
    while not (value := cond()):
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)  # polling other threads' progress over HTTP: no event to wait on
    return value


def test_replica_follows_the_learner(serve, tiny_pipelines, tmp_path):
    base, ckpt = str(tiny_pipelines["sd"]), tmp_path / "ckpt"
    url = redis_util.embedded_redis_url(tmp_path / "redis")
    learner = create_app(SurrogateSettings(base_model=base, redis_url=url, checkpoint_dir=ckpt, head_channels=16,
                                           publish_every=2, checkpoint_every_s=0.5, lr=1e-3))
    replica = create_app(SurrogateSettings(base_model=base, learn=False, follow=True, follow_every_s=0.2,
                                           checkpoint_dir=ckpt, head_channels=16))
    lurl, rurl = serve(learner), serve(replica)
    assert learner.state.surrogate.ready.wait(60) and replica.state.surrogate.ready.wait(60)

    r, rng = redis_util.connect(url), np.random.default_rng(0)
    for i in range(12):
        z = rng.standard_normal((4, 4, 8, 8)).astype(np.float32)
        r.xadd(DEFAULT_STREAM, SampleGroup(f"a red circle {i}", 1 + i % 2, z, z[:, 0].mean((1, 2))).to_fields())

    z = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    prompts = ["a red circle", "a blue square", "a cat"]
    with SurrogateClient(lurl) as lc, SurrogateClient(rurl) as rc:
        _wait(lambda: lc.status()["learner"]["updates"] >= 6 and lc.status()["learner"]["unacked"] == 0)
        target = lc.status()["learner"]["version"]
        assert target > 0
        # the replica catches up to a checkpointed version and then serves exactly its weights
        _wait(lambda: rc.status()["version"] >= target)
        v = rc.status()["version"]
        _wait(lambda: lc.score(z, prompts, 1)[1] == v or lc.status()["learner"]["version"] > v, timeout=30)
        replica_scores, rv = rc.score(z, prompts, 1)
        assert rv == v and rc.status()["learning"] is False and rc.status()["following"]["last_error"] is None
        assert torch.isfinite(replica_scores).all() and replica_scores.abs().sum() > 0
        learner_scores, lv = lc.score(z, prompts, 1)
        if lv == rv:
            torch.testing.assert_close(replica_scores, learner_scores)
