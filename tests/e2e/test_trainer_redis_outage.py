"""Issue 15, defect 3: a Redis outage longer than the producer's window stops a training run the
way a service outage does (checkpoint, ServiceGone with a --resume hint), the sample groups in
flight wait on disk, and the resumed run sends every one of them exactly once."""

from __future__ import annotations

import pytest

from lasro_common.stream import SampleGroup
from reward_service.app import create_app as reward_app
from reward_service.settings import RewardSettings
from surrogate_service.app import create_app as surrogate_app
from surrogate_service.settings import SurrogateSettings
from tests.e2e.test_trainer_run import Brightness, _cfg
from tests.integration.test_learner import RedisServer, wait_for


@pytest.fixture
def services(tiny_pipelines, tmp_path, serve):
    redis = RedisServer(tmp_path / "redis")
    redis.start()
    base = str(tiny_pipelines["sd"])
    rew = reward_app(RewardSettings(), rewards=[Brightness()])
    sur = surrogate_app(SurrogateSettings(base_model=base, redis_url=redis.url, checkpoint_dir=tmp_path / "sur",
                                          head_channels=16, publish_every=1, lr=1e-3))
    rurl, surl = serve(rew), serve(sur)
    assert rew.state.rewards.ready.wait(30)
    assert sur.state.surrogate.ready.wait(60), sur.state.surrogate.error
    yield {"base": base, "reward_url": rurl, "surrogate_url": surl, "redis_url": redis.url, "tmp": tmp_path,
           "redis": redis}
    redis.kill()


def test_redis_outage_stops_the_run_cleanly_and_resume_sends_every_group_once(services, tmp_path):
    from trainer.loop import ServiceGone, train

    redis, out = services["redis"], tmp_path / "run"
    redis.kill()  # gone before the first group is published, and for longer than the window
    with pytest.raises(ServiceGone, match="--resume"):
        train(_cfg(services, out, iterations=4, eval_every=4, checkpoint_every=4, redis_outage_s=2.0))
    assert (out / "checkpoint" / "state.json").is_file()
    spooled = sorted((out / "unsent-groups").glob("*.safetensors"))
    assert spooled, "the groups in flight were not kept"
    redis.start()
    summary = train(_cfg(services, out, iterations=4, eval_every=4, checkpoint_every=4, resume=True))
    assert summary["iterations"] == 4
    ids = [SampleGroup.from_fields(f).group_id for _, f in redis.client().xrange("lasro:groups")]
    assert len(ids) == len(set(ids)), "a group was sent twice"
    assert {p.stem for p in spooled} <= set(ids), "a spooled group never reached the stream"
    assert len(ids) == 4 * 2 * 2  # iterations x P x {step 1, step 2}: nothing lost, nothing doubled
    assert not list((out / "unsent-groups").glob("*.safetensors"))
    wait_for(lambda: redis.client().xlen("lasro:groups") == len(ids), 5, "the stream")
