"""Issue 15, defect 3 and R3: a Redis outage never loses a sample group. The producer retries
with backoff through an outage; past its window it hands the groups back (the trainer spools
them to disk and stops cleanly), and a Redis that lost its data (no AOF) gets the groups it lost
again from the producer's journal. Real redis-server processes, real tiny models."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from lasro_common.errors import ServiceError
from lasro_common.stream import GroupProducer, SampleGroup
from lasro_common.stream.producer import StreamUnavailable
from tests.integration.test_learner import RedisServer, make_group, wait_for

STREAM = "lasro:groups"


def _groups(n: int, seed: int) -> list[SampleGroup]:
    rng = np.random.default_rng(seed)
    return [make_group(rng) for _ in range(n)]


def _ids(server: RedisServer) -> list[str]:
    return [SampleGroup.from_fields(f).group_id for _, f in server.client().xrange(STREAM)]


def _client(server: RedisServer):
    from lasro_common import redis_util

    return redis_util.connect(server.url)


def test_producer_rides_out_an_outage_longer_than_the_client_retries(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        producer = GroupProducer(_client(server), STREAM, outage_s=60)
        first = _groups(2, seed=1)
        producer.publish(first)
        server.kill()
        t_kill = time.monotonic()
        later = _groups(3, seed=2)
        result: dict = {}
        t = threading.Thread(target=lambda: result.setdefault("sent", producer.publish(later)), daemon=True)
        t.start()
        # an outage of 5 s: longer than redis-py's own retries (~3 s), shorter than the window
        wait_for(lambda: producer.failures >= 2 and time.monotonic() - t_kill > 5, 30, "a 5 s outage")
        assert t.is_alive(), "publish gave up during the outage"
        server.start()
        t.join(60)
        assert result.get("sent") == 3
        assert _ids(server) == [g.group_id for g in first + later]
    finally:
        server.kill()


def test_producer_gives_up_after_its_window_and_hands_the_groups_back(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "redis")
    server.start()
    producer = GroupProducer(_client(server), STREAM, outage_s=1.0)
    server.kill()
    groups = _groups(3, seed=3)
    t0 = time.monotonic()
    with pytest.raises(StreamUnavailable) as e:
        producer.publish(groups)
    assert isinstance(e.value, ServiceError) and "redis" in str(e.value).lower()
    assert [g.group_id for g in e.value.unsent] == [g.group_id for g in groups]
    assert time.monotonic() - t0 < 30
    t0 = time.monotonic()
    with pytest.raises(StreamUnavailable):  # still down: the next call fails fast, no second window
        producer.publish(groups[:1])
    assert time.monotonic() - t0 < 5


def test_journal_resends_what_a_redis_without_aof_lost(tmp_path: Path) -> None:
    """Redis restarted with its data wiped: the groups published since the producer's journal
    began are published again, exactly once each; nothing older than the journal is resent."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        producer = GroupProducer(_client(server), STREAM, outage_s=30, journal_groups=4)
        old, recent = _groups(3, seed=4), _groups(4, seed=5)
        producer.publish(old)
        producer.publish(recent)
        server.kill()
        for f in server.dir.iterdir():
            f.unlink()
        server.start()
        late = _groups(2, seed=6)
        producer.publish(late)
        assert sorted(_ids(server)) == sorted(g.group_id for g in recent + late)
        assert producer.resent == 4
    finally:
        server.kill()


# ------------------------------------------------------------------ the trainer's labeler
@pytest.fixture(scope="module")
def reward_url(tmp_path_factory):
    from reward_service.app import create_app
    from reward_service.rewards import Reward
    from reward_service.settings import RewardSettings
    from tests.conftest import serve_in_thread

    class Brightness(Reward):
        name = "brightness"

        def score(self, images, prompts):
            return images.mean(dim=(1, 2, 3))

    app = create_app(RewardSettings(), rewards=[Brightness()])
    with serve_in_thread(app) as url:
        assert app.state.rewards.ready.wait(30)
        yield url


def test_labeler_spools_groups_it_cannot_send_and_sends_them_on_resume(tiny_pipelines, reward_url,
                                                                       tmp_path: Path) -> None:
    from reward_service.client import RewardClient
    from trainer.fewstep import FewStepModel
    from trainer.labeler import RewardLabeler

    model = FewStepModel(str(tiny_pipelines["sd"]))
    server = RedisServer(tmp_path / "redis")
    server.start()
    spool = tmp_path / "unsent-groups"
    rewards = RewardClient(reward_url)
    server.kill()
    labeler = RewardLabeler(model, rewards, GroupProducer(_client(server), STREAM, outage_s=1.0),
                            reward="brightness", spool=spool)
    z = torch.randn(4, 4, 8, 8)  # P = 2 prompts x N_s = 2
    labeler.submit(z, z + 1, ["a red circle", "a blue square"], 2, version=1)
    with pytest.raises(ServiceError):
        labeler.drain()
    labeler.close()
    spooled = sorted(spool.glob("*.safetensors"))
    assert len(spooled) == 4  # 2 prompts x 2 steps
    server.start()
    try:
        again = RewardLabeler(model, rewards, GroupProducer(_client(server), STREAM), reward="brightness",
                              spool=spool)
        assert again.flush_spool() == 4
        assert not list(spool.glob("*.safetensors"))
        ids = _ids(server)
        assert len(ids) == len(set(ids)) == 4
        assert sorted(ids) == sorted(p.stem for p in spooled)
        again.close()
    finally:
        server.kill()
