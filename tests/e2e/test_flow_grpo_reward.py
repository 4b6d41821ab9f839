"""The trainer fine-tunes against a flow_grpo-style reward server as its true reward: the reward
service proxies it (`--remote bright=flow_grpo+URL`), the trainer names `bright` as usual."""

from __future__ import annotations

import io
import json

import numpy as np
from PIL import Image

from lasro_common import redis_util
from reward_service.app import create_app as reward_app
from reward_service.settings import RewardSettings
from surrogate_service.app import create_app as surrogate_app
from surrogate_service.settings import SurrogateSettings
from tests.conftest import serve_in_thread
from tests.e2e.test_trainer_run import _warm_surrogate
from tests.flow_grpo_peer import brightness, their_server
from trainer.config import TrainConfig


def test_short_run_against_a_flow_grpo_reward_server(tiny_pipelines, tmp_path):
    from trainer.loop import train

    base = str(tiny_pipelines["sd"])
    redis_url = redis_util.embedded_redis_url(tmp_path / "redis")
    with their_server(brightness) as far:
        rew = reward_app(RewardSettings(rewards=[], remote=[f"bright=flow_grpo+{far['url']}/"]))
        sur = surrogate_app(SurrogateSettings(base_model=base, redis_url=redis_url, checkpoint_dir=tmp_path / "sur",
                                              head_channels=16, publish_every=1, lr=1e-3))
        with serve_in_thread(rew) as rurl, serve_in_thread(sur) as surl:
            assert rew.state.rewards.ready.wait(30), rew.state.rewards.error
            assert sur.state.surrogate.ready.wait(60), sur.state.surrogate.error
            _warm_surrogate(redis_url, surl)
            prompts = tmp_path / "prompts.txt"
            prompts.write_text("a red circle\na blue square\n")
            out = tmp_path / "run"
            summary = train(TrainConfig(
                base_model=base, teacher_model=None, regularizer="anchor", reward_url=rurl, surrogate_url=surl,
                redis_url=redis_url, reward="bright", prompts=prompts, eval_prompts=prompts, eval_seeds=1,
                prompts_per_iter=2, n_noises=2, lr=1e-3, iterations=2, eval_every=2, checkpoint_every=2,
                out=out, progress=False))
        asked = far["requests"]
    assert summary["iterations"] == 2 and summary["queries"] == 2 * 2 * 2 * 2  # it × P × N_s × {z1, z2}
    # every true-reward query went to their server, as JPEGs with the prompts and their flags
    assert sum(len(d["images"]) for d in asked) >= summary["queries"]
    assert all(d["only_strict"] is True and len(d["prompts"]) == len(d["images"]) for d in asked)
    assert {p for d in asked for p in d["prompts"]} <= {"a red circle", "a blue square"}
    first = Image.open(io.BytesIO(asked[0]["images"][0]))
    assert first.format == "JPEG"
    # the held-out rewards before and after are their server's numbers (brightness lies in [0, 1])
    for when in ("before", "after"):
        assert all(0.0 <= summary[when][k] <= 1.0 for k in ("1step", "2step")), summary[when]
    evals = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"kind": "eval"' in x]
    assert evals and np.isfinite(evals[-1]["true_2step"])
