"""The aiohttp application: ``create_app(hub)`` wires a hub's HTTP API.

Every resource module contributes ``routes()`` relative to ``/v1``; each is mounted under
``/v1`` and mirrored under ``/api/v1`` (what browser clients such as the chat page call).
Errors become OpenAI-style JSON answers (``error_middleware``). Serve the app with
``handler_cancellation=True`` (see :func:`agent_runtime.server.run`) so that a subscriber
going away releases its subscription at once.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from ..hub import Hub
from . import chat as chat_api
from . import meta, metrics, responses, runs, threads
from .auth import auth_middleware, cors_middleware, prepare_cors
from .errors import error_middleware
from .keys import HUB, TOKEN_ROUTES

__all__ = ["HUB", "create_app"]

PREFIXES = ("/v1", "/api/v1")
UI_DIR = Path(__file__).resolve().parent.parent / "ui"
"""The chat page's static files (``agent_runtime/ui``), served at ``/`` and ``/ui/``."""


def create_app(hub: Hub) -> web.Application:
    """Build the application serving ``hub`` (which it starts and closes with itself).
    The hub is made by :class:`~agent_runtime.server.Server`, the one place that builds
    one for serving."""
    config = hub.config
    app = web.Application(
        client_max_size=config.max_body_bytes,
        middlewares=[error_middleware, cors_middleware, auth_middleware],
    )
    app.on_response_prepare.append(prepare_cors)
    app[HUB] = hub
    responses.install(app, hub)
    app[TOKEN_ROUTES] = frozenset(prefix + runs.STREAM_PATH for prefix in PREFIXES)
    table = [
        *meta.routes(),
        *threads.routes(),
        *runs.routes(),
        *chat_api.routes(hub.models, hub.catalog),
        *responses.routes(),
    ]
    for prefix in PREFIXES:
        for method, path, handler in table:
            app.router.add_route(method, prefix + path, handler)
    app.router.add_get("/healthz", meta.healthz)
    metrics.install(app, hub)
    responses.install_metrics(app)
    app.router.add_get("/metrics", metrics.metrics)
    app.router.add_get("/", _ui_index)
    app.router.add_static("/ui/", UI_DIR, name="ui")
    app.on_startup.append(_startup)
    app.on_shutdown.append(_shutdown)
    return app


async def _ui_index(request: web.Request) -> web.FileResponse:
    """The chat page; its state is in the query (``?agent=NAME&thread=ID``)."""
    return web.FileResponse(UI_DIR / "index.html", headers={"Cache-Control": "no-cache"})


async def _startup(app: web.Application) -> None:
    await app[HUB].start()


async def _shutdown(app: web.Application) -> None:
    """Ordered: end live runs (their streams close, subscribers finish), then the rest."""
    await app[HUB].aclose()
