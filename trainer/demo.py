"""`make demo` / `python -m trainer demo`: the whole system on the toy world, on a CPU.

Starts a private redis-server, the reward service and the surrogate service (real processes,
real HTTP), pre-trains the surrogate, fine-tunes the toy LCM with LaSRO, and writes a report:
runs/demo/report.html, runs/demo/summary.json, TensorBoard logs in runs/demo/train/tb, and the
fine-tuned model (its best checkpoint) as a diffusers pipeline with a model card: runs/demo/model.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from lasro_common import redis_util

from .config import TrainConfig
from .export import export_run
from .loop import train
from .pretrain import pretrain

# Demo-sized settings of the surrogate learner (see surrogate_service/settings.py for each).
SURROGATE_ENV = {"SURROGATE_LR": "3e-4", "SURROGATE_UPDATES_PER_GROUP": "1", "SURROGATE_PUBLISH_EVERY": "5",
                 "SURROGATE_EVAL_EVERY": "100",
                 "SURROGATE_PAIRS_PER_UPDATE": "32", "SURROGATE_CHECKPOINT_EVERY_S": "30",
                 "SURROGATE_HEAD_CHANNELS": "64", "SURROGATE_HOLDOUT_FRACTION": "0.1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def service(args: list[str], url: str, log_path: Path, env: dict[str, str], timeout: float = 300) -> Iterator[str]:
    """Run `python -m <service>` until the block ends; yield its URL once /readyz says ready."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as log:
        proc = subprocess.Popen([sys.executable, "-m", *args], stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, **env})
        try:
            deadline = time.monotonic() + timeout
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"{args[0]} exited with {proc.returncode}; see {log_path}")
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{args[0]} not ready after {timeout} s; see {log_path}")
                time.sleep(0.2)  # waiting on another process's port
            yield url
        finally:
            proc.send_signal(signal.SIGTERM)  # the surrogate checkpoints on SIGTERM
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()


def demo(out: Path, reward: str = "toy_attribute_binding", overrides: dict | None = None) -> dict:
    t0 = time.perf_counter()
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    redis_url = redis_util.embedded_redis_url(out / "redis")
    threads = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    rport, sport = _free_port(), _free_port()
    cfg = TrainConfig(**{"reward_url": f"http://127.0.0.1:{rport}", "surrogate_url": f"http://127.0.0.1:{sport}",
                         "redis_url": redis_url, "reward": reward, "out": out / "train",
                         **DEMO_DEFAULTS, **(overrides or {})})  # validated before anything starts
    with service(["reward_service", "--port", str(rport), "--reward", "toy_attribute_binding",
                  "--reward", "jpeg_compressibility"], cfg.reward_url, out / "logs/reward.log", threads), \
         service(["surrogate_service", "--port", str(sport), "--redis-url", redis_url, "--base-model", cfg.base_model,
                  "--checkpoint-dir", str(out / "surrogate")], cfg.surrogate_url,
                 out / "logs/surrogate.log", {**threads, **SURROGATE_ENV}):
        pre = pretrain(cfg)
        summary = train(cfg)
    # the fine-tuned toy model at out/model (the run wrote train/model; the card's paths say where it is)
    model = export_run(out / "train", out / "model")
    shutil.rmtree(out / "train" / "model", ignore_errors=True)
    card = json.loads((model / "lasro.json").read_text())["checkpoint"]
    summary = {"reward": reward, "before": summary["before"], "after": summary["after"],
               "before_std": summary["before_std"], "after_std": summary["after_std"],
               "tracking": summary["tracking"],
               "queries": summary["queries"] + pre["queries"], "queries_pretrain": pre["queries"],
               "queries_finetune": summary["queries"], "eval_queries": summary["eval_queries"],
               "pretrain": pre, "blocked_fraction": summary["blocked_fraction"],
               "iterations": summary["iterations"], "model": str(model), "model_iteration": card["iteration"],
               "wall_s": time.perf_counter() - t0}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    shutil.copy(out / "train" / "report.html", out / "report.html")
    return summary


# Demo-sized LaSRO settings, chosen from the runs recorded in docs/demo.md: a slow generator
# (lr) held by a strong regulariser (c), and samples streamed to the learner only as fast as it
# can train on them (adapt_every), since a stale surrogate is what gets hacked.
DEMO_DEFAULTS: dict = {"iterations": 400, "prompts_per_iter": 4, "n_noises": 8, "lr": 5e-5, "c": 100.0,
                       "regularizer": "anchor", "adapt_every": 2, "eval_every": 50, "eval_seeds": 4,
                       "checkpoint_every": 100, "pretrain_groups": 2048, "pretrain_accuracy": 0.85}
