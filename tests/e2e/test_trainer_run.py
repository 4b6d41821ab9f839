"""A short real LaSRO run: both services up (real uvicorn, real redis-server), a few iterations
on a tiny random LCM, then resume from the checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lasro_common import redis_util
from lasro_common.stream import SampleGroup
from tests.e2e.stack import Brightness, running_stack  # noqa: F401 (Brightness: imported by others)
from trainer.config import TrainConfig
from trainer.fewstep import FewStepModel


@pytest.fixture(scope="module")
def services(tiny_pipelines, tmp_path_factory):
    with running_stack(str(tiny_pipelines["sd"]), tmp_path_factory.mktemp("run")) as stack:
        _warm_surrogate(stack["redis_url"], stack["surrogate_url"])
        yield stack


def _warm_surrogate(redis_url: str, surrogate_url: str) -> None:
    """Stream a few scored groups and wait until R_psi has published a trained version: an
    untrained R_psi answers zero gradients, and whether the learner catches up within a short
    run's first iterations would otherwise depend on how busy the machine is."""
    import time

    import httpx

    r = redis_util.connect(redis_url)
    rng = np.random.default_rng(0)
    for i in range(8):
        g = SampleGroup("a red circle", 1 + i % 2, rng.standard_normal((4, 4, 8, 8)).astype(np.float32),
                        np.arange(4, dtype=np.float32), reward="brightness")
        r.xadd("lasro:groups", g.to_fields())
    deadline = time.monotonic() + 120
    while httpx.get(f"{surrogate_url}/status", timeout=10).json()["version"] < 1:
        assert time.monotonic() < deadline, "the surrogate learner never published a version"
        time.sleep(0.1)  # polling with a deadline: the learner runs in its own thread


def _cfg(services, out, **kw):
    prompts = services["tmp"] / "prompts.txt"
    prompts.write_text("a red circle\na blue square\na green triangle\n")
    base = dict(base_model=services["base"], teacher_model=None, regularizer="anchor",
                reward_url=services["reward_url"], surrogate_url=services["surrogate_url"],
                redis_url=services["redis_url"], reward="brightness", prompts=prompts, eval_prompts=prompts,
                eval_seeds=1, prompts_per_iter=2, n_noises=2, lr=1e-3, eval_every=2, checkpoint_every=2,
                out=out, progress=False)
    return TrainConfig(**{**base, **kw})


def test_short_run_trains_streams_and_resumes(services, tmp_path):
    from trainer.loop import train

    out = tmp_path / "run"
    initial = FewStepModel(services["base"]).unet.state_dict()
    summary = train(_cfg(services, out, iterations=3))
    assert summary["iterations"] == 3 and summary["queries"] == 3 * 2 * 2 * 2  # it × P × N_s × {z1, z2}
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["kind"] == "train"]
    assert len(train_rows) == 3 and all(np.isfinite(r["loss"]) for r in train_rows)
    assert (out / "report.html").is_file() and (out / "curves.png").is_file() and any((out / "tb").iterdir())
    assert any((out / "grids").glob("2step_it*.png"))

    # θ changed
    from safetensors.torch import load_file

    trained = load_file(str(out / "checkpoint/unet.safetensors"))
    assert any(not torch.equal(trained[k], initial[k]) for k in initial)

    # groups reached the stream, and decode as records
    r = redis_util.connect(services["redis_url"])
    entries = r.xrange("lasro:groups")
    assert len(entries) >= 3 * 2 * 2  # it × P × {step 1, step 2}
    g = SampleGroup.from_fields(entries[-1][1])
    assert g.reward == "brightness" and g.latents.shape == (2, 4, 8, 8) and g.step in (1, 2)

    # resume: 2 more iterations from the checkpoint continue the count and the prompt stream
    summary2 = train(_cfg(services, out, iterations=5, resume=True))
    assert summary2["iterations"] == 5 and summary2["queries"] == 5 * 2 * 2 * 2
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows if r["kind"] == "train"] == [1, 2, 3, 4, 5]


def test_resume_reproduces_an_unbroken_run(services, tmp_path):
    """Checkpoint at 2, resume to 4 == straight to 4 (same RNG, prompts, S state, optimiser)."""
    from safetensors.torch import load_file

    from trainer.loop import train

    # the surrogate keeps learning between runs, so freeze its influence: c1 = c2 = 0
    kw = {"c1": 0.0, "c2": 0.0}
    train(_cfg(services, tmp_path / "a", iterations=4, **kw))
    train(_cfg(services, tmp_path / "b", iterations=2, **kw))
    train(_cfg(services, tmp_path / "b", iterations=4, resume=True, **kw))
    a = load_file(str(tmp_path / "a/checkpoint/unet.safetensors"))
    b = load_file(str(tmp_path / "b/checkpoint/unet.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


def test_bad_config_fails_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="regularizer"):
        TrainConfig(regularizer="nope", out=tmp_path)
    with pytest.raises(ValueError, match="mixed_precision"):
        TrainConfig(mixed_precision="fp16", device="cpu", out=tmp_path)
    with pytest.raises(ValueError, match="not a file"):
        TrainConfig(prompts=tmp_path / "missing.txt", out=tmp_path)


def test_data_parallel_under_accelerate_launch_with_two_cpu_processes(services, tmp_path):
    """`accelerate launch --multi_gpu --num_processes 2 -m trainer train` on a CPU-only machine: the
    torchrun path of accelerate; `Accelerator(cpu=True)` forms a gloo group (accelerate's `--cpu`
    flag would route multi-process launches to mpirun instead). Both processes sample, stream
    groups and average gradients; the main process writes the checkpoint and summary."""
    import os
    import subprocess
    import sys

    out = tmp_path / "ddp"
    prompts = services["tmp"] / "prompts.txt"
    prompts.write_text("a red circle\na blue square\na green triangle\n")
    r = redis_util.connect(services["redis_url"])
    before = r.xlen("lasro:groups")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "trainer", "train",
           "--base-model", services["base"], "--regularizer", "anchor", "--reward", "brightness",
           "--reward-url", services["reward_url"], "--surrogate-url", services["surrogate_url"],
           "--redis-url", services["redis_url"], "--prompts", str(prompts), "--eval-prompts", str(prompts),
           "--eval-seeds", "1", "--prompts-per-iter", "2", "--n-noises", "2", "--iterations", "2",
           "--eval-every", "2", "--checkpoint-every", "2", "--lr", "1e-3", "--out", str(out), "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.getcwd()}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["iterations"] == 2 and summary["queries"] == 2 * 2 * 2 * 2 * 2  # it × P × N_s × 2 steps × 2 procs
    assert r.xlen("lasro:groups") - before == 2 * 2 * 2 * 2  # it × P × 2 steps × 2 processes
    assert (out / "checkpoint" / "unet.safetensors").is_file()


def test_a_service_that_goes_away_stops_the_run_cleanly_and_resume_finishes_it(services, serve, tmp_path):
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    from trainer.loop import ServiceGone, train

    down = FastAPI()

    @down.api_route("/{path:path}", methods=["GET", "POST"])
    def unavailable(path: str):
        return JSONResponse({"error": {"code": "not_ready", "message": "down"}}, status_code=503)

    out = tmp_path / "run"
    with pytest.raises(ServiceGone, match="--resume"):
        train(_cfg(services, out, iterations=3, surrogate_url=serve(down), service_retries=1))
    assert (out / "checkpoint" / "state.json").is_file()  # nothing lost: the run can continue
    summary = train(_cfg(services, out, iterations=3, resume=True))
    assert summary["iterations"] == 3


def test_cli_refuses_a_bad_config_before_any_work(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "trainer", "train", "--regularizer", "nope", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "regularizer must be one of" in proc.stderr
    assert not any(tmp_path.iterdir())  # no output written
