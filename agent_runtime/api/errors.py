"""OpenAI-style error answers: ``{"error": {"message", "type", "param", "code"}}``.

Every error answer carries ``x-should-retry: false`` unless retrying is genuinely safe
(``429`` for a full queue and ``503`` while shutting down are not retried either: the
openai SDK retries 408/409/429/5xx and would otherwise start duplicate runs). A ``429``
of a limit that frees itself says when to try again in ``retry-after`` (seconds).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from broker import BrokerError, broker_error_response

from ..errors import AgentRuntimeError, LimitReached

__all__ = ["error_middleware", "error_response"]

logger = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(
    status: int,
    message: str,
    *,
    type: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
) -> web.Response:
    body = {"error": {"message": message, "type": type, "param": param, "code": code}}
    return web.json_response(body, status=status, headers={"x-should-retry": "false"})


def _from_exception(exc: BaseException) -> web.Response:
    if isinstance(exc, AgentRuntimeError):
        response = error_response(
            exc.status, exc.message, type=exc.type, param=exc.param, code=exc.code
        )
        if isinstance(exc, LimitReached) and exc.retry_after is not None:
            response.headers["retry-after"] = str(exc.retry_after)
        return response
    if isinstance(exc, BrokerError):
        return broker_error_response(exc)
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return error_response(
            413,
            f"{(exc.text or exc.reason).strip()} (the limit is set with --max-body-bytes)",
            param="max_body_bytes",
            code="request_too_large",
        )
    if isinstance(exc, web.HTTPException):
        kind = "not_found_error" if exc.status == 404 else "invalid_request_error"
        if exc.status >= 500:
            kind = "server_error"
        return error_response(exc.status, exc.reason, type=kind)
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
        return _from_exception(exc)
    except (AgentRuntimeError, BrokerError) as exc:
        return _from_exception(exc)
    except Exception as exc:
        return _from_exception(exc)
