"""HTTP plumbing shared by the services: settings base, JSON errors, bearer auth, body limit,
protocol header, Prometheus metrics, /healthz and /readyz, fast tensor bodies.

Routes stay thin: they call `read_tensors` / `tensor_response` and the model code; everything
here is pure ASGI or a FastAPI dependency (no BaseHTTPMiddleware, which copies bodies).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Callable
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
)
from pydantic import BaseModel, Field, SecretStr
from pydantic_settings import BaseSettings
from starlette.exceptions import HTTPException as StarletteHTTPException

from . import PROTOCOL_HEADER, PROTOCOL_VERSION, SAFETENSORS_MEDIA_TYPE, codec
from .docs_pages import add_docs_routes
from .errors import PayloadTooLarge, Unauthorized, UnsupportedMedia, WireError
from .limits import LEDGER, Ledger, MemoryBudget, ReadTimeout, read_body

__all__ = ["ERROR_RESPONSES", "Metrics", "RequestTimeout", "ServiceSettings", "create_base_app", "error_response",
           "make_auth", "media_type", "metrics_route", "read_body", "read_tensors", "tensor_response"]

log = logging.getLogger(__name__)
# Open on every service even with a token set: health, and the API's description (docs_pages.py)
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect",
                        "/docs/assets/*"})


class ServiceSettings(BaseSettings):
    """Fields every service has; subclasses set `env_prefix` (REWARD_, SURROGATE_)."""

    host: str = Field("127.0.0.1", description="Interface to bind.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port (0 picks a free one).")
    api_token: SecretStr | None = Field(None, description="Bearer token required on every non-health route; unset = open.")
    max_body_mb: float = Field(64.0, gt=0, description="Largest accepted request body, in MiB (413 above).")
    max_batch: int = Field(256, ge=1, description="Largest batch (B) one request may carry (413 above).")
    request_timeout_s: float = Field(120.0, gt=0, description="Per-request time limit: the body must arrive within it (408 otherwise) and the answer too (504).")
    batching: bool = Field(True, description="Merge concurrent requests into one model call.")
    batch_max_size: int = Field(64, ge=1, description="Most samples merged into one model call.")
    batch_max_wait_ms: float = Field(5.0, ge=0, description="How long the first request waits for company.")
    max_queue: int = Field(512, ge=1, description="Requests waiting beyond this get 429.")
    log_level: str = Field("info", description="Python logging level.")
    read_timeout_s: float = Field(15.0, gt=0, description="Longest wait for a client's next bytes (headers, body) and for a new connection's first request; 408 and close when exceeded.")
    keep_alive_s: float = Field(5.0, gt=0, description="Idle keep-alive connections are closed after this long.")
    max_connections: int = Field(1024, ge=8, description="Open connections at most; at the cap, connections idle on the client's side are closed first, then new ones refused (503).")
    memory_budget_mb: float = Field(1024.0, gt=0, description="Memory that all requests in flight may hold at once for bodies and decoded inputs, in MiB (429 while full, 413 for a request larger than all of it).")
    max_prompt_chars: int = Field(4096, ge=1, description="Longest prompt accepted, in characters (413 above).")


class ErrorBody(BaseModel):
    """Every error answer: {"error": {"code": ..., "message": ...}}."""

    class Detail(BaseModel):
        code: str
        message: str

    error: Detail


ERROR_RESPONSES = {code: {"model": ErrorBody} for code in (400, 401, 404, 408, 413, 415, 422, 429, 503, 504)}
SMALL_BODY = 64 * 1024  # an unread remainder up to this is discarded by the server; beyond: close


class RequestTimeout(WireError):
    status, code = 504, "timeout"


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """The JSON error body. The protocol header is added once, by `_Plumbing`, to every answer."""
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


class Metrics:
    """One registry per app, so several apps can live in one process (tests, benchmarks)."""

    def __init__(self, service: str):
        self.registry = CollectorRegistry()
        self.requests = Counter("lasro_requests", "HTTP requests", ["service", "route", "status"], registry=self.registry)
        self.latency = Histogram("lasro_request_seconds", "Request latency", ["service", "route"], registry=self.registry,
                                 buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
        self.batch = Histogram("lasro_batch_samples", "Samples per model call", ["service", "model"], registry=self.registry,
                               buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
        self.service = service

    def observe_batch(self, model: str) -> Callable[[int, int], None]:
        return lambda n_requests, n_samples: self.batch.labels(self.service, model).observe(n_samples)


class _Plumbing:
    """Pure-ASGI middleware, cheap on the hot path: protocol header (once, on every answer), body
    limit, body read timeouts, the request's memory ledger, metrics. An answer sent before the body
    has been read (401, 413, ...) closes the connection unless the unread rest is small, so a client
    cannot make the server swallow gigabytes it refused."""

    def __init__(self, app, *, max_body: int, metrics: Metrics, read_timeout_s: float = 15.0,
                 body_timeout_s: float = 120.0, budget: MemoryBudget | None = None):
        self.app, self.max_body, self.metrics = app, max_body, metrics
        self.read_timeout, self.body_timeout, self.budget = read_timeout_s, body_timeout_s, budget

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        proto = headers.get(PROTOCOL_HEADER.lower().encode())
        length = headers.get(b"content-length")
        declared = int(length) if length is not None and length.isdigit() else None
        chunked = b"chunked" in headers.get(b"transfer-encoding", b"").lower()
        seen, done = 0, declared == 0 or (declared is None and not chunked)
        status, start = 500, time.perf_counter()
        deadline = start + self.body_timeout

        async def limited_receive():
            nonlocal seen, done
            if done:  # only a disconnect can come now: no time limit on waiting for it
                return await receive()
            wait = min(self.read_timeout, deadline - time.perf_counter())
            try:
                message = await asyncio.wait_for(receive(), max(wait, 0.001))
            except asyncio.TimeoutError:
                raise ReadTimeout(f"the request body stalled: nothing for {self.read_timeout:g} s, or not "
                                  f"complete within {self.body_timeout:g} s (read_timeout_s, request_timeout_s)") from None
            seen += len(message.get("body", b""))
            done = message["type"] != "http.request" or not message.get("more_body", False)
            if seen > self.max_body:  # chunked bodies without Content-Length
                raise PayloadTooLarge(f"body exceeds the limit of {self.max_body} bytes")
            return message

        async def send_with_header(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                out = [h for h in message.get("headers", []) if h[0].lower() != PROTOCOL_HEADER.lower().encode()]
                out.append((PROTOCOL_HEADER.lower().encode(), PROTOCOL_VERSION.encode()))
                unread = (declared - seen) if declared is not None else (0 if done else self.max_body)
                if not done and unread > SMALL_BODY:
                    out.append((b"connection", b"close"))
                message = {**message, "headers": out}
            await send(message)

        early: WireError | None = None
        if proto is not None and proto.decode(errors="replace").split(".")[0] != PROTOCOL_VERSION:
            early = WireError(f"protocol version {proto.decode(errors='replace')} not supported; "
                              f"this server speaks {PROTOCOL_VERSION}", code="protocol_mismatch")
        elif length is not None and (declared is None or declared > self.max_body):
            early = PayloadTooLarge(f"body of {length.decode(errors='replace')} bytes exceeds the "
                                    f"limit of {self.max_body} bytes")
        ledger = Ledger(self.budget)
        scope[LEDGER] = ledger
        try:
            if early is not None:
                await error_response(early.status, early.code, early.message)(scope, receive, send_with_header)
            else:
                await self.app(scope, limited_receive, send_with_header)
        finally:
            await ledger.release()
            route = scope.get("route")
            path = getattr(route, "path", "unmatched")
            self.metrics.requests.labels(self.metrics.service, path, str(status)).inc()
            self.metrics.latency.labels(self.metrics.service, path).observe(time.perf_counter() - start)


def make_auth(settings: ServiceSettings) -> Callable:
    bearer = HTTPBearer(auto_error=False, description="Set by REWARD_API_TOKEN / SURROGATE_API_TOKEN.")
    token = settings.api_token.get_secret_value().encode() if settings.api_token else None

    async def require_token(creds: HTTPAuthorizationCredentials | None = Depends(bearer)) -> None:
        if token is None:
            return
        if creds is None or not hmac.compare_digest(creds.credentials.encode(), token):
            raise Unauthorized("missing or wrong bearer token (Authorization: Bearer <token>)")

    return require_token


def create_base_app(*, title: str, version: str, settings: ServiceSettings, metrics: Metrics,
                    ready: Callable[[], bool], description: str = "",
                    problem: Callable[[], str | None] = lambda: None) -> FastAPI:
    """A FastAPI app with the shared error handlers, middleware and health routes."""
    # /docs (Swagger UI) and /redoc, with their assets served by the service itself (docs_pages.py)
    app = FastAPI(title=title, version=version, description=description, docs_url=None, redoc_url=None)
    add_docs_routes(app)
    app.state.service_settings = settings  # the server options (lasro_common/protocol.py) read it
    app.state.memory_budget = MemoryBudget(int(settings.memory_budget_mb * 1024 * 1024),
                                           wait_s=settings.read_timeout_s)

    @app.exception_handler(WireError)
    async def _wire(_: Request, e: WireError):
        retry = {"Retry-After": "1"} if e.status in (429, 503) else None
        return error_response(e.status, e.code, e.message, headers=retry)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, e: StarletteHTTPException):  # 404, 405 (with its Allow header), ...
        return error_response(e.status_code, f"http_{e.status_code}", str(e.detail), headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, e: RequestValidationError):
        errs = "; ".join(f"{'.'.join(map(str, x.get('loc', ())))}: {x.get('msg')}" for x in e.errors()[:5])
        return error_response(422, "invalid_input", errs or "request failed validation")

    @app.exception_handler(Exception)
    async def _internal(_: Request, e: Exception):
        log.exception("internal error")  # the traceback goes to the log, never to the client
        # Starlette sends this answer from outside every middleware: the header is added here.
        return error_response(500, "internal_error", f"internal error ({type(e).__name__}); see server log",
                              headers={PROTOCOL_HEADER: PROTOCOL_VERSION})

    @app.get("/healthz", tags=["health"], summary="Liveness: the process answers.")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], summary="Readiness: models loaded.",
             responses={503: {"description": "Not ready yet"}})
    async def readyz():
        why = problem()  # a failed load, a private redis-server that cannot restart, ...
        if why:
            return error_response(503, "not_ready", why)
        return {"status": "ready"} if ready() else error_response(503, "not_ready", "models are loading")

    app.add_middleware(_Plumbing, max_body=int(settings.max_body_mb * 1024 * 1024), metrics=metrics,
                       read_timeout_s=settings.read_timeout_s, body_timeout_s=settings.request_timeout_s,
                       budget=app.state.memory_budget)
    return app


def metrics_route(app: FastAPI, metrics: Metrics, auth: Callable) -> None:
    @app.get("/metrics", tags=["health"], summary="Prometheus metrics.", dependencies=[Depends(auth)],
             response_class=Response, responses={401: {"model": ErrorBody}})
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def read_tensors(request: Request) -> codec.Decoded:
    if media_type(request) != SAFETENSORS_MEDIA_TYPE:
        raise UnsupportedMedia(f"send Content-Type: {SAFETENSORS_MEDIA_TYPE}")
    return codec.decode(await read_body(request))


def tensor_response(tensors: dict[str, Any], metadata: dict[str, Any]) -> Response:
    return Response(codec.encode(tensors, metadata), media_type=SAFETENSORS_MEDIA_TYPE)
