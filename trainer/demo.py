"""`make demo` / `python -m trainer demo`: the whole system on the toy world, on a CPU.

Starts a private redis-server, the reward service and the surrogate service (real processes,
real HTTP), pre-trains the surrogate, fine-tunes the toy LCM with LaSRO, and writes a report:
runs/demo/report.html, runs/demo/summary.json, TensorBoard logs in runs/demo/train/tb, and the
fine-tuned model (its best checkpoint) as a diffusers pipeline with a model card: runs/demo/model.
The settings: configs/demo.toml, under flags and TRAINER_* / REWARD_* / SURROGATE_* variables.
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
from .config_file import SECTIONS, merge, read_config, service_env, under_env
from .export import export_run
from .loop import train
from .pretrain import pretrain

# The demo's settings: configs/demo.toml (trainer/demo.toml links to it, so an installed package
# has it too). Top-level keys are TrainConfig fields; [reward_service] and [surrogate_service]
# configure the services the demo starts.
DEMO_CONFIG = Path(__file__).with_name("demo.toml")
_DEMO = read_config(DEMO_CONFIG)
DEMO_DEFAULTS: dict = {k: v for k, v in _DEMO.items() if k not in SECTIONS}
SURROGATE_ENV = service_env("surrogate_service", _DEMO.get("surrogate_service", {}))
SERVICE_SETS = {"reward_service": ("port",),  # the demo's own: free ports, its Redis, its folders
                "surrogate_service": ("port", "redis_url", "base_model", "checkpoint_dir")}


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


def demo(out: Path, reward: str | None = "toy_attribute_binding", overrides: dict | None = None,
         services: dict | None = None) -> dict:
    """`overrides`: TrainConfig values over DEMO_DEFAULTS; `services`: [reward_service] and
    [surrogate_service] values over the demo's. TRAINER_*, REWARD_* and SURROGATE_* variables
    win over DEMO_DEFAULTS and the service tables."""
    t0 = time.perf_counter()
    tables = merge({s: _DEMO.get(s, {}) for s in SECTIONS}, services or {})
    for section, keys in SERVICE_SETS.items():
        if given := [k for k in keys if k in tables.get(section, {})]:
            raise ValueError(f"[{section}] {', '.join(given)}: set by the demo itself")
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    redis_url = redis_util.embedded_redis_url(out / "redis")
    threads = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    rport, sport = _free_port(), _free_port()
    cfg = TrainConfig(**{**under_env(DEMO_DEFAULTS, "TRAINER_"), **(overrides or {}),
                         **({"reward": reward} if reward else {}), "out": out / "train",
                         "reward_url": f"http://127.0.0.1:{rport}", "surrogate_url": f"http://127.0.0.1:{sport}",
                         "redis_url": redis_url})  # validated before anything starts
    reward_values = under_env(tables.get("reward_service", {}), "REWARD_")
    surrogate_values = under_env(tables.get("surrogate_service", {}), "SURROGATE_")
    _record_services(out / "train" / "services.json", reward_values, surrogate_values, rport, sport, redis_url,
                     cfg.base_model, out / "surrogate")  # validated too: the settings each service will read
    with service(["reward_service", "--port", str(rport)], cfg.reward_url, out / "logs/reward.log",
                 {**threads, **service_env("reward_service", reward_values)}), \
         service(["surrogate_service", "--port", str(sport), "--redis-url", redis_url, "--base-model", cfg.base_model,
                  "--checkpoint-dir", str(out / "surrogate")], cfg.surrogate_url,
                 out / "logs/surrogate.log", {**threads, **service_env("surrogate_service", surrogate_values)}):
        pre = pretrain(cfg)
        summary = train(cfg)
    # the fine-tuned toy model at out/model (the run wrote train/model; the card's paths say where it is)
    model = export_run(out / "train", out / "model")
    shutil.rmtree(out / "train" / "model", ignore_errors=True)
    card = json.loads((model / "lasro.json").read_text())["checkpoint"]
    summary = {"reward": cfg.reward, "before": summary["before"], "after": summary["after"],
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


def _record_services(path: Path, reward_values: dict, surrogate_values: dict, rport: int, sport: int,
                     redis_url: str, base_model: str, checkpoint_dir: Path) -> None:
    """The full settings of both services, as each will read them (this process's environment, the
    demo's tables and flags): validated before anything starts, and shown in the report."""
    from reward_service.settings import RewardSettings
    from surrogate_service.settings import SurrogateSettings

    rs = RewardSettings(**reward_values, port=rport)
    ss = SurrogateSettings(**surrogate_values, port=sport, redis_url=redis_url, base_model=base_model,
                           checkpoint_dir=checkpoint_dir)
    path.parent.mkdir(parents=True, exist_ok=True)  # secrets are dumped masked
    path.write_text(json.dumps({"reward_service": rs.model_dump(mode="json"),
                                "surrogate_service": ss.model_dump(mode="json")}, indent=2))
