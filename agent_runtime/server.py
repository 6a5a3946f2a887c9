"""Running the hub: ``serve(config)`` until stopped, with an ordered graceful shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web

from .api.app import create_app
from .config import HubConfig
from .connections import (
    ConnectionGuard,
    Listener,
    default_max_connections,
    open_files_limit,
)
from .hub import Hub
from .logs import ACCESS_LOGGER
from .models.base import ModelProvider
from .store import SQLiteStore, Store

__all__ = ["Server", "access_log_middleware", "serve"]

logger = logging.getLogger(__name__)

CLIENT_GONE = 499
"""The status an access log line shows for a request whose client went away first."""

_Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def access_log_middleware(request: web.Request, handler: _Handler) -> web.StreamResponse:
    """Log ``METHOD path status duration`` at INFO (logger ``agentstream.access``) when
    the request ends: a stream (SSE) when it ends, so its duration is the stream's. A
    request cancelled because its client went away (``handler_cancellation``) is logged
    with :data:`CLIENT_GONE`, then the cancellation goes on."""
    started = time.monotonic()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    except asyncio.CancelledError:
        status = CLIENT_GONE
        raise
    finally:
        logging.getLogger(ACCESS_LOGGER).info(
            "%s %s %d %.1fms",
            request.method,
            request.path_qs,
            status,
            (time.monotonic() - started) * 1000,
        )


class Server:
    """A started hub on a real socket. ``async with Server(config) as s: s.url``.

    ``providers``: extra model names served by the given providers (see
    :class:`~agent_runtime.hub.Hub`). ``access_log``: a line per request
    (:func:`access_log_middleware`).
    """

    def __init__(
        self,
        config: HubConfig,
        *,
        providers: Mapping[str, ModelProvider] | None = None,
        store: Store | None = None,
        access_log: bool = True,
    ) -> None:
        self.config = config
        self.access_log = access_log
        self.providers = dict(providers or {})
        self.store = store
        """An opened store for the hub (closed with it), instead of the config's."""
        self.app: web.Application | None = None
        self.runner: web.AppRunner | None = None
        self.connections: ConnectionGuard | None = None
        self.port: int = config.port
        self._listener: Listener | None = None

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    async def start(self) -> None:
        """Listen. Connections go through a :class:`ConnectionGuard` (head timeout,
        connection cap) and a :class:`Listener` (accept errors paced and counted); see
        :mod:`agent_runtime.connections`."""
        config = self.config
        self.app = create_app(Hub(config, providers=self.providers, store=self.store))
        limit = open_files_limit()
        max_connections = config.max_connections
        if max_connections is None:
            max_connections = default_max_connections(limit)
        elif limit is not None and max_connections >= limit:
            logger.warning(
                "--max-connections %d is not below the open-files limit (%d): accept() "
                "will fail before the cap is reached",
                max_connections,
                limit,
            )
        guard = ConnectionGuard(
            max_connections=max_connections, header_timeout=config.header_timeout
        )
        self.app.middlewares.insert(0, guard.middleware)
        if self.access_log:  # outermost: it times and sees every answer
            self.app.middlewares.insert(0, access_log_middleware)
        self.runner = web.AppRunner(
            self.app,
            handler_cancellation=True,
            shutdown_timeout=config.shutdown_timeout,
            access_log=None,
            keepalive_timeout=config.idle_timeout,
        )
        await self.runner.setup()
        web_server = self.runner.server
        assert web_server is not None
        self._listener = Listener(guard.protocol_factory(web_server), guard)
        await self._listener.start(config.host, config.port)
        self.connections = guard
        self.port = self._listener.port
        logger.info(
            "connections: at most %s open (open-files limit %s), %g s for a request head, "
            "%g s idle",
            max_connections,
            limit,
            config.header_timeout,
            config.idle_timeout,
        )

    async def aclose(self) -> None:
        """Stop listening, end live runs (subscribers receive their terminal events),
        then close the remaining connections; bounded by ``config.shutdown_timeout``."""
        if self._listener is not None:
            await self._listener.aclose()
            self._listener = None
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    async def __aenter__(self) -> Server:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


async def serve(
    config: HubConfig, *, ready: asyncio.Event | None = None, access_log: bool = True
) -> None:
    """Serve until SIGINT/SIGTERM (or cancellation), then shut down gracefully: stop
    accepting connections, let live runs finish within ``config.shutdown_grace``, end the
    rest with their terminal events, let subscribers read to the end, close the store.
    A second signal during that exits at once.

    A SQLite store is opened first, before anything else is loaded or logged: a data
    directory locked by another process or unusable raises
    :class:`~agent_runtime.errors.DataDirError` at once (``agentstream serve`` prints it
    as one line and exits 2)."""
    store: Store | None = None
    if config.store == "sqlite" and config.redis is None:
        store = await SQLiteStore.open(config.database_path)
    server = Server(config, store=store, access_log=access_log)
    try:
        await server.start()
    except BaseException:
        if store is not None:
            await store.aclose()
        raise
    logger.info("agentstream listening on %s", server.url)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        if stop.is_set():
            logger.warning("second %s: exiting at once", sig.name)
            logging.shutdown()
            os._exit(128 + sig.value)
        logger.info("%s: shutting down gracefully (send it again to exit at once)", sig.name)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, on_signal, sig)
    if ready is not None:
        ready.set()
    try:
        await stop.wait()
    finally:
        await server.aclose()
        logger.info("stopped")
