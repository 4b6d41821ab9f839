"""Exceptions shared by services and clients.

    LasroError
     ├── WireError                 bad input; carries an HTTP status and a stable code
     │    ├── MalformedBody        400  body is not what its Content-Type says
     │    ├── InvalidInput         422  well-formed but wrong: shape, dtype, NaN, counts
     │    ├── UnknownName          404  unknown reward / head / field value
     │    ├── Unauthorized         401  missing or wrong bearer token
     │    ├── PayloadTooLarge      413  body, batch or image over a configured limit
     │    ├── UnsupportedMedia     415  Content-Type we do not speak
     │    └── Overloaded           429  queue full; retry later
     └── ServiceError              raised by clients for a non-2xx answer (status, code, message)
          └── ServiceUnavailable   connect errors / 503 after retries are exhausted
"""

from __future__ import annotations


class LasroError(Exception):
    """Base of every error this project raises on purpose."""


class WireError(LasroError):
    status: int = 400
    code: str = "bad_request"

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status


class MalformedBody(WireError):
    status, code = 400, "malformed_body"


class InvalidInput(WireError):
    status, code = 422, "invalid_input"


class UnknownName(WireError):
    status, code = 404, "unknown_name"


class Unauthorized(WireError):
    status, code = 401, "unauthorized"


class PayloadTooLarge(WireError):
    status, code = 413, "payload_too_large"


class UnsupportedMedia(WireError):
    status, code = 415, "unsupported_media_type"


class Overloaded(WireError):
    status, code = 429, "overloaded"


class ServiceError(LasroError):
    """A service answered with an error; `status`, `code` and `message` come from its body."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


class ServiceUnavailable(ServiceError):
    """The service could not be reached (or kept answering 503/429) after all retries."""
