"""Soak: a real ``agentstream serve`` process under many subscriber connect/disconnect
cycles and many whole runs keeps its memory flat and leaves nothing behind.

One load is ``AGENTSTREAM_SOAK_CYCLES`` (default 10,000) subscribers connecting to a live
run's stream on raw sockets, reading the first bytes and going away (half closing, half
resetting), ~100 at a time, alongside ``AGENTSTREAM_SOAK_RUNS`` (default 2,000) runs
(thread, run, the stream read to its end, the thread deleted: the memory store keeps
every thread it is given, by design), ~50 at a time. After a warm-up (1,000 cycles and
200 runs, the same shape), the load is applied twice; each time the hub must come back
to quiet (no subscriber, finished streams past their ``--retention``, no more asyncio
tasks than after the warm-up, per ``/healthz``), and VmRSS after the second load must be
within 10% of its level after the first.

Why not against the warm-up's level: the first full load lifts VmRSS by about 20-30%
over the smaller warm-up and it stays there (a third or fourth load does not move it;
``tracemalloc`` in an in-process hub shows Python-level memory flat across loads). That
is the allocator's high-water mark for the bigger load's peak, not a leak; a leak grows
with every load, which the second load catches. The figures are printed.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agent_runtime.agents import bundled_examples_dir

from ..conftest import UNIT, write_agent
from ..provider_stub import ServeProcess
from ..sse import parse_events

CYCLES = int(os.environ.get("AGENTSTREAM_SOAK_CYCLES", "10000"))
RUNS = int(os.environ.get("AGENTSTREAM_SOAK_RUNS", "2000"))
WARM_CYCLES = min(CYCLES, 1000)
WARM_RUNS = min(RUNS, 200)
"""The warm-up: enough for the process to reach its steady size (about 200 runs: every
synchronous agent runs in a thread of its own, and the allocator's per-thread arenas grow
to their working size once)."""
CYCLE_CONCURRENCY = 100
RUN_CONCURRENCY = 50
RETENTION = 1.0
"""Seconds finished streams are retained (``--retention``): short, so the hub quiesces."""
GROWTH = 0.10
"""How much VmRSS may grow over the second full load."""
FIRST_LOAD_GROWTH = 0.50
"""How much VmRSS may grow from the warm-up's level over the first full load (the
allocator's high-water mark rises to what the bigger load's peak needed)."""

# Live until cancelled, without a model: the stream the subscribers cycle on.
WAITER = """
import asyncio

async def run(env):
    await env.aadd_reply("I shall wait here, and you may come and go.")
    await asyncio.Event().wait()
"""


@dataclass
class Load:
    cycles: int = 0
    runs: int = 0
    events: int = 0


async def metrics(session: aiohttp.ClientSession, url: str) -> dict[str, float]:
    """The Prometheus samples of ``/metrics``, labelled ones summed under their name."""
    async with session.get(f"{url}/metrics") as response:
        text = await response.text()
    out: dict[str, float] = {}
    for line in text.splitlines():
        found = re.fullmatch(r"([a-z_]+)(\{[^}]*\})? ([0-9.e+-]+)", line)
        if found:
            out[found.group(1)] = out.get(found.group(1), 0.0) + float(found.group(3))
    return out


async def healthz(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with session.get(f"{url}/healthz") as response:
        assert response.status == 200
        body: dict[str, Any] = await response.json()
        return body


async def subscriber_cycle(port: int, path: str, reset: bool) -> None:
    """Connect, read the answer's head and first bytes of the stream, go away."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        assert await reader.read(1)
    finally:
        if reset:
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
        else:
            writer.close()
        try:
            await writer.wait_closed()
        except ConnectionError:
            pass


async def cycles(port: int, path: str, count: int, load: Load) -> None:
    queue = iter(range(count))

    async def worker() -> None:
        for index in queue:
            await subscriber_cycle(port, path, reset=bool(index % 2))
            load.cycles += 1

    await asyncio.gather(*(worker() for _ in range(CYCLE_CONCURRENCY)))


async def whole_runs(url: str, count: int, load: Load) -> None:
    """``count`` runs, ``RUN_CONCURRENCY`` at a time, over a session closed at the end (so
    that its kept-alive connections, and their handlers in the hub, are gone)."""
    queue = iter(range(count))
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=RUN_CONCURRENCY),
        timeout=aiohttp.ClientTimeout(total=30 * UNIT),
    )

    async def one(index: int) -> None:
        body = {"messages": [{"role": "user", "content": f"What is virtue, {index}?"}]}
        async with session.post(f"{url}/v1/threads", json=body) as response:
            assert response.status == 200, await response.text()
            thread_id = (await response.json())["id"]
        async with session.post(
            f"{url}/v1/threads/{thread_id}/runs", json={"assistant_id": "streaming-example"}
        ) as response:
            assert response.status == 200, await response.text()
            run_id = (await response.json())["id"]
        async with session.get(f"{url}/v1/threads/{thread_id}/stream/{run_id}") as response:
            assert response.status == 200
            events = parse_events(await response.read())
        assert events[-1].name == "thread.run.completed", events[-1]
        load.events += len(events)
        async with session.delete(f"{url}/v1/threads/{thread_id}") as response:
            assert response.status == 200, await response.text()
        load.runs += 1

    async def worker() -> None:
        for index in queue:
            await one(index)

    try:
        await asyncio.gather(*(worker() for _ in range(RUN_CONCURRENCY)))
    finally:
        await session.close()


async def quiesce(
    session: aiohttp.ClientSession, url: str, tasks_at_most: int | None = None
) -> dict[str, Any]:
    """Wait (bounded) until only the waiter's run and stream are left, without
    subscribers, and the task count is steady (and at most ``tasks_at_most``); the last
    ``/healthz`` answer."""
    health: dict[str, Any] = {}
    previous: int | None = None
    streams: float | None = None
    deadline = time.monotonic() + RETENTION + 10 * UNIT
    while True:
        health = await healthz(session, url)
        streams = (await metrics(session, url)).get("agentstream_streams")
        tasks = health["tasks"]
        if (
            health["subscribers"] == 0
            and health["live_runs"] == 1
            and streams == 1
            and tasks == previous
            and (tasks_at_most is None or tasks <= tasks_at_most)
        ):
            return health
        previous = tasks
        assert time.monotonic() < deadline, f"the hub did not quiesce: {health}, {streams=}"
        await asyncio.sleep(0.1)  # an external process: nothing to await but its answers


@pytest.mark.slow
async def test_soak_memory_stays_flat(tmp_path: Path) -> None:
    agents = tmp_path / "agents"
    write_agent(agents, "waiter", WAITER)
    serve = ServeProcess(
        "--store",
        "memory",
        "--model",
        "simulated:tokens=5,rate=0",
        "--retention",
        str(RETENTION),
        "--agents",
        str(bundled_examples_dir()),
        "--agents",
        str(agents),
    )
    session = aiohttp.ClientSession(  # control requests: no connection kept alive
        connector=aiohttp.TCPConnector(force_close=True),
        timeout=aiohttp.ClientTimeout(total=30 * UNIT),
    )
    try:
        url = await serve.start()
        async with session.post(
            f"{url}/v1/threads/runs", json={"assistant_id": "waiter"}
        ) as response:
            assert response.status == 200, await response.text()
            waiter = await response.json()
        stream_path = f"/v1/threads/{waiter['thread_id']}/stream/{waiter['id']}"

        async def apply(load: Load, cycle_count: int, run_count: int) -> float:
            started = time.monotonic()
            await asyncio.gather(
                cycles(serve.port, stream_path, cycle_count, load),
                whole_runs(url, run_count, load),
            )
            return time.monotonic() - started

        warm = Load()
        await apply(warm, WARM_CYCLES, WARM_RUNS)
        tasks_warm = (await quiesce(session, url))["tasks"]
        rss_warm = serve.rss_kib()

        loads, rss, lasted = [Load(), Load()], [], []
        for load in loads:
            lasted.append(await apply(load, CYCLES, RUNS))
            try:
                health = await quiesce(session, url, tasks_at_most=tasks_warm)
            except AssertionError as exc:
                raise AssertionError(f"{exc} (tasks after the warm-up: {tasks_warm})") from None
            rss.append(serve.rss_kib())
            assert health["subscribers"] == 0 and health["live_runs"] == 1  # the waiter's
            assert load.cycles == CYCLES and load.runs == RUNS
        started_total = (await metrics(session, url))["agentstream_runs_started_total"]

        mib = [f"{kib / 1024:.1f}" for kib in (rss_warm, *rss)]
        print(
            f"\nsoak: warm-up {warm.cycles} subscriber cycles + {warm.runs} runs, then twice "
            f"{CYCLES} cycles + {RUNS} runs ({loads[0].events} events read each time) in "
            f"{lasted[0]:.1f}s and {lasted[1]:.1f}s; VmRSS after warm-up, load 1, load 2: "
            f"{' -> '.join(mib)} MiB ({(rss[0] - rss_warm) / rss_warm:+.1%}, then "
            f"{(rss[1] - rss[0]) / rss[0]:+.1%}); tasks {tasks_warm} -> {health['tasks']}; "
            f"{started_total:.0f} runs started, {2 * CYCLES + warm.cycles} connections cycled"
        )
        # A leak grows with the load; the allocator's high-water mark does not: the first
        # full load lifts VmRSS to the level its peak needs (about +25% over the smaller
        # warm-up here, with Python-level memory flat), the second must not lift it again.
        assert rss[1] <= rss[0] * (1 + GROWTH), (rss_warm, rss)
        assert rss[0] <= rss_warm * (1 + FIRST_LOAD_GROWTH), (rss_warm, rss)
        assert health["tasks"] <= tasks_warm, health

        async with session.post(
            f"{url}/v1/threads/{waiter['thread_id']}/runs/{waiter['id']}/cancel"
        ) as response:
            assert response.status == 200
        serve.send(signal.SIGTERM)
        assert await serve.wait(15 * UNIT) == 0, serve.output
    finally:
        await session.close()
        await serve.aclose()
