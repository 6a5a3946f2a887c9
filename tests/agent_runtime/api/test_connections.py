"""Connection hygiene: request-head timeout, idle keep-alive timeout, connection cap,
rate-limited accept errors (see :mod:`agent_runtime.connections`).

In-process hubs (real sockets) check each rule; ``agentstream serve`` subprocesses under
a lowered open-files limit check the floods: half-sent heads beyond the cap (healthz is
answered, the excess gets ``503``, the rest is closed by the head timeout) and beyond the
descriptors themselves (accept errors are one line per interval, not a traceback each).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from agent_runtime.connections import default_max_connections

from ..conftest import UNIT, StartHub, eventually, within
from ..provider_stub import ServeProcess, call

HALF_HEAD = b"GET /healthz HTTP/1.1\r\nHost: flood\r\nX-Slow: "
"""A request head that never ends."""
HEALTH = b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n"
QUIET_MODEL = "simulated:tokens=5,rate=0,delay=60"
"""A run that stays live and silent: its stream carries nothing but keepalives."""

Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class Sockets:
    """Raw client connections, all closed at the test's end (whatever happened)."""

    def __init__(self) -> None:
        self.writers: list[asyncio.StreamWriter] = []

    async def connect(self, port: int, payload: bytes = b"") -> Conn:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        self.writers.append(writer)
        if payload:
            writer.write(payload)
            await writer.drain()
        return reader, writer

    async def close(self) -> None:
        for writer in self.writers:
            writer.close()
        for writer in self.writers:
            with contextlib.suppress(OSError):
                await writer.wait_closed()


@pytest.fixture
async def sockets() -> AsyncIterator[Sockets]:
    opened = Sockets()
    try:
        yield opened
    finally:
        await opened.close()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 response with a ``Content-Length``: status, headers, body."""
    head = await reader.readuntil(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {
        name.strip().lower(): value.strip()
        for name, _, value in (line.partition(":") for line in lines if line)
    }
    body = await reader.readexactly(int(headers["content-length"]))
    return int(status_line.split()[1]), headers, body


def split_response(data: bytes) -> tuple[int, dict[str, str], bytes]:
    """A whole HTTP/1.1 response as read from the socket: status, headers, body."""
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {
        name.strip().lower(): value.strip()
        for name, _, value in (line.partition(":") for line in lines)
    }
    assert len(body) == int(headers["content-length"]), data
    return int(status_line.split()[1]), headers, body


async def until_closed(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection."""
    data = b""
    while chunk := await reader.read(65536):
        data += chunk
    return data


def check_limit_error(status: int, headers: Any, body: bytes, limit: int) -> None:
    assert status == 503, body
    error = json.loads(body)["error"]
    assert error["code"] == "connection_limit" and error["param"] == "max_connections"
    assert error["type"] == "server_error"
    assert f"connection limit ({limit} connections" in error["message"]
    assert "--max-connections" in error["message"]
    assert headers["x-should-retry"] == "true"


async def test_a_silent_or_half_sent_head_is_closed_after_the_header_timeout(
    start_hub: StartHub, sockets: Sockets
) -> None:
    timeout = 0.3 * UNIT
    client = await start_hub(header_timeout=timeout)
    started = time.monotonic()
    silent = await sockets.connect(client.server.port)
    half = await sockets.connect(client.server.port, HALF_HEAD)
    prompt = await sockets.connect(client.server.port, HEALTH)
    status, _, body = await read_response(prompt[0])
    assert status == 200 and json.loads(body)["status"] == "ok"
    async with within(5):
        assert await until_closed(silent[0]) == b""
        assert await until_closed(half[0]) == b""
    assert time.monotonic() - started >= timeout * 0.9
    # A connection whose request head arrived is not closed by the timer.
    prompt[1].write(HEALTH)
    assert (await read_response(prompt[0]))[0] == 200


async def test_a_complete_head_is_served_however_late_a_busy_loop_starts_it(
    start_hub: StartHub, sockets: Sockets
) -> None:
    """The head timer guards the bytes, not the loop: a head that arrived whole is served
    even if the loop, busy elsewhere, starts its handler after the timer's deadline."""
    timeout = 0.2 * UNIT
    client = await start_hub(header_timeout=timeout)
    reader, writer = await sockets.connect(client.server.port)
    writer.write(HEALTH)
    await writer.drain()  # in the server's socket buffer now; the server has not read it
    time.sleep(2 * timeout)  # noqa: ASYNC251 - the point: the whole loop is busy meanwhile
    async with within(5):
        status, _, body = await read_response(reader)
    assert status == 200 and json.loads(body)["status"] == "ok"


async def test_an_idle_keep_alive_connection_is_closed_after_the_idle_timeout(
    start_hub: StartHub, sockets: Sockets
) -> None:
    idle = 0.4 * UNIT
    client = await start_hub(idle_timeout=idle, header_timeout=30 * UNIT)
    reader, _ = await sockets.connect(client.server.port, HEALTH)
    assert (await read_response(reader))[0] == 200
    answered = time.monotonic()
    async with within(5):
        assert await until_closed(reader) == b""
    assert time.monotonic() - answered >= idle * 0.9


async def test_a_stream_with_keepalives_outlives_both_timeouts(start_hub: StartHub) -> None:
    timeout = 0.2 * UNIT
    client = await start_hub(
        header_timeout=timeout,
        idle_timeout=timeout,
        broker={"keepalive": 0.1 * UNIT},
        model=QUIET_MODEL,
    )
    thread_id, run_id = await client.start()
    started = time.monotonic()
    async with client.open_stream(thread_id, run_id) as response:
        assert response.status == 200
        keepalives = 0
        async with within(10):
            while time.monotonic() - started < 5 * timeout or keepalives < 3:
                line = await response.content.readline()
                assert line, "the stream was cut"
                keepalives += line.startswith(b":")
    assert (await client.run(thread_id, run_id))["status"] == "in_progress"


async def test_at_the_cap_the_longest_waiting_connection_makes_room(
    start_hub: StartHub, sockets: Sockets
) -> None:
    client = await start_hub(max_connections=4, header_timeout=30 * UNIT)
    port = client.server.port
    silent = [await sockets.connect(port) for _ in range(4)]
    prompt = await sockets.connect(port, HEALTH)
    assert (await read_response(prompt[0]))[0] == 200
    async with within(5):
        status, headers, body = await read_response(silent[0][0])
        check_limit_error(status, headers, body, 4)
        assert await until_closed(silent[0][0]) == b""


async def test_busy_connections_at_the_cap_get_503_and_healthz_still_answers(
    start_hub: StartHub,
) -> None:
    limit = 8  # one kept for /healthz
    client = await start_hub(max_connections=limit, model=QUIET_MODEL)
    thread_id, run_id = await client.start()
    url = f"{client.url}/v1/threads/{thread_id}/stream/{run_id}"
    async with aiohttp.ClientSession() as session:
        streams = [await session.get(url) for _ in range(limit - 1)]
        try:
            assert [s.status for s in streams] == [200] * (limit - 1)
            reply = await client.request("GET", "/v1/agents")
            check_limit_error(reply.status, reply.headers, reply.body, limit)
            reply = await client.request("GET", "/healthz")
            assert reply.status == 200, reply.body
            async with within(5):  # the streams are untouched
                for stream in streams:
                    while not (line := await stream.content.readline()).startswith(b"id: "):
                        assert line, "a stream was cut"
        finally:
            for stream in streams:
                stream.close()
    reply = await client.request("GET", "/v1/agents")  # room again
    assert reply.status == 200


def serve_limit(serve: ServeProcess) -> int:
    found = re.search(r"connections: at most (\d+) open", serve.output)
    assert found, serve.output
    return int(found.group(1))


async def test_a_half_sent_head_flood_beyond_the_cap(
    session: aiohttp.ClientSession, sockets: Sockets
) -> None:
    nofile = 128
    header_timeout = 1 * UNIT
    serve = ServeProcess(
        "--store", "memory", "--header-timeout", str(header_timeout), nofile=nofile
    )
    try:
        url = await serve.start()
        limit = serve_limit(serve)
        assert limit == default_max_connections(nofile)
        flood = [await sockets.connect(serve.port, HALF_HEAD) for _ in range(limit + 40)]
        async with within(5):
            health = await call(session, "GET", f"{url}/healthz")
        assert health["status"] == "ok"
        refused = 0
        async with within(header_timeout / UNIT + 5):
            for reader, _ in flood:
                data = await until_closed(reader)
                if data:
                    check_limit_error(*split_response(data), limit)
                    refused += 1
        # Each connection beyond the cap (the healthz one too) replaced the oldest.
        assert refused == len(flood) + 1 - limit, refused
        assert (await call(session, "GET", f"{url}/healthz"))["status"] == "ok"
        assert "Too many open files" not in serve.output  # the cap kept it within its files
        assert serve.log_bytes < 4096, serve.output
    finally:
        await serve.aclose()


async def test_a_flood_beyond_the_open_files_limit_logs_one_line_per_interval(
    session: aiohttp.ClientSession, sockets: Sockets
) -> None:
    header_timeout = 1 * UNIT
    serve = ServeProcess(
        "--store",
        "memory",
        "--max-connections",
        "1000",
        "--header-timeout",
        str(header_timeout),
        nofile=64,
    )
    try:
        url = await serve.start()
        flood = [await sockets.connect(serve.port, HALF_HEAD) for _ in range(100)]
        await eventually(
            lambda: "Too many open files" in serve.output, what="accept fails", units=5
        )
        # The head timeout frees descriptors: the hub accepts and answers again.
        async with within(header_timeout / UNIT + 10):
            health = await call(session, "GET", f"{url}/healthz")
        assert health["status"] == "ok"
        async with within(2 * header_timeout / UNIT + 5):
            for reader, _ in flood:
                assert await until_closed(reader) == b""
        assert "Traceback" not in serve.output
        assert "cannot accept connections: [Errno 24] Too many open files" in serve.output
        assert serve.output.count("cannot accept connections") <= 3, serve.output
        assert serve.log_bytes < 4096, (serve.log_bytes, serve.output)
    finally:
        await serve.aclose()
