"""One table from exceptions to HTTP answers (``agent_runtime.api.errors``), checked over a
real socket: each error a handler raises is answered with its status, type and headers."""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from agent_runtime import errors
from agent_runtime.api.errors import ERROR_TABLE, error_middleware
from broker import BackendUnavailable, InvalidCursor, LimitExceeded, StreamNotFound

from ..conftest import within

CASES: list[tuple[BaseException, int, str, str | None, str]] = [
    (errors.InvalidRequest("bad", param="x"), 400, "invalid_request_error", "x", "false"),
    (errors.AgentLoadError("no file"), 400, "invalid_request_error", None, "false"),
    (errors.UnsupportedOperation("nope"), 400, "invalid_request_error", None, "false"),
    (errors.NotFound("who", param="run_id"), 404, "not_found_error", "run_id", "false"),
    (errors.Conflict("busy"), 409, "conflict_error", None, "false"),
    (errors.RunCancelled("the run was cancelled"), 409, "conflict_error", None, "false"),
    (errors.PayloadTooLarge("big"), 413, "invalid_request_error", None, "false"),
    (
        errors.LimitReached("full", param="max_queued_runs"),
        429,
        "rate_limit_error",
        "max_queued_runs",
        "false",
    ),
    (errors.ServiceUnavailable("closing"), 503, "server_error", None, "false"),
    (errors.StorageUnavailable("disk full"), 503, "server_error", None, "false"),
    (errors.ProviderError("down"), 502, "provider_error", None, "false"),
    (errors.ProviderError("slow", upstream_status=429), 429, "provider_error", None, "false"),
    (errors.AgentRuntimeError("odd"), 500, "server_error", None, "false"),
    (
        InvalidCursor("ahead", param="Last-Event-ID"),
        400,
        "invalid_request_error",
        "Last-Event-ID",
        "false",
    ),
    (StreamNotFound("gone"), 404, "not_found_error", None, "false"),
    (
        LimitExceeded("many", limit="max_subscribers"),
        429,
        "rate_limit_error",
        "max_subscribers",
        "false",
    ),
    (BackendUnavailable("redis down"), 503, "server_error", None, "true"),
]


@pytest.fixture
async def raising() -> AsyncIterator[tuple[str, dict[str, BaseException]]]:
    """A real server whose ``GET /raise/{i}`` raises the ``i``-th error of ``CASES``."""
    table = {str(i): case[0] for i, case in enumerate(CASES)}

    async def handler(request: web.Request) -> web.StreamResponse:
        raise table[request.match_info["i"]]

    app = web.Application(middlewares=[error_middleware])
    app.router.add_get("/raise/{i}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    yield f"http://{host}:{port}", table
    await runner.cleanup()


async def test_every_error_is_answered_from_the_table(
    raising: tuple[str, dict[str, BaseException]],
) -> None:
    base, _table = raising
    async with aiohttp.ClientSession() as session:
        for i, (exc, status, kind, param, retry) in enumerate(CASES):
            async with within(), session.get(f"{base}/raise/{i}") as resp:
                body = await resp.json()
                assert (resp.status, body["error"]["type"]) == (status, kind), exc
                assert body["error"]["param"] == param
                assert body["error"]["message"] == str(exc)
                assert resp.headers["x-should-retry"] == retry


async def test_a_limit_that_frees_itself_says_when_to_retry(
    raising: tuple[str, dict[str, BaseException]],
) -> None:
    base, table = raising
    table["x"] = errors.LimitReached("queue full", retry_after=3)
    async with aiohttp.ClientSession() as session, within():
        async with session.get(f"{base}/raise/x") as resp:
            assert resp.status == 429 and resp.headers["retry-after"] == "3"


def test_domain_errors_carry_no_http_status() -> None:
    classes = {cls for cls, _kind in ERROR_TABLE}
    assert errors.RunCancelled in classes
    for cls in vars(errors).values():
        if isinstance(cls, type) and issubclass(cls, errors.AgentRuntimeError):
            assert not hasattr(cls, "status"), cls
