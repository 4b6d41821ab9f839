"""The shape both services share: a state that loads its models off the event loop, and one
bootstrap that wires it into an app with the shared plumbing (errors, auth, limits, metrics,
/healthz and /readyz).

A service writes a `ServiceState` subclass with `setup()` (load models, build batchers: it runs
in a thread at start, so /healthz answers while weights load) and `close()`, then calls
`create_service_app` and adds its thin routes, each behind the returned `auth` dependencies.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI

from .errors import WireError
from .server import Metrics, ServiceSettings, create_base_app, make_auth, metrics_route

log = logging.getLogger(__name__)


class ServiceState:
    """ready / error / load / require_ready. `what` names the models in messages."""

    what = "models"

    def __init__(self, settings: ServiceSettings, metrics: Metrics) -> None:
        self.settings, self.metrics = settings, metrics
        self.ready = threading.Event()
        self.error: str | None = None

    def setup(self) -> None:
        """Load models and build batchers (runs in a worker thread at start)."""
        raise NotImplementedError

    def close(self) -> None:
        """Stop background work at shutdown (runs in a worker thread)."""

    def load(self) -> None:
        try:
            self.setup()
        except Exception as e:  # reported by /readyz and the log; the process stays up to say so
            self.error = f"{type(e).__name__}: {e}"
            log.exception("loading the %s failed", self.what)
            return
        self.ready.set()

    def problem(self) -> str | None:
        """Why the service is not ready beyond loading (shown by /readyz); None when all is well."""
        return f"loading the {self.what} failed: {self.error}" if self.error else None

    def require_ready(self) -> None:
        if not self.ready.is_set():
            raise WireError(f"{self.what} not loaded yet{': ' + self.error if self.error else ''}",
                            code="not_ready", status=503)


def create_service_app(state: ServiceState, *, name: str, title: str, version: str,
                       description: str) -> tuple[FastAPI, list]:
    """The app with the shared plumbing; `state` loads in a thread at start and closes at
    shutdown, and is reachable as `app.state.<name>`. Returns (app, auth dependencies)."""

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        loader = asyncio.create_task(asyncio.to_thread(state.load))
        yield
        await loader
        await asyncio.to_thread(state.close)

    app = create_base_app(title=title, version=version, settings=state.settings, metrics=state.metrics,
                          ready=state.ready.is_set, description=description, problem=state.problem)
    app.router.lifespan_context = lifespan
    setattr(app.state, name, state)
    auth = make_auth(state.settings)
    metrics_route(app, state.metrics, auth)
    return app, [Depends(auth)]
