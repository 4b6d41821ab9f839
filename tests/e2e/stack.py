"""The services a short real training run talks to: the reward service with a cheap
differentiable reward and the surrogate service on a private redis-server, real uvicorns in
threads on free ports (shared by the e2e trainer tests)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from lasro_common import redis_util
from reward_service.app import create_app as reward_app
from reward_service.rewards import Reward
from reward_service.settings import RewardSettings
from surrogate_service.app import create_app as surrogate_app
from surrogate_service.settings import SurrogateSettings


class Brightness(Reward):
    """A cheap, differentiable true reward for tiny 16 x 16 images: mean brightness."""

    name = "brightness"
    differentiable = True

    def score(self, images, prompts):
        return images.mean(dim=(1, 2, 3))


@contextlib.contextmanager
def running_stack(base: str, tmp: Path) -> Iterator[dict]:
    """Yield {"base", "reward_url", "surrogate_url", "redis_url", "tmp"} while both services run."""
    from tests.conftest import serve_in_thread

    redis_url = redis_util.embedded_redis_url(tmp / "redis")
    rew = reward_app(RewardSettings(), rewards=[Brightness()])
    sur = surrogate_app(SurrogateSettings(base_model=base, redis_url=redis_url, checkpoint_dir=tmp / "sur",
                                          head_channels=16, publish_every=1, lr=1e-3))
    with serve_in_thread(rew) as rurl, serve_in_thread(sur) as surl:
        assert rew.state.rewards.ready.wait(30)
        assert sur.state.surrogate.ready.wait(60), sur.state.surrogate.error
        yield {"base": base, "reward_url": rurl, "surrogate_url": surl, "redis_url": redis_url, "tmp": tmp}
