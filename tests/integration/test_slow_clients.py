"""Issue 15, connection side: idle, half-sent and slow clients cost bounded time, memory and file
descriptors. The server under test runs with the project's own uvicorn options (read timeout,
connection cap), exactly as `python -m reward_service` does."""

from __future__ import annotations

import socket
import time

import httpx
import numpy as np
import psutil
import pytest

from lasro_common import SAFETENSORS_MEDIA_TYPE, codec
from reward_service.app import create_app
from reward_service.settings import RewardSettings

READ_TIMEOUT = 1.0


@pytest.fixture
def service(serve):
    app = create_app(RewardSettings(rewards=["jpeg_compressibility"], read_timeout_s=READ_TIMEOUT,
                                    max_connections=16))
    url = serve(app)
    assert app.state.rewards.ready.wait(30), app.state.rewards.error
    return url


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def _closed_by_server(s: socket.socket, within: float) -> tuple[bool, bytes]:
    """Read until the server closes (True) or `within` seconds pass (False); returns what it sent."""
    got, deadline = b"", time.monotonic() + within
    while time.monotonic() < deadline:
        s.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = s.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            return True, got
        if not chunk:
            return True, got
        got += chunk
    return False, got


def _ok(url: str) -> None:
    body = codec.encode({"images": np.zeros((1, 3, 8, 8), np.uint8)})
    r = httpx.post(f"{url}/score", content=body, headers={"Content-Type": SAFETENSORS_MEDIA_TYPE}, timeout=30)
    assert r.status_code == 200, r.text


def test_idle_connection_is_closed_after_the_read_timeout(service):
    s = _connect(service)
    closed, got = _closed_by_server(s, READ_TIMEOUT + 5)
    assert closed and got == b"", got


def test_half_sent_headers_get_408_and_the_connection_closes(service):
    s = _connect(service)
    s.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")  # no blank line
    closed, got = _closed_by_server(s, READ_TIMEOUT + 5)
    assert closed and got.startswith(b"HTTP/1.1 408"), got[:200]


def test_half_sent_body_gets_408_and_the_connection_closes(service):
    s = _connect(service)
    s.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-safetensors\r\n"
              b"Content-Length: 100000\r\n\r\n" + b"\0" * 100)
    closed, got = _closed_by_server(s, READ_TIMEOUT + 5)
    assert closed and got.startswith(b"HTTP/1.1 408"), got[:200]
    assert b'"code":"request_timeout"' in got.replace(b" ", b"")


def test_a_slow_upload_holds_memory_for_what_it_sent_not_what_it_declared(service):
    """Four uploads declare 48 MiB each and send 1 KiB: before, 192 MiB were allocated (and
    zeroed) up front; now the buffer grows with the data that actually arrives."""
    me = psutil.Process()
    _ok(service)
    before = me.memory_info().rss
    socks = []
    for _ in range(4):
        s = _connect(service)
        s.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-safetensors\r\n"
                  b"Content-Length: 50331648\r\n\r\n" + b"\0" * 1024)
        socks.append(s)
    _ok(service)  # the server has read the four requests' headers by the time this one is answered
    grown = (me.memory_info().rss - before) / 2**20
    for s in socks:
        s.close()
    assert grown < 64, f"RSS grew by {grown:.0f} MiB for 4 KiB of body"


def test_connection_cap_evicts_idle_connections_before_refusing_clients(serve):
    """40 idle connections against a cap of 16: the oldest idle ones are closed at once (long
    before the 30 s read timeout), and a normal client is still served."""
    app = create_app(RewardSettings(rewards=["jpeg_compressibility"], read_timeout_s=30, max_connections=16))
    url = serve(app)
    assert app.state.rewards.ready.wait(30), app.state.rewards.error
    socks = [_connect(url) for _ in range(40)]
    _ok(url)
    deadline = time.monotonic() + 10
    closed = 0
    while closed < 40 - 16 and time.monotonic() < deadline:
        closed = sum(_closed_by_server(s, 0.01)[0] for s in socks)
    assert closed >= 40 - 16, f"only {closed} of 40 idle connections were closed"
    _ok(url)
    for s in socks:
        s.close()
