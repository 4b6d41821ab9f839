"""The parts every reliability check uses: services and redis-servers as real processes on
127.0.0.1, a live sample-group producer, RSS sampling, and reading the learner's checkpoint."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil

from lasro_common import redis_util
from lasro_common.stream import SampleGroup
from lasro_common.stream.producer import GroupProducer, StreamUnavailable

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "bench-token"
PROMPTS = ["a red circle", "a blue square", "a green triangle and a red square", "a yellow star"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(cond: Callable[[], Any], timeout: float, what: str, tick: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(tick)  # polling another process: the deadline decides
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


class Service:
    """`python -m reward_service | surrogate_service` on a free port, with its own log file."""

    def __init__(self, module: str, tmp: Path, env: dict[str, str] | None = None, token: str | None = TOKEN):
        self.module, self.tmp = module, tmp
        tmp.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        prefix = "REWARD_" if module == "reward_service" else "SURROGATE_"
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                    f"{prefix}PORT": str(self.port), f"{prefix}LOG_LEVEL": "warning", **(env or {})}
        if token:
            self.env[f"{prefix}API_TOKEN"] = token
        self.token = token
        self.log = tmp / f"{module}-{self.port}.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def start(self, timeout: float = 300) -> float:
        """Spawn and wait for /readyz; returns the seconds it took."""
        t0 = time.monotonic()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", self.module], cwd=ROOT, env=self.env,
                                         stdout=log, stderr=log)

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.module} exited with {self.proc.returncode}: "
                                   f"{self.log.read_text(errors='replace')[-2000:]}")
            try:
                return httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, timeout, f"{self.module} to be ready")
        return time.monotonic() - t0

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)

    def stop(self, timeout: float = 120) -> int | None:
        """SIGTERM (the learner writes its final checkpoint) and wait."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(30)

    def status(self) -> dict:
        return httpx.get(f"{self.url}/status", headers=self.headers, timeout=10).json()

    def rss_mb(self) -> float:
        return psutil.Process(self.proc.pid).memory_info().rss / 2**20


class RedisProc:
    """A real redis-server on a free TCP port, restartable on the same port and folder; `aof`
    False runs it without persistence (a restart after kill -9 starts empty)."""

    def __init__(self, folder: Path, aof: bool = True):
        self.dir, self.aof = folder, aof
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self):
        import redis

        return redis.Redis.from_url(self.url, socket_timeout=10, socket_connect_timeout=2)

    def start(self) -> None:
        persistence = ["--appendonly", "yes", "--appendfsync", "always"] if self.aof else ["--appendonly", "no"]
        self.proc = subprocess.Popen([redis_util.redis_server_binary(), "--port", str(self.port), "--bind",
                                      "127.0.0.1", "--dir", str(self.dir), "--save", "", *persistence],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def up() -> bool:
            try:
                return bool(self.client().ping())
            except Exception:
                return False

        wait_for(up, 30, "redis-server")

    def kill(self, wipe: bool = False) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None
        if wipe:
            for f in self.dir.iterdir():
                f.unlink()


def make_group(rng: np.random.Generator, n: int = 4) -> SampleGroup:
    z = rng.standard_normal((n, 4, 8, 8)).astype(np.float16)  # the toy LCM's latents (N, 4, 8, 8)
    return SampleGroup(prompt=str(rng.choice(PROMPTS)), step=int(rng.integers(1, 3)), latents=z,
                       rewards=z[:, 0].astype(np.float32).mean(axis=(1, 2)), group_id=rng.bytes(16).hex())


class Producer:
    """A live producer: one sample group every `interval` s through GroupProducer (outage window
    and journal as the trainer's). `produced` lists the group_ids Redis acknowledged."""

    def __init__(self, url: str, interval: float = 0.1, seed: int = 0):
        self.producer = GroupProducer(redis_util.connect(url), outage_s=300)
        self.interval, self.rng = interval, np.random.default_rng(seed)
        self.produced: list[str] = []
        self.unsent: list[str] = []
        self.last_ok = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="producer", daemon=True)

    def start(self) -> Producer:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval * random.uniform(0.5, 1.5)):
            g = make_group(self.rng)
            try:
                self.producer.publish([g])
            except StreamUnavailable:
                self.unsent.append(g.group_id)
                continue
            self.produced.append(g.group_id)
            self.last_ok = time.monotonic()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(600)


def learner_groups(checkpoint_dir: Path) -> list[str]:
    """group_ids in the learner's last checkpoint (replay + held-out buffers)."""
    from surrogate_service.checkpoint import load_checkpoint

    state = load_checkpoint(checkpoint_dir)
    return [g["group_id"] for g in state["replay"]["groups"] + state["heldout"]["groups"]]


def tally(produced: list[str], kept: list[str]) -> dict[str, int]:
    counts = Counter(kept)
    return {"produced": len(set(produced)), "kept": len(counts), "lost": len(set(produced) - set(counts)),
            "twice": sum(c - 1 for c in counts.values() if c > 1)}


def consumed(service: Service) -> int:
    try:
        return int(service.status()["learner"]["groups_consumed"])
    except (httpx.HTTPError, KeyError, TypeError, ValueError):
        return -1


def surrogate_env(tmp: Path, **extra: str) -> dict[str, str]:
    """A learning surrogate on the toy LCM, checkpointing often and buffering every group."""
    return {"SURROGATE_CHECKPOINT_DIR": str(tmp / "ckpt"), "SURROGATE_CHECKPOINT_EVERY_S": "0.5",
            "SURROGATE_BUFFER_GROUPS": "16384", "SURROGATE_UPDATES_PER_GROUP": "0.25",
            "SURROGATE_HEAD_CHANNELS": "32", **extra}


class RssSampler:
    """Peak RSS and open file descriptors of a process, sampled every 20 ms in a thread."""

    def __init__(self, pid: int):
        self.proc, self.peak, self.peak_fds = psutil.Process(pid), 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            try:
                self.peak = max(self.peak, self.proc.memory_info().rss)
                self.peak_fds = max(self.peak_fds, self.proc.num_fds())
            except psutil.NoSuchProcess:
                return

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    @property
    def peak_mb(self) -> float:
        return self.peak / 2**20
