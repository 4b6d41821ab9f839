"""Issue 15, defect 2: the surrogate's private redis-server belongs to the service process. It is
restarted in place (same folder, same socket, same append-only file) when it dies, the service
says why when it cannot be, and it never outlives the service (SIGTERM or kill -9)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest
import redis

from tests.integration.test_learner import make_group, wait_for

ROOT = Path(__file__).resolve().parents[2]


def _redis_in(folder: Path) -> psutil.Process | None:
    """The redis-server process whose working directory is `folder` (redis chdirs to its --dir)."""
    for p in psutil.process_iter(["name"]):
        try:
            if "redis-server" in (p.info["name"] or "") and Path(p.cwd()) == folder.resolve():
                return p
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return None


def _sockets(p: psutil.Process) -> list[str]:
    try:
        return [c.laddr for c in p.net_connections(kind="unix") if c.laddr]
    except psutil.NoSuchProcess:
        return []


def _socket_of(p: psutil.Process) -> str:
    socks = _sockets(p)
    assert socks, f"redis-server {p.pid} listens on no unix socket"
    return socks[0]


def _produce(sock: str, n: int, seed: int) -> list[str]:
    r = redis.Redis(unix_socket_path=sock, socket_timeout=10)
    rng = np.random.default_rng(seed)
    groups = [make_group(rng) for _ in range(n)]
    for g in groups:
        r.xadd("lasro:groups", g.to_fields())
    return [g.group_id for g in groups]


def _status(url: str) -> dict:
    return httpx.get(f"{url}/status", timeout=10).json()


def _spawn(tiny: Path, tmp: Path, port: int, **env_extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "SURROGATE_BASE_MODEL": str(tiny), "SURROGATE_HEAD_CHANNELS": "16",
           "SURROGATE_CHECKPOINT_DIR": str(tmp / "ckpt"), "SURROGATE_CHECKPOINT_EVERY_S": "0.2",
           "SURROGATE_PORT": str(port), **env_extra}
    log = open(tmp / "service.log", "ab")  # noqa: SIM115 - closed with the process
    return subprocess.Popen([sys.executable, "-m", "surrogate_service"], cwd=ROOT, env=env, stdout=log, stderr=log)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def tiny(tiny_pipelines) -> Path:
    return tiny_pipelines["sd"]


@pytest.fixture
def service(tiny, tmp_path):
    """`python -m surrogate_service` with its private redis-server in tmp_path/redis."""
    port = _free_port()
    folder = tmp_path / "redis"
    proc = _spawn(tiny, tmp_path, port, SURROGATE_REDIS_DIR=str(folder))
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        if proc.poll() is not None:
            pytest.fail((tmp_path / "service.log").read_text()[-3000:])
        try:
            return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(ready, 120, "the surrogate service to be ready")
    yield {"url": url, "proc": proc, "folder": folder, "log": tmp_path / "service.log"}
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)
    left = _redis_in(folder)
    if left is not None:
        left.kill()


def test_private_redis_is_restarted_in_place_after_kill_9(service):
    url, folder = service["url"], service["folder"]
    first = wait_for(lambda: (p := _redis_in(folder)) is not None and _sockets(p) and p, 30, "the private redis-server")
    sock = _socket_of(first)
    ids = _produce(sock, 3, seed=1)
    wait_for(lambda: _status(url)["learner"]["groups_consumed"] == 3, 60, "the first groups")
    first.kill()  # kill -9 of the redis-server under the running learner
    second = wait_for(lambda: (p := _redis_in(folder)) is not None and p.pid != first.pid and _sockets(p) and p,
                      30, "a redis-server restarted in the same folder")
    assert _socket_of(second) == sock
    ids += _produce(sock, 3, seed=2)
    wait_for(lambda: _status(url)["learner"]["groups_consumed"] == 6, 60, "groups after the restart")
    st = _status(url)["learner"]
    assert st["redis_connected"] and st["duplicates_skipped"] == 0
    r = redis.Redis(unix_socket_path=sock)
    assert r.xlen("lasro:groups") == 6  # the stream survived: same data, not a fresh empty server
    assert httpx.get(f"{url}/readyz").status_code == 200


def test_readyz_says_why_when_the_private_redis_cannot_restart(service):
    url, folder = service["url"], service["folder"]
    first = wait_for(lambda: _redis_in(folder), 30, "the private redis-server")
    moved = folder.with_name("redis-moved")
    folder.rename(moved)  # the running server keeps its directory; a restart cannot chdir
    folder.write_text("not a folder")
    first.kill()

    def unready() -> str | None:
        r = httpx.get(f"{url}/readyz", timeout=5)
        return r.status_code == 503 and r.json()["error"]["message"]

    message = wait_for(unready, 30, "/readyz to turn 503")
    assert "redis" in message and str(folder) in message, message
    folder.unlink()
    moved.rename(folder)
    wait_for(lambda: httpx.get(f"{url}/readyz", timeout=5).status_code == 200, 60, "ready again after repair")


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "kill-9"])
def test_private_redis_never_outlives_the_service(service, how):
    proc, folder = service["proc"], service["folder"]
    server = wait_for(lambda: _redis_in(folder), 30, "the private redis-server")
    proc.send_signal(how)
    proc.wait(60)
    wait_for(lambda: not server.is_running() or server.status() == psutil.STATUS_ZOMBIE, 15,
             f"redis-server {server.pid} to stop with the service")
    if how == signal.SIGTERM:
        assert "Application shutdown complete" in service["log"].read_text()


def test_private_redis_without_a_folder_restarts_on_the_same_data(tiny, tmp_path, serve):
    """No SURROGATE_REDIS_DIR: the temp folder chosen at start is kept for the service's life."""
    from surrogate_service.app import create_app
    from surrogate_service.settings import SurrogateSettings

    app = create_app(SurrogateSettings(base_model=str(tiny), head_channels=16, checkpoint_dir=tmp_path / "ckpt",
                                       checkpoint_every_s=0.2))
    url = serve(app)
    state = app.state.surrogate
    assert state.ready.wait(60), state.error
    info = _status(url)["redis"]
    folder, sock = Path(info["dir"]), info["url"].removeprefix("unix://")
    first = psutil.Process(info["pid"])
    assert Path(first.cwd()) == folder.resolve()
    _produce(sock, 2, seed=3)
    wait_for(lambda: _status(url)["learner"]["groups_consumed"] == 2, 60, "the first groups")
    first.kill()
    wait_for(lambda: _status(url)["redis"]["pid"] not in (None, first.pid), 30, "a restart")
    info2 = _status(url)["redis"]
    assert info2["dir"] == info["dir"] and info2["url"] == info["url"] and info2["restarts"] == 1
    assert Path(psutil.Process(info2["pid"]).cwd()) == folder.resolve()
    _produce(sock, 2, seed=4)
    wait_for(lambda: _status(url)["learner"]["groups_consumed"] == 4, 60, "groups after the restart")
    assert redis.Redis(unix_socket_path=sock).xlen("lasro:groups") == 4


OWNER = """
import os, signal, sys
from lasro_common.redis_util import EmbeddedRedis
server = EmbeddedRedis(sys.argv[1])
server.start()
print(server.pid, flush=True)
how = sys.stdin.readline().strip()
if how == "exit":
    sys.exit(0)  # a normal exit that never calls server.stop() (no atexit hook for a bare EmbeddedRedis)
if how == "_exit":
    os._exit(0)  # no cleanup at all
signal.pause()  # wait for kill -9
"""


@pytest.mark.parametrize("how", ["exit", "_exit", "kill-9"])
def test_a_private_redis_goes_with_its_owner_however_it_ends(tmp_path, how):
    owner = subprocess.Popen([sys.executable, "-c", OWNER, str(tmp_path / "redis")], cwd=ROOT,
                             env={**os.environ, "PYTHONPATH": str(ROOT)}, stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        pid = int(owner.stdout.readline())
        server = psutil.Process(pid)
        assert "redis-server" in server.name() and Path(server.cwd()) == (tmp_path / "redis").resolve()
        if how == "kill-9":
            owner.kill()
        else:
            owner.stdin.write(how + "\n")
            owner.stdin.flush()
        owner.wait(30)
        wait_for(lambda: not server.is_running() or server.status() == psutil.STATUS_ZOMBIE, 15,
                 f"redis-server {pid} to stop with its owner ({how})")
    finally:
        if owner.poll() is None:
            owner.kill()
        left = _redis_in(tmp_path / "redis")
        if left is not None:
            left.kill()


def test_a_child_orphaned_before_the_death_signal_is_armed_stops_itself():
    """The window between fork and prctl: a child whose parent is already gone would never get the
    signal. `die_with` sees the parent changed and stops the child (here: a parent pid that is not
    the real one, as after such an early death)."""
    from lasro_common.redis_util import die_with

    orphan = subprocess.Popen(["sleep", "30"], preexec_fn=die_with(os.getpid() + 10**6))
    assert orphan.wait(10) == -signal.SIGKILL
    kept = subprocess.Popen(["sleep", "30"], preexec_fn=die_with(os.getpid()))
    try:
        with pytest.raises(subprocess.TimeoutExpired):
            kept.wait(0.5)  # the real parent: it runs (bounded wait on a process meant to live)
    finally:
        kept.kill()
        kept.wait(10)
