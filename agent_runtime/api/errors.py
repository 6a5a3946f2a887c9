"""OpenAI-style error answers: ``{"error": {"message", "type", "param", "code"}}``.

The one place that maps exceptions to HTTP statuses: :data:`ERROR_TABLE`, an ordered table
of the runtime's and the broker's exception classes (the first class an exception is an
instance of wins). Domain errors carry what went wrong (message, ``param``, ``code``,
``retry_after``, a provider's ``upstream_status``), never an HTTP status.

Every error answer carries ``x-should-retry: false`` unless retrying is genuinely safe
(``429`` for a full queue and ``503`` while shutting down are not retried either: the
openai SDK retries 408/409/429/5xx and would otherwise start duplicate runs; only the
broker's unreachable backend is retried). A ``429`` of a limit that frees itself says when
to try again in ``retry-after`` (seconds).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import NamedTuple

from aiohttp import web

from broker import (
    BackendUnavailable,
    BrokerError,
    InvalidCursor,
    LimitExceeded,
    StreamNotFound,
)

from ..errors import (
    AgentLoadError,
    AgentRuntimeError,
    Conflict,
    InvalidRequest,
    LimitReached,
    NotFound,
    PayloadTooLarge,
    ProviderError,
    RunCancelled,
    ServiceUnavailable,
    UnsupportedOperation,
)

__all__ = [
    "ERROR_TABLE",
    "ErrorKind",
    "error_answer",
    "error_kind",
    "error_middleware",
    "error_payload",
    "error_response",
]

logger = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ErrorKind(NamedTuple):
    """How an exception class is answered: HTTP status, OpenAI error ``type``, and whether
    the client may retry (``x-should-retry``)."""

    status: int
    type: str
    retry: bool = False


ERROR_TABLE: tuple[tuple[type[BaseException], ErrorKind], ...] = (
    (InvalidRequest, ErrorKind(400, "invalid_request_error")),
    (AgentLoadError, ErrorKind(400, "invalid_request_error")),
    (UnsupportedOperation, ErrorKind(400, "invalid_request_error")),
    (NotFound, ErrorKind(404, "not_found_error")),
    (Conflict, ErrorKind(409, "conflict_error")),
    (RunCancelled, ErrorKind(409, "conflict_error")),
    (PayloadTooLarge, ErrorKind(413, "invalid_request_error")),
    (LimitReached, ErrorKind(429, "rate_limit_error")),
    (ServiceUnavailable, ErrorKind(503, "server_error")),  # StorageUnavailable too
    (ProviderError, ErrorKind(502, "provider_error")),  # or the provider's own status
    (InvalidCursor, ErrorKind(400, "invalid_request_error")),
    (StreamNotFound, ErrorKind(404, "not_found_error")),
    (LimitExceeded, ErrorKind(429, "rate_limit_error")),
    (BackendUnavailable, ErrorKind(503, "server_error", retry=True)),
    (BrokerError, ErrorKind(400, "invalid_request_error")),
)
"""Exception classes to answers, most specific first; anything else is a ``500``."""

_INTERNAL = ErrorKind(500, "server_error")


def error_kind(exc: BaseException) -> ErrorKind:
    """The answer to ``exc``: the first row of :data:`ERROR_TABLE` it matches (a provider
    error keeps the provider's status when it answered one), else ``500``."""
    for cls, kind in ERROR_TABLE:
        if isinstance(exc, cls):
            if isinstance(exc, ProviderError) and exc.upstream_status is not None:
                return kind._replace(status=exc.upstream_status)
            return kind
    return _INTERNAL


def error_payload(exc: BaseException) -> dict[str, str | None]:
    """The ``error`` object of an answer to ``exc`` (also sent inside a stream)."""
    kind = error_kind(exc)
    if isinstance(exc, AgentRuntimeError):
        return {"message": exc.message, "type": kind.type, "param": exc.param, "code": exc.code}
    if isinstance(exc, BrokerError):
        param = exc.param if isinstance(exc, InvalidCursor) else None
        if isinstance(exc, LimitExceeded):
            param = exc.limit
        return {"message": str(exc), "type": kind.type, "param": param, "code": None}
    return {"message": "internal server error", "type": kind.type, "param": None, "code": None}


def error_response(
    status: int,
    message: str,
    *,
    type: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
    retry: bool = False,
) -> web.Response:
    """The one builder of an OpenAI-style error body."""
    body = {"error": {"message": message, "type": type, "param": param, "code": code}}
    headers = {"x-should-retry": "true" if retry else "false"}
    return web.json_response(body, status=status, headers=headers)


def error_answer(exc: BaseException) -> web.Response:
    """The JSON answer to ``exc`` (a runtime or broker error, an aiohttp HTTP error, or
    anything else: logged, then a ``500``)."""
    if isinstance(exc, AgentRuntimeError | BrokerError):
        kind = error_kind(exc)
        error = error_payload(exc)
        response = error_response(
            kind.status,
            str(error["message"]),
            type=kind.type,
            param=error["param"],
            code=error["code"],
            retry=kind.retry,
        )
        if isinstance(exc, LimitReached) and exc.retry_after is not None:
            response.headers["retry-after"] = str(exc.retry_after)
        return response
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return error_response(
            413,
            f"{(exc.text or exc.reason).strip()} (the limit is set with --max-body-bytes)",
            param="max_body_bytes",
            code="request_too_large",
        )
    if isinstance(exc, web.HTTPException):
        kind_name = "not_found_error" if exc.status == 404 else "invalid_request_error"
        if exc.status >= 500:
            kind_name = "server_error"
        return error_response(exc.status, exc.reason, type=kind_name)
    logger.exception("unhandled error", exc_info=exc)
    return error_response(500, "internal server error", type="server_error")


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every error raised by a handler into an OpenAI-style JSON answer."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_answer(exc)
    except Exception as exc:
        return error_answer(exc)
