"""Fixtures of the broker suite: a real aiohttp server and raw HTTP clients.

Every wait in this suite is bounded by a small multiple of ``helpers.UNIT`` seconds. Raise
``AGENTSTREAM_TEST_UNIT`` (e.g. to ``3``) on a slow or loaded machine.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp import web

import broker
from agent_runtime.api.errors import error_answer

from .helpers import UNIT, RawHTTP, Server

AppSetup = Callable[[web.Application], None]
Serve = Callable[..., Awaitable[Server]]
OpenRaw = Callable[..., Awaitable[RawHTTP]]


@pytest.fixture
async def serve(caplog: pytest.LogCaptureFixture) -> AsyncIterator[Serve]:
    """``await serve(registry, setup=None)``: a real aiohttp server on 127.0.0.1 (port 0)
    serving ``GET /s/{key}`` with ``broker.make_stream_handler(registry)``, its errors
    answered as the hub answers them (``agent_runtime.api.errors.error_answer``).

    On teardown the registry is shut down first (every handler ends), then the runner; the
    test fails if the server logged an error (an exception escaping a handler).
    """
    caplog.set_level(logging.INFO)
    started: list[tuple[web.AppRunner, broker.Registry]] = []

    async def start(registry: broker.Registry, setup: AppSetup | None = None) -> Server:
        app = web.Application()
        app.router.add_get("/s/{key}", broker.make_stream_handler(registry, on_error=error_answer))
        if setup is not None:
            setup(app)
        runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=2 * UNIT)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        started.append((runner, registry))
        host, port = runner.addresses[0][:2]
        return Server(host=host, port=port, registry=registry, runner=runner)

    yield start
    for runner, registry in reversed(started):
        await registry.aclose()
        await runner.cleanup()
    errors = [r for r in caplog.get_records("call") if r.levelno >= logging.ERROR]
    assert not errors, "server logged errors:\n" + "\n".join(
        f"{r.name}: {r.getMessage()}" for r in errors
    )


@pytest.fixture
async def open_raw() -> AsyncIterator[OpenRaw]:
    """``await open_raw(server, path, headers, rcvbuf=…, limit=…, version=…)``: a raw HTTP
    client that has sent its request and read the response head; closed on teardown."""
    clients: list[RawHTTP] = []

    async def opener(
        server: Server,
        path: str,
        headers: dict[str, str] | None = None,
        *,
        rcvbuf: int | None = None,
        limit: int = 2**16,
        version: str = "1.1",
    ) -> RawHTTP:
        client = await RawHTTP.connect(server, rcvbuf=rcvbuf, limit=limit)
        clients.append(client)
        return await client.request(path, headers, version=version)

    yield opener
    for client in clients:
        await client.aclose()
