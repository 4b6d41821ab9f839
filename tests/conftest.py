"""Shared fixtures: real uvicorn servers in threads on free ports (httpx/starlette style)."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import uvicorn

torch.set_num_threads(1)  # two cores shared by servers and clients in one process


class _Server(uvicorn.Server):
    """uvicorn.Server that signals an Event once it is bound (no polling, no sleeps)."""

    def __init__(self, config: uvicorn.Config):
        super().__init__(config)
        self.bound = threading.Event()

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets)
        self.bound.set()

    def install_signal_handlers(self) -> None:  # not the main thread
        pass


@contextlib.contextmanager
def serve_in_thread(app, *, host: str = "127.0.0.1") -> Iterator[str]:
    """Run `app` under a real uvicorn on a free port; yield its base URL. A service app runs with
    the same server options as `python -m <service>` (read timeout, connection cap)."""
    from lasro_common.protocol import server_options

    settings = getattr(getattr(app, "state", None), "service_settings", None)
    options = server_options(settings) if settings is not None else {"http": "httptools"}
    server = _Server(uvicorn.Config(app, host=host, port=0, log_level="warning", lifespan="on", **options))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    if not server.bound.wait(30):
        raise RuntimeError("uvicorn did not start within 30 s")
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.fixture
def serve():
    """serve(app) -> base URL; every server started is stopped at teardown."""
    with contextlib.ExitStack() as stack:
        yield lambda app: stack.enter_context(serve_in_thread(app))


@pytest.fixture(scope="session")
def tiny_pipelines(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny random SD- and SDXL-architecture pipelines, saved once per session."""
    from tests.tiny_models import build_tiny_sd_pipeline, build_tiny_sdxl_pipeline, save_tiny_lora

    root = tmp_path_factory.mktemp("tiny_pipelines")
    out = {"sd": build_tiny_sd_pipeline(root / "sd"), "sdxl": build_tiny_sdxl_pipeline(root / "sdxl"),
           "sdxl_turbo": build_tiny_sdxl_pipeline(root / "sdxl_turbo", turbo=True)}
    out["lcm_lora"] = save_tiny_lora(out["sdxl_turbo"], root / "lcm_lora")  # on a base without LCM distillation
    return out
