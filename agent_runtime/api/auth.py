"""API keys, thread ownership and CORS.

Off by default. With keys configured (``HubConfig.api_keys``: ``--api-key``, or the
``AGENTSTREAM_API_KEYS`` environment variable, comma-separated), every API route needs
``Authorization: Bearer <key>``; the stream route (the matched route
``/threads/{thread_id}/stream/{run_id}``, listed by the app under :data:`TOKEN_ROUTES`,
not any path that looks like it) also takes ``?token=<key>`` because a browser
``EventSource`` cannot send headers. ``/healthz`` and the chat page's static files stay
open (the page asks for a key when the API answers 401). A malformed ``Authorization``
header (a ``Bearer`` without a key, characters other than visible ASCII) is a ``401``
like a wrong key, never an error of the server.

A thread belongs to the key that created it: other keys get ``404`` for it and for its
messages, runs and streams, exactly as for a thread that does not exist (checked here
for every route with a ``{thread_id}``, so no handler can forget it). A thread created
while keys were off has no owner and, once keys are on, is no one's: every key gets
``404`` for it until it is adopted (``HubConfig.adopt_unowned_threads``, the CLI's
``--adopt-unowned-threads KEY``). Only a digest of the key is stored. Keys are compared
in constant time.

CORS (``HubConfig.cors_origins``) is off by default; listed origins (or ``*``) get
``Access-Control-Allow-*`` headers and preflight answers.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Awaitable, Callable

from aiohttp import hdrs, web

from ..errors import NotFound
from ..objects import Thread, key_digest
from .errors import error_response
from .keys import HUB, TOKEN_ROUTES

__all__ = [
    "OWNER",
    "auth_middleware",
    "cors_middleware",
    "key_digest",
    "owned_thread",
    "prepare_cors",
]

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

OWNER = web.RequestKey("agentstream.owner", str)
"""The digest of the request's API key, when keys are configured."""

_OPEN_PATHS = frozenset({"/", "/healthz"})
_CORS_HEADERS = "Authorization, Content-Type, Last-Event-ID, OpenAI-Beta, X-Stainless-Lang"


_VISIBLE_ASCII = re.compile(r"[\x21-\x7e]+")


class _Malformed(Exception):
    """The ``Authorization`` header cannot hold a key."""


def _presented_key(request: web.Request) -> str | None:
    """The key of ``Authorization: Bearer <key>``, else (on the stream route only) of
    ``?token=``. Raises :class:`_Malformed` for a header with characters other than
    visible ASCII and spaces, or a ``Bearer`` without exactly one key."""
    header = request.headers.get(hdrs.AUTHORIZATION)
    if header is not None:
        if not header.isascii() or not header.isprintable():
            raise _Malformed("the Authorization header holds characters other than ASCII")
        scheme, _, value = header.strip().partition(" ")
        if scheme.lower() == "bearer":
            value = value.strip()
            if not _VISIBLE_ASCII.fullmatch(value):
                raise _Malformed("expected 'Authorization: Bearer <key>'")
            return value
    if _takes_token(request):
        token = request.query.get("token")
        if token:
            return token
    return None


def _takes_token(request: web.Request) -> bool:
    """Whether the request matched a route that accepts ``?token=`` (the stream route):
    decided by the route aiohttp matched, so no other path qualifies by its spelling."""
    resource = request.match_info.route.resource
    return resource is not None and resource.canonical in request.app[TOKEN_ROUTES]


def _valid(key: str, keys: tuple[str, ...]) -> bool:
    presented = key.encode("utf-8", "surrogatepass")  # any str: never raises
    found = False
    for candidate in keys:  # no early exit: the time taken does not depend on the match
        found |= hmac.compare_digest(candidate.encode("utf-8", "surrogatepass"), presented)
    return found


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    keys = request.app[HUB].config.api_keys
    if not keys or request.method == "OPTIONS":
        return await handler(request)
    if request.path in _OPEN_PATHS or request.path.startswith("/ui/"):
        return await handler(request)
    try:
        key = _presented_key(request)
    except _Malformed as exc:
        return _unauthorized(f"Malformed API key: {exc}.")
    if key is None:
        return _unauthorized(
            "Missing API key: send 'Authorization: Bearer <key>' "
            "(or '?token=<key>' on the stream route)."
        )
    if not _valid(key, keys):
        return _unauthorized("Incorrect API key provided.")
    request[OWNER] = key_digest(key)
    thread_id = request.match_info.get("thread_id")
    if thread_id is not None:  # every thread-scoped route: the thread must be this key's
        await owned_thread(request, thread_id)
    return await handler(request)


def _unauthorized(message: str) -> web.Response:
    response = error_response(401, message, code="invalid_api_key")
    response.headers[hdrs.WWW_AUTHENTICATE] = 'Bearer realm="agentstream"'
    return response


async def owned_thread(request: web.Request, thread_id: str) -> Thread:
    """The thread, if it exists and the request's key may see it; else ``NotFound``."""
    thread = await request.app[HUB].store.get_thread(thread_id)
    owner = request.get(OWNER)
    # With keys on, a thread without an owner (made while keys were off) is no one's.
    if owner is not None and thread.owner != owner:
        raise NotFound(f"No thread found with id '{thread_id}'.", param="thread_id")
    return thread


def _allowed_origin(request: web.Request) -> str | None:
    origins = request.app[HUB].config.cors_origins
    origin = request.headers.get(hdrs.ORIGIN)
    if not origins or origin is None:
        return None
    if "*" in origins:
        return "*"
    return origin if origin in origins else None


@web.middleware
async def cors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer CORS preflights for allowed origins (other headers: :func:`prepare_cors`)."""
    if (
        request.method == "OPTIONS"
        and hdrs.ACCESS_CONTROL_REQUEST_METHOD in request.headers
        and _allowed_origin(request) is not None
    ):
        return web.Response(
            status=204,
            headers={
                hdrs.ACCESS_CONTROL_ALLOW_METHODS: "GET, POST, DELETE, OPTIONS",
                hdrs.ACCESS_CONTROL_ALLOW_HEADERS: _CORS_HEADERS,
                hdrs.ACCESS_CONTROL_MAX_AGE: "600",
            },
        )
    return await handler(request)


async def prepare_cors(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: CORS headers on every answer to an allowed origin,
    streaming ones included (their headers go out before the handler returns)."""
    origin = _allowed_origin(request)
    if origin is None:
        return
    response.headers[hdrs.ACCESS_CONTROL_ALLOW_ORIGIN] = origin
    response.headers[hdrs.ACCESS_CONTROL_EXPOSE_HEADERS] = "x-should-retry"
    if origin != "*":
        response.headers.add(hdrs.VARY, "Origin")
