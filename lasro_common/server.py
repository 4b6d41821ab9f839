"""HTTP plumbing shared by the services: settings base, JSON errors, bearer auth, body limit,
protocol header, Prometheus metrics, /healthz and /readyz, fast tensor bodies.

Routes stay thin: they call `read_tensors` / `tensor_response` and the model code; everything
here is pure ASGI or a FastAPI dependency (no BaseHTTPMiddleware, which copies bodies).
"""

from __future__ import annotations

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
from .errors import MalformedBody, PayloadTooLarge, Unauthorized, UnsupportedMedia, WireError

log = logging.getLogger(__name__)
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/docs", "/openapi.json", "/docs/oauth2-redirect"})


class ServiceSettings(BaseSettings):
    """Fields every service has; subclasses set `env_prefix` (REWARD_, SURROGATE_)."""

    host: str = Field("127.0.0.1", description="Interface to bind.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port (0 picks a free one).")
    api_token: SecretStr | None = Field(None, description="Bearer token required on every non-health route; unset = open.")
    max_body_mb: float = Field(64.0, gt=0, description="Largest accepted request body, in MiB (413 above).")
    max_batch: int = Field(256, ge=1, description="Largest batch (B) one request may carry (413 above).")
    request_timeout_s: float = Field(120.0, gt=0, description="Per-request time limit; 504 when exceeded.")
    batching: bool = Field(True, description="Merge concurrent requests into one model call.")
    batch_max_size: int = Field(64, ge=1, description="Most samples merged into one model call.")
    batch_max_wait_ms: float = Field(5.0, ge=0, description="How long the first request waits for company.")
    max_queue: int = Field(512, ge=1, description="Requests waiting beyond this get 429.")
    log_level: str = Field("info", description="Python logging level.")


class ErrorBody(BaseModel):
    """Every error answer: {"error": {"code": ..., "message": ...}}."""

    class Detail(BaseModel):
        code: str
        message: str

    error: Detail


ERROR_RESPONSES = {code: {"model": ErrorBody} for code in (400, 401, 404, 413, 415, 422, 429, 503, 504)}


class RequestTimeout(WireError):
    status, code = 504, "timeout"


def error_response(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status,
                        headers={PROTOCOL_HEADER: PROTOCOL_VERSION})


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
    """Pure-ASGI middleware: body limit, protocol header, metrics. Cheap on the hot path."""

    def __init__(self, app, *, max_body: int, metrics: Metrics):
        self.app, self.max_body, self.metrics = app, max_body, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        proto = headers.get(PROTOCOL_HEADER.lower().encode())
        length = headers.get(b"content-length")
        early: WireError | None = None
        if proto is not None and proto.decode(errors="replace").split(".")[0] != PROTOCOL_VERSION:
            early = WireError(f"protocol version {proto.decode(errors='replace')} not supported; "
                              f"this server speaks {PROTOCOL_VERSION}", code="protocol_mismatch")
        elif length is not None and (not length.isdigit() or int(length) > self.max_body):
            early = PayloadTooLarge(f"body of {length.decode(errors='replace')} bytes exceeds the "
                                    f"limit of {self.max_body} bytes")
        if early is not None:
            await error_response(early.status, early.code, early.message)(scope, receive, send)
            return
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_body:  # chunked bodies without Content-Length
                raise PayloadTooLarge(f"body exceeds the limit of {self.max_body} bytes")
            return message

        status = 500
        start = time.perf_counter()

        async def send_with_header(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (PROTOCOL_HEADER.lower().encode(), PROTOCOL_VERSION.encode())]
            await send(message)

        try:
            await self.app(scope, limited_receive, send_with_header)
        finally:
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
                    ready: Callable[[], bool], description: str = "") -> FastAPI:
    """A FastAPI app with the shared error handlers, middleware and health routes."""
    app = FastAPI(title=title, version=version, description=description)

    @app.exception_handler(WireError)
    async def _wire(_: Request, e: WireError):
        return error_response(e.status, e.code, e.message)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, e: StarletteHTTPException):
        return error_response(e.status_code, f"http_{e.status_code}", str(e.detail))

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, e: RequestValidationError):
        errs = "; ".join(f"{'.'.join(map(str, x.get('loc', ())))}: {x.get('msg')}" for x in e.errors()[:5])
        return error_response(422, "invalid_input", errs or "request failed validation")

    @app.exception_handler(Exception)
    async def _internal(_: Request, e: Exception):
        log.exception("internal error")  # the traceback goes to the log, never to the client
        return error_response(500, "internal_error", f"internal error ({type(e).__name__}); see server log")

    @app.get("/healthz", tags=["health"], summary="Liveness: the process answers.")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"], summary="Readiness: models loaded.",
             responses={503: {"description": "Not ready yet"}})
    async def readyz():
        return {"status": "ready"} if ready() else error_response(503, "not_ready", "models are loading")

    app.add_middleware(_Plumbing, max_body=int(settings.max_body_mb * 1024 * 1024), metrics=metrics)
    return app


def metrics_route(app: FastAPI, metrics: Metrics, auth: Callable) -> None:
    @app.get("/metrics", tags=["health"], summary="Prometheus metrics.", dependencies=[Depends(auth)],
             response_class=Response)
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)


async def read_body(request: Request) -> bytearray:
    """The whole body in one preallocated, writable buffer (decoded tensors are views into it)."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit():
        buf, pos = bytearray(int(length)), 0
        async for chunk in request.stream():
            if pos + len(chunk) > len(buf):
                raise MalformedBody("body is longer than its Content-Length")
            buf[pos : pos + len(chunk)] = chunk
            pos += len(chunk)
        if pos != len(buf):
            raise MalformedBody(f"body ended after {pos} of {len(buf)} bytes")
        return buf
    buf = bytearray()
    async for chunk in request.stream():
        buf += chunk
    return buf


def media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def read_tensors(request: Request) -> codec.Decoded:
    if media_type(request) != SAFETENSORS_MEDIA_TYPE:
        raise UnsupportedMedia(f"send Content-Type: {SAFETENSORS_MEDIA_TYPE}")
    return codec.decode(await read_body(request))


def tensor_response(tensors: dict[str, Any], metadata: dict[str, Any]) -> Response:
    return Response(codec.encode(tensors, metadata), media_type=SAFETENSORS_MEDIA_TYPE)
