"""The claims benchmark's methods, for real on a tiny LCM: RLCM and DPO through their harness,
the ReFL oracle (LaSRO's loop with the true reward's own gradient) and LaSRO's ablation switches
(on-policy exploration, frozen surrogate), each against a real reward service."""

from __future__ import annotations

import json
import math

import pytest
import torch

from lasro_common import redis_util
from tests.e2e.stack import Brightness, running_stack  # noqa: F401 (Brightness: imported by others)
from trainer.config import TrainConfig
from trainer.fewstep import FewStepModel


@pytest.fixture(scope="module")
def services(tiny_pipelines, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("claims")
    with running_stack(str(tiny_pipelines["sd"]), tmp) as stack:
        prompts = tmp / "prompts.txt"
        prompts.write_text("a red circle\na blue square\na green triangle\n")
        yield {**stack, "prompts": prompts}


def _cfg(services, out, **kw) -> TrainConfig:
    base = dict(base_model=services["base"], teacher_model=None, regularizer="anchor",
                reward_url=services["reward_url"], surrogate_url=services["surrogate_url"],
                redis_url=services["redis_url"], reward="brightness", prompts=services["prompts"],
                eval_prompts=services["prompts"], eval_seeds=1, prompts_per_iter=2, n_noises=2, lr=1e-3,
                iterations=2, eval_every=2, checkpoint_every=2, out=out, progress=False)
    return TrainConfig(**{**base, **kw})


def _moved(services, out) -> bool:
    from safetensors.torch import load_file

    initial = FewStepModel(services["base"]).unet.state_dict()
    trained = load_file(str(out / "checkpoint/unet.safetensors"))
    return any(not torch.equal(trained[k], initial[k]) for k in initial)


def test_rlcm_log_prob_is_the_renoising_gaussian_and_the_ratio_starts_at_one(tiny_pipelines) -> None:
    from trainer.rlcm import RLCMPolicy

    model = FewStepModel(str(tiny_pipelines["sd"]))
    policy = RLCMPolicy(model)
    gen = torch.Generator().manual_seed(3)
    cond = model.encode(["a red circle"] * 3)
    with torch.no_grad():
        s = model.sample(model.noise(3, gen), cond, gen)
        eps = (s.inputs[1] - policy.mean_scale * s.z1) / policy.std  # the renoising noise actually drawn
        expected = (-(eps**2) / 2 - math.log(policy.std) - 0.5 * math.log(2 * math.pi)).mean(dim=(1, 2, 3))
        torch.testing.assert_close(policy.log_prob(s.inputs[0], s.inputs[1], cond), expected, rtol=1e-4, atol=1e-4)
    logp = policy.log_prob(s.inputs[0], s.inputs[1], cond)
    logp.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.unet.parameters())


@pytest.mark.parametrize("method", ["rlcm", "dpo"])
def test_baseline_trains_and_counts_every_scored_sample(services, tmp_path, method) -> None:
    from trainer.baselines import train_baseline

    out = tmp_path / method
    summary = train_baseline(_cfg(services, out), method)
    assert summary["queries"] == 2 * 2 * 2  # iterations × P × N_s: one query per scored 2-step sample
    assert set(summary["after"]) == {"1step", "2step"} and (out / "report.html").is_file()
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["queries"] for r in rows if r["kind"] == "eval"] == [0, 8]
    assert _moved(services, out)


def test_refl_oracle_uses_the_true_gradient_and_needs_no_surrogate_or_redis(services, tmp_path) -> None:
    from trainer.loop import train

    out = tmp_path / "refl"
    cfg = _cfg(services, out, grad_source="true", surrogate_url="http://127.0.0.1:9", redis_url=None)
    summary = train(cfg)  # a surrogate URL nobody listens on: never called
    assert summary["queries"] == 2 * 2 * 2 * 2  # iterations × B × {z1, z2}, each one /grad query
    assert _moved(services, out)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"train"' in x]
    assert all(math.isfinite(r["loss"]) for r in rows)


def test_on_policy_exploration_shares_one_initial_noise_per_prompt(services, tmp_path, monkeypatch) -> None:
    import trainer.loop as loop

    seen = []
    real = FewStepModel.sample

    def spy(self, z_t, cond, generator, **kw):
        seen.append(z_t.detach().clone())
        return real(self, z_t, cond, generator, **kw)

    monkeypatch.setattr(FewStepModel, "sample", spy)
    loop.train(_cfg(services, tmp_path / "onpolicy", exploration="on_policy", iterations=1, eval_every=1))
    train_batches = [z for z in seen if z.shape[0] == 4]  # P·N_s = 4 (evaluation batches hold 3)
    z = train_batches[0]
    assert torch.equal(z[0], z[1]) and torch.equal(z[2], z[3]) and not torch.equal(z[0], z[2])


def test_frozen_surrogate_streams_nothing_during_fine_tuning(services, tmp_path) -> None:
    from trainer.loop import train

    r = redis_util.connect(services["redis_url"])
    before = r.xlen("lasro:groups") if r.exists("lasro:groups") else 0
    summary = train(_cfg(services, tmp_path / "frozen", adapt=False))
    assert summary["queries"] == 0
    assert (r.xlen("lasro:groups") if r.exists("lasro:groups") else 0) == before


def test_resuming_a_finished_run_reports_its_last_evaluation(services, tmp_path) -> None:
    """`train --resume` after the last iteration evaluates nothing more; its summary still has an
    "after" (it used to fail with a KeyError), and it is the finished run's."""
    from trainer.loop import train

    cfg = _cfg(services, tmp_path / "done", grad_source="true", surrogate_url="http://127.0.0.1:9", redis_url=None)
    first = train(cfg)
    again = train(cfg.model_copy(update={"resume": "latest"}))
    assert again["after"] == first["after"] and again["iterations"] == first["iterations"]


def test_grad_cosine_measures_the_surrogate_against_the_true_gradient(services, tmp_path) -> None:
    """--grad-cosine (the claims benchmark's lasro_diff diagnostic): at each evaluation the true
    reward's gradient of that iteration's z1 and z2 is fetched and compared with R_psi's; those
    queries are measurement (evaluation queries), not training spend."""
    from trainer.loop import train

    out = tmp_path / "cosine"
    plain = train(_cfg(services, tmp_path / "plain", adapt=False, eval_every=1))
    summary = train(_cfg(services, out, adapt=False, grad_cosine=True, eval_every=1))
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"train"' in x]
    cos = [r["grad_cosine_2step"] for r in rows if "grad_cosine_2step" in r]
    assert len(cos) == 2 and all(-1.0 <= c <= 1.0 for c in cos)  # iterations 0 and 1 (eval_every 1)
    assert all(-1.0 <= r["grad_cosine_1step"] <= 1.0 for r in rows if "grad_cosine_1step" in r)
    assert summary["queries"] == plain["queries"] == 0  # frozen surrogate: no training queries either way
    assert summary["eval_queries"] > plain["eval_queries"]
