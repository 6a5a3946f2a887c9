"""Two real ``agentstream serve --redis URL`` processes (nodes A and B) on one real Redis.

* A run started on A is watched from B (the same events, ids and bytes as on A), resumed
  on A with B's cursor, and cancelled from B (the cancel reaches A, which owns the run);
  a second run on the same thread is refused by either node while the first is live.
* A finished run replays identically from either node; a thread made on one node is
  listed, read and deleted on the other.
* Node A killed (SIGKILL) mid-run: once its lease expires, B fails the run: B's
  subscriber receives ``thread.run.failed`` naming the dead node, the run and its
  unfinished message are updated, and the thread takes new runs again.
* Node A killed mid-response: B fails its run and ends the response's stream with
  ``response.failed``, numbered right after the events A had written.
* Node A stopped (SIGTERM) mid-run: the run ends ``failed`` and B's subscriber sees it.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from agent_runtime.config import HubConfig
from agent_runtime.hub import Hub

from ..conftest import TERMINAL_EVENTS, UNIT, ClientState, check_run
from ..provider_stub import ServeProcess, call
from ..sse import DONE, Ev, SSEReader, parse_events

FAST = "simulated:tokens=12,rate=0"
SLOW = "simulated:tokens=5000,rate=100"
"""Fifty seconds per message: live until the test ends it."""
LEASE = 1.0 * UNIT


@pytest.fixture
def lease() -> float:
    """The nodes' lease, in seconds (a test parametrizes ``lease`` to change it)."""
    return LEASE


@pytest.fixture
def node_args() -> tuple[str, ...]:
    """More ``serve`` arguments of both nodes (a test parametrizes ``node_args``)."""
    return ()


@pytest.fixture
async def nodes(
    redis_url: str, redis_prefix: str, lease: float, node_args: tuple[str, ...]
) -> AsyncIterator[list[ServeProcess]]:
    """Nodes A and B, started, on one Redis and one key prefix."""
    made = [
        ServeProcess(
            "--redis",
            redis_url,
            "--redis-prefix",
            redis_prefix,
            "--node-id",
            name,
            "--node-lease",
            str(lease),
            "--redis-linger",
            "0.002",
            "--shutdown-grace",
            "0",
            *node_args,
        )
        for name in ("node-a", "node-b")
    ]
    try:
        await asyncio.gather(*(node.start() for node in made))
        yield made
    finally:
        for node in made:
            await node.aclose()


async def new_thread(session: aiohttp.ClientSession, url: str, text: str) -> str:
    body = {"messages": [{"role": "user", "content": text}]}
    return str((await call(session, "POST", f"{url}/v1/threads", body))["id"])


async def new_run(
    session: aiohttp.ClientSession, url: str, thread_id: str, model: str, status: int = 200
) -> dict[str, Any]:
    body = {"assistant_id": "streaming-example", "model": model}
    run: dict[str, Any] = await call(
        session, "POST", f"{url}/v1/threads/{thread_id}/runs", body, status
    )
    return run


async def whole(
    session: aiohttp.ClientSession, url: str, thread_id: str, run_id: str, **headers: str
) -> tuple[int, bytes]:
    async with asyncio.timeout(10 * UNIT):
        async with session.get(
            f"{url}/v1/threads/{thread_id}/stream/{run_id}", headers=headers
        ) as response:
            return response.status, await response.read()


async def test_a_run_on_a_watched_from_b_resumed_on_a_cancelled_from_b(
    nodes: list[ServeProcess], session: aiohttp.ClientSession
) -> None:
    a, b = (node.url for node in nodes)
    for url, name in ((a, "node-a"), (b, "node-b")):
        assert (await call(session, "GET", f"{url}/healthz"))["node"] == name
    thread_id = await new_thread(session, a, "What is virtue?")
    run = await new_run(session, a, thread_id, SLOW)
    stream_path = f"/v1/threads/{thread_id}/stream/{run['id']}"
    # Node B watches the run that node A executes.
    async with session.get(b + stream_path) as on_b:
        assert on_b.status == 200
        watcher = SSEReader(on_b)
        async with asyncio.timeout(10 * UNIT):
            for _ in range(5):
                await watcher.until(lambda e: e.name == "thread.message.delta")
        # The same thread can take no second run, on either node, while this one lives.
        for url in (a, b):
            refused = await new_run(session, url, thread_id, FAST, status=409)
            assert run["id"] in refused["error"]["message"]
        # Resume on node A from the cursor node B gave.
        cursor = watcher.events[-1].id
        assert cursor is not None
        async with session.get(a + stream_path, headers={"Last-Event-ID": str(cursor)}) as on_a:
            assert on_a.status == 200
            resumed = SSEReader(on_a)
            async with asyncio.timeout(10 * UNIT):
                await resumed.until(lambda e: e.name == "thread.message.delta")
            assert resumed.events[0].id == cursor + 1
            # Cancel from node B; node A owns the run and stops it.
            cancelled = await call(
                session, "POST", f"{b}/v1/threads/{thread_id}/runs/{run['id']}/cancel"
            )
            assert cancelled["status"] == "cancelling", cancelled  # as a local cancel says
            async with asyncio.timeout(10 * UNIT):
                rest_a = await resumed.rest()
                rest_b = await watcher.rest()
    on_a_events = resumed.events
    on_b_events = watcher.events
    assert on_b_events[-1].name == "thread.run.cancelled"
    assert on_a_events[-1].name == "thread.run.cancelled"
    assert rest_a is not None and rest_b is not None
    # Node B saw the whole run, a valid sequence; node A's tail is exactly B's from the cursor.
    trace = check_run(on_b_events, terminal="thread.run.cancelled")
    assert [(e.id, e.name, e.data) for e in on_a_events] == [
        (e.id, e.name, e.data) for e in on_b_events if e.id is not None and e.id > cursor
    ]
    names = [e.name for e in on_b_events]
    assert names.count("thread.run.cancelling") == 1
    for url in (a, b):
        got = await call(session, "GET", f"{url}/v1/threads/{thread_id}/runs/{run['id']}")
        assert got["status"] == "cancelled"
    # Both nodes replay the finished run byte for byte; the thread takes runs again.
    status_a, body_a = await whole(session, a, thread_id, run["id"])
    status_b, body_b = await whole(session, b, thread_id, run["id"])
    assert status_a == status_b == 200 and body_a == body_b
    assert [e.id for e in parse_events(body_b)] == list(range(1, trace.last_id + 1))
    again = await new_run(session, b, thread_id, FAST)
    status, body = await whole(session, a, thread_id, again["id"])
    assert status == 200
    check_run(parse_events(body))


async def test_threads_and_finished_runs_are_shared(
    nodes: list[ServeProcess], session: aiohttp.ClientSession
) -> None:
    a, b = (node.url for node in nodes)
    thread_id = await new_thread(session, b, "What is courage?")
    run = await new_run(session, a, thread_id, FAST)
    status, body = await whole(session, a, thread_id, run["id"])
    trace = check_run(parse_events(body))
    status_b, body_b = await whole(session, b, thread_id, run["id"])
    assert status == status_b == 200 and body_b == body
    # Resume on B at every few cursors: exactly the tail.
    for cursor in (1, trace.last_id // 2, trace.last_id - 1):
        code, tail = await whole(session, b, thread_id, run["id"], **{"Last-Event-ID": str(cursor)})
        assert code == 200
        assert [e.id for e in parse_events(tail)] == list(range(cursor + 1, trace.last_id + 1))
    code, _ = await whole(session, b, thread_id, run["id"], **{"Last-Event-ID": str(trace.last_id)})
    assert code == 204
    messages_a = await call(session, "GET", f"{a}/v1/threads/{thread_id}/messages?order=asc")
    messages_b = await call(session, "GET", f"{b}/v1/threads/{thread_id}/messages?order=asc")
    assert messages_a == messages_b and len(messages_a["data"]) == 3  # question, 2 replies
    assert ClientState().apply_all(parse_events(body)).texts == [
        m["content"][0]["text"]["value"] for m in messages_b["data"][1:]
    ]
    await call(session, "DELETE", f"{a}/v1/threads/{thread_id}")
    await call(session, "GET", f"{b}/v1/threads/{thread_id}", status=404)


async def watch_until_deltas(reader: SSEReader, count: int) -> None:
    async with asyncio.timeout(10 * UNIT):
        for _ in range(count):
            await reader.until(lambda e: e.name == "thread.message.delta")


async def test_node_a_killed_mid_run_is_failed_by_node_b(
    nodes: list[ServeProcess], session: aiohttp.ClientSession
) -> None:
    node_a, node_b = nodes
    a, b = node_a.url, node_b.url
    thread_id = await new_thread(session, a, "What is justice?")
    run = await new_run(session, a, thread_id, SLOW)
    path = f"/v1/threads/{thread_id}/stream/{run['id']}"
    async with session.get(b + path) as on_b:
        watcher = SSEReader(on_b)
        await watch_until_deltas(watcher, 3)
        node_a.send(signal.SIGKILL)
        assert await node_a.wait(5 * UNIT) == -signal.SIGKILL
        # The lease runs out, node B's reaper fails the run: B's subscriber sees the end.
        async with asyncio.timeout(LEASE * 4 + 10 * UNIT):
            await watcher.rest()
    events: list[Ev] = watcher.events
    assert events[-1].name == "thread.run.failed", [e.name for e in events[-4:]]
    assert sum(e.name in TERMINAL_EVENTS for e in events) == 1
    error = events[-1].data["last_error"]
    assert error["code"] == "server_error"
    assert error["message"].startswith("node node-a stopped (its lease of"), error
    ids = [e.id for e in events]
    assert ids == list(range(1, len(events) + 1)), ids
    got = await call(session, "GET", f"{b}/v1/threads/{thread_id}/runs/{run['id']}")
    assert got["status"] == "failed" and got["last_error"] == error
    messages = await call(session, "GET", f"{b}/v1/threads/{thread_id}/messages?order=asc")
    assistant = [m for m in messages["data"] if m["role"] == "assistant"]
    assert all(m["status"] != "in_progress" for m in assistant), assistant
    # A subscriber joining now gets the whole stream, ending in the failure, then a 204.
    status, body = await whole(session, b, thread_id, run["id"])
    assert status == 200 and parse_events(body)[-1].name == "thread.run.failed"
    code, _ = await whole(session, b, thread_id, run["id"], **{"Last-Event-ID": str(ids[-1])})
    assert code == 204
    # The thread is free again, on the surviving node.
    again = await new_run(session, b, thread_id, FAST)
    status, body = await whole(session, b, thread_id, again["id"])
    check_run(parse_events(body))
    assert "node node-a stopped" in node_b.output and "marked failed" in node_b.output


@pytest.mark.parametrize("node_args", [("--model", SLOW)])
async def test_node_a_killed_mid_response_ends_its_stream_on_b(
    nodes: list[ServeProcess], session: aiohttp.ClientSession
) -> None:
    node_a, node_b = nodes
    a, b = node_a.url, node_b.url
    body = {"model": "agent:streaming-example", "input": "What is piety?", "background": True}
    created = await call(session, "POST", f"{a}/v1/responses", body)
    path = f"/v1/responses/{created['id']}"
    async with session.get(f"{b}{path}?stream=true") as on_b:
        assert on_b.status == 200
        reader = SSEReader(on_b, framing="openai")
        async with asyncio.timeout(10 * UNIT):
            for _ in range(3):
                await reader.until(lambda e: e.name == "response.output_text.delta")
        node_a.send(signal.SIGKILL)
        assert await node_a.wait(5 * UNIT) == -signal.SIGKILL
        # The lease runs out, node B fails the run and ends the response's stream.
        async with asyncio.timeout(LEASE * 4 + 10 * UNIT):
            await reader.rest()
    events = [e for e in reader.events if e.name != DONE]
    assert events[-1].name == "response.failed", [e.name for e in events[-4:]]
    numbers = [e.data["sequence_number"] for e in events]
    assert numbers == list(range(len(events))), numbers
    failed = events[-1].data["response"]
    assert failed["id"] == created["id"] and failed["status"] == "failed"
    assert failed["error"]["message"].startswith("node node-a stopped"), failed["error"]
    got = await call(session, "GET", f"{b}{path}")
    assert got["status"] == "failed" and got["error"] == failed["error"]
    async with asyncio.timeout(10 * UNIT):
        async with session.get(f"{b}{path}?stream=true&starting_after={numbers[-1]}") as tail:
            assert tail.status == 204


async def test_node_a_stopped_mid_run_ends_it_for_subscribers_on_b(
    nodes: list[ServeProcess], session: aiohttp.ClientSession
) -> None:
    node_a, node_b = nodes
    thread_id = await new_thread(session, node_a.url, "What is piety?")
    run = await new_run(session, node_a.url, thread_id, SLOW)
    async with session.get(f"{node_b.url}/v1/threads/{thread_id}/stream/{run['id']}") as on_b:
        watcher = SSEReader(on_b)
        await watch_until_deltas(watcher, 2)
        node_a.send(signal.SIGTERM)
        async with asyncio.timeout(10 * UNIT):
            await watcher.rest()
        assert await node_a.wait(10 * UNIT) == 0, node_a.output
    assert watcher.events[-1].name == "thread.run.failed"
    assert "shut down" in watcher.events[-1].data["last_error"]["message"]
    got = await call(session, "GET", f"{node_b.url}/v1/threads/{thread_id}/runs/{run['id']}")
    assert got["status"] == "failed"


# A lease long enough that node A is surely back before it expires, however slowly a busy
# machine starts a process: this is the restart path, not the reaper's.
@pytest.mark.parametrize("lease", [30 * UNIT])
async def test_a_node_restarted_under_its_id_fails_the_runs_it_had(
    nodes: list[ServeProcess], session: aiohttp.ClientSession
) -> None:
    node_a, node_b = nodes
    thread_id = await new_thread(session, node_a.url, "What is temperance?")
    run = await new_run(session, node_a.url, thread_id, SLOW)
    async with session.get(f"{node_b.url}/v1/threads/{thread_id}/stream/{run['id']}") as on_b:
        watcher = SSEReader(on_b)
        await watch_until_deltas(watcher, 2)
        node_a.send(signal.SIGKILL)
        assert await node_a.wait(5 * UNIT) == -signal.SIGKILL
        # Back at once, under the same id: it takes its lease again before it expires,
        # so nobody else would fail the run; the new process does, as it starts.
        await node_a.start()
        async with asyncio.timeout(10 * UNIT):
            await watcher.rest()
    assert watcher.events[-1].name == "thread.run.failed"
    message = watcher.events[-1].data["last_error"]["message"]
    assert message.startswith("node node-a was restarted while this run was live"), message
    again = await new_run(session, node_a.url, thread_id, FAST)
    status, body = await whole(session, node_b.url, thread_id, again["id"])
    assert status == 200
    check_run(parse_events(body))


def test_serve_with_an_unreachable_redis_says_so() -> None:
    command = [sys.executable, "-m", "agent_runtime.cli", "serve", "--port", "0"]
    done = subprocess.run(
        [*command, "--redis", "redis://127.0.0.1:1/0"],
        capture_output=True,
        text=True,
        timeout=30 * UNIT,
    )
    assert done.returncode == 2, done.stderr
    assert "agentstream: cannot reach Redis at redis://127.0.0.1:1/0" in done.stderr


async def test_a_claim_this_node_no_longer_knows_is_released(
    redis_url: str, redis_prefix: str
) -> None:
    """A run that ended while Redis was unreachable stays recorded live; the node's own
    reaper pass releases it, so its thread can take runs again."""
    hub = Hub(HubConfig(redis={"url": redis_url, "prefix": redis_prefix, "node_id": "solo"}))
    await hub.start()
    try:
        assert hub.cluster is not None
        client = hub.cluster.client
        await client.hset(f"{redis_prefix}runs:live", "run_gone", "solo thread_x")
        await client.hset(f"{redis_prefix}threads:live", "thread_x", "run_gone")
        assert await hub.cluster.reap() == 0
        assert not await client.hexists(f"{redis_prefix}runs:live", "run_gone")
        assert not await client.hexists(f"{redis_prefix}threads:live", "thread_x")
    finally:
        await hub.aclose()
