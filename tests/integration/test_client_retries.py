"""The shared client's retry policy against real servers."""

from __future__ import annotations

import asyncio
import socket

import pytest
from fastapi import FastAPI
from fastapi.responses import JSONResponse

from lasro_common.client import AsyncClient, SyncClient
from lasro_common.errors import ServiceError, ServiceUnavailable


def flaky_app(failures: int, status: int):
    app = FastAPI()
    app.state.calls = 0

    @app.get("/x")
    def x():
        app.state.calls += 1
        if app.state.calls <= failures:
            return JSONResponse({"error": {"code": "busy", "message": "later"}}, status_code=status,
                                headers={"Retry-After": "0"})
        return {"ok": True}

    return app


@pytest.mark.parametrize("status", [429, 503])
def test_retries_on_429_and_503_then_succeeds(serve, status):
    app = flaky_app(2, status)
    with SyncClient(serve(app), retries=3, backoff=0.001) as c:
        assert c.request("GET", "/x").json() == {"ok": True}
    assert app.state.calls == 3


def test_gives_up_after_the_retry_budget(serve):
    app = flaky_app(10, 503)
    with SyncClient(serve(app), retries=2, backoff=0.001) as c, pytest.raises(ServiceUnavailable) as e:
        c.request("GET", "/x")
    assert app.state.calls == 3 and e.value.status == 503 and e.value.code == "busy"


def test_no_retry_on_other_errors(serve):
    app = flaky_app(10, 500)
    with SyncClient(serve(app), retries=5, backoff=0.001) as c, pytest.raises(ServiceError) as e:
        c.request("GET", "/x")
    assert app.state.calls == 1 and e.value.status == 500


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def test_connect_errors_are_retried_then_raised():
    with SyncClient(f"http://127.0.0.1:{_closed_port()}", retries=2, backoff=0.001) as c, \
            pytest.raises(ServiceUnavailable, match="unreachable"):
        c.request("GET", "/x")


def test_async_client_retries_too(serve):
    app = flaky_app(1, 503)
    url = serve(app)

    async def main():
        async with AsyncClient(url, retries=2, backoff=0.001) as c:
            return (await c.request("GET", "/x")).json()

    assert asyncio.run(main()) == {"ok": True} and app.state.calls == 2


def test_bad_base_url_is_refused():
    with pytest.raises(ValueError, match="http://"):
        SyncClient("localhost:8000")
