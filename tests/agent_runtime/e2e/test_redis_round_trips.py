"""Round trips to Redis on a node's hot paths, counted against a real ``redis-server``.

A round trip is one write of commands to a Redis connection followed by their replies (a
pipeline is one): every ``send_packed_command`` of redis-py's connections is recorded,
with the asyncio task that sent it and the commands it held. An operation's round trips
are those sent by the task awaiting it and by the store's writer task (which sends the
writes it queued): not the node's background tasks (its inbox's blocking read, its
heartbeat, its outbox to the streams), which nothing here waits for.

A run's creation (its thread checked or created with its messages, the run's messages,
the thread claimed across nodes, the run) is one round trip: one script.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest
from redis.asyncio.connection import AbstractConnection

from agent_runtime.config import HubConfig
from agent_runtime.errors import Conflict
from agent_runtime.hub import Hub
from agent_runtime.objects import Message, Thread, new_id, now
from agent_runtime.runs import RunContext
from agent_runtime.store import MemoryStore, RedisStore
from agent_runtime.store.redis_scripts import SCRIPTS

from ..conftest import SLOW_MODEL, UNIT

T = TypeVar("T")

_COMMAND = re.compile(rb"\*\d+\r\n\$\d+\r\n([A-Za-z]+)\r\n")


@dataclass
class RoundTrips:
    """Every send to Redis while :meth:`counting`: (task name, command names)."""

    sent: list[tuple[str, list[str]]] = field(default_factory=list)
    on: bool = False

    @contextmanager
    def counting(self) -> Iterator[list[tuple[str, list[str]]]]:
        self.sent.clear()
        self.on = True
        try:
            yield self.sent
        finally:
            self.on = False

    async def of(self, operation: Awaitable[T]) -> tuple[T, list[list[str]]]:
        """Await ``operation`` in this task; its result and its round trips' commands."""
        me = asyncio.current_task()
        assert me is not None
        with self.counting() as sent:
            result = await operation
        mine = {me.get_name(), "redis store writer"}
        return result, [commands for task, commands in sent if task in mine]


@pytest.fixture
def round_trips(monkeypatch: pytest.MonkeyPatch) -> RoundTrips:
    counter = RoundTrips()
    send = AbstractConnection.send_packed_command

    async def counted(self: AbstractConnection, command: Any, check_health: bool = True) -> None:
        if counter.on:
            task = asyncio.current_task()
            packed = command if isinstance(command, (bytes, str)) else b"".join(command)
            packed = packed.encode() if isinstance(packed, str) else packed
            names = [m.decode().upper() for m in _COMMAND.findall(packed)]
            counter.sent.append((task.get_name() if task else "", names))
        await send(self, command, check_health)

    monkeypatch.setattr(AbstractConnection, "send_packed_command", counted)
    return counter


@pytest.fixture
async def node(redis_url: str, redis_prefix: str) -> AsyncIterator[Hub]:
    """A started hub, a node on the test's Redis (a long lease: no heartbeat meanwhile)."""
    config = HubConfig(
        force_model=SLOW_MODEL,
        shutdown_timeout=2 * UNIT,
        redis={"url": redis_url, "prefix": redis_prefix, "node_id": "n1", "node_lease": 600},
    )
    hub = Hub(config)
    await hub.start()
    try:
        yield hub
    finally:
        await hub.aclose()


def _new_thread(*texts: str) -> tuple[Thread, list[Message]]:
    thread = Thread(id=new_id("thread"), created_at=now())
    messages = [
        Message(
            id=new_id("msg"),
            thread_id=thread.id,
            role="user",
            content=text,
            created_at=now(),
            completed_at=now(),
        )
        for text in texts
    ]
    return thread, messages


async def test_a_run_is_created_in_one_round_trip(node: Hub, round_trips: RoundTrips) -> None:
    assert isinstance(node.store, RedisStore)
    # Warm up: the connections are open, Redis has the scripts.
    thread, messages = _new_thread("warm up")
    await node.store.create_thread(thread, messages)
    first = await node.runs.create(thread.id, "async-example")
    first.end("cancelled")
    await _ended(node, first)  # nothing else writes meanwhile

    # A new thread with its messages, and a run on it (POST /threads/runs).
    thread, messages = _new_thread("one", "two")
    ctx, sent = await round_trips.of(
        node.runs.create(
            thread.id,
            "async-example",
            additional_messages=[("user", "three")],
            thread=thread,
            thread_messages=messages,
        )
    )
    assert sent == [["EVALSHA"]], sent
    await _check_created(node, ctx, ["one", "two", "three"])

    # A run on an existing thread, with an additional message (POST /threads/{id}/runs).
    ctx.end("cancelled")
    await _ended(node, ctx)
    again, sent = await round_trips.of(
        node.runs.create(thread.id, "async-example", additional_messages=[("user", "four")])
    )
    assert sent == [["EVALSHA"]], sent
    await _check_created(node, again, ["one", "two", "three", "four"])
    again.end("cancelled")


async def _check_created(node: Hub, ctx: RunContext, texts: list[str]) -> None:
    """The run is stored, after its thread's messages, and live on this node in Redis."""
    thread_id = ctx.run.thread_id
    stored = await node.store.get_run(thread_id, ctx.run.id)
    assert stored.id == ctx.run.id
    page = await node.store.list_messages(thread_id, order="asc")
    assert [m.content for m in page.data] == texts
    assert node.cluster is not None
    assert await node.cluster.owner_of(ctx.run.id) == "n1"


async def _ended(node: Hub, ctx: RunContext) -> None:
    """Wait until the run has ended, its task is done and its thread's claim in Redis is
    released (a tracked background task): nothing of it writes any more."""
    assert node.cluster is not None and ctx.task is not None
    async with asyncio.timeout(5 * UNIT):
        await ctx.task  # its done callback has started the release
        releases = [t for t in node.cluster._tasks if t.get_name() == "cluster release"]
        await asyncio.gather(*releases)
    assert not await node.cluster.client.hexists(
        f"{node.cluster.prefix}threads:live", ctx.run.thread_id
    )


async def test_the_other_writes_are_one_round_trip_each(node: Hub, round_trips: RoundTrips) -> None:
    store = node.store
    assert isinstance(store, RedisStore)
    thread, messages = _new_thread("warm up")
    await store.create_thread(thread, messages)  # warm up

    thread, messages = _new_thread("a", "b", "c")
    _none, sent = await round_trips.of(store.create_thread(thread, messages))
    assert sent == [["EVALSHA"]], sent

    message = Message(
        id=new_id("msg"), thread_id=thread.id, role="user", content="d", created_at=now()
    )
    _none, sent = await round_trips.of(store.add_message(message))
    assert sent == [["EVALSHA"]], sent


async def test_writes_survive_redis_forgetting_the_scripts(
    node: Hub, round_trips: RoundTrips
) -> None:
    """After ``SCRIPT FLUSH`` (as after a restart of Redis) the writes refused with
    ``NOSCRIPT`` are sent again, in order, behind the scripts' ``SCRIPT LOAD``."""
    store = node.store
    assert isinstance(store, RedisStore)
    thread, messages = _new_thread("warm up")
    await store.create_thread(thread, messages)
    await store._client.script_flush()

    first, second = (
        Message(id=new_id("msg"), thread_id=thread.id, role="user", content=text, created_at=now())
        for text in ("first", "second")
    )
    _none, sent = await round_trips.of(
        asyncio.gather(store.add_message(first), store.add_message(second))
    )
    reloaded = ["SCRIPT"] * len(SCRIPTS) + ["EVALSHA", "EVALSHA"]
    assert sent == [["EVALSHA", "EVALSHA"], reloaded], sent
    page = await store.list_messages(thread.id, order="asc")
    assert [m.content for m in page.data] == ["warm up", "first", "second"]


async def test_a_claim_across_nodes_is_exclusive_on_either_path(
    redis_url: str, redis_prefix: str
) -> None:
    """Two nodes on one Redis start a run on the same thread at once: one starts, the
    other gets 409 naming it; with the nodes' Redis store (the claim made by the run's
    own script) and with a store of their own (the claim first, then the store)."""
    shared = MemoryStore()
    for store in (None, shared):
        hubs = [
            Hub(
                HubConfig(
                    force_model=SLOW_MODEL,
                    shutdown_timeout=2 * UNIT,
                    redis={"url": redis_url, "prefix": redis_prefix, "node_id": name},
                ),
                store=store,
            )
            for name in ("a", "b")
        ]
        try:
            for hub in hubs:
                await hub.start()
            thread, messages = _new_thread("hi")
            await hubs[0].store.create_thread(thread, messages)
            results = await asyncio.gather(
                *(hub.runs.create(thread.id, "async-example") for hub in hubs),
                return_exceptions=True,
            )
            started = [r for r in results if isinstance(r, RunContext)]
            refused = [r for r in results if isinstance(r, Conflict)]
            assert len(started) == 1 and len(refused) == 1, results
            assert started[0].run.id in str(refused[0])
            runs = await hubs[0].store.list_runs(thread.id)
            assert [r.id for r in runs.data] == [started[0].run.id]
        finally:
            for hub in hubs:
                await hub.aclose()
