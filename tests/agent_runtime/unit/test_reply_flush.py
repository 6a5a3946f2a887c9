"""A text reply (``env.add_reply(text)``) reaches a subscriber in one write, after its
message is stored: driven on a real RunManager whose memory store's message writes wait
for the test. No HTTP, no sockets (the subscriber is a collecting sink)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agent_runtime import protocol
from agent_runtime.agents import AgentCatalog, discover_agents
from agent_runtime.config import RunsConfig
from agent_runtime.errors import StorageUnavailable
from agent_runtime.models.router import ModelRouter
from agent_runtime.objects import Message, Thread, new_id, now
from agent_runtime.runs import RunManager, replies
from agent_runtime.runs.context import RunContext
from agent_runtime.store import MemoryStore
from broker import BrokerConfig, Registry

from ..conftest import within, write_agent

IDLE = """
import asyncio

async def run(env):
    await asyncio.Event().wait()  # until the test ends the run
"""


class GatedStore(MemoryStore):
    """A memory store whose message writes wait for ``gate`` and may fail (``fail``)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()
        self.gate.set()
        self.writing = asyncio.Event()
        self.fail = False

    async def add_message(self, message: Message) -> None:
        self.writing.set()
        await self.gate.wait()
        if self.fail:
            raise StorageUnavailable("the data directory /nowhere is full")
        await super().add_message(message)


class Subscriber:
    """A sink that keeps each write, and what the store held when it got a completion."""

    wire = staticmethod(lambda data: data)

    def __init__(self, store: MemoryStore, thread_id: str) -> None:
        self.writes: list[list[tuple[str, dict[str, Any]]]] = []
        self.stored_at_completed: list[list[str]] = []
        self._store = store
        self._thread_id = thread_id

    def write(self, data: bytes) -> None:
        events = [
            (str(frame["event"]), frame["data"])
            for line in data.decode().splitlines()
            if line.startswith("data: ") and (frame := json.loads(line[6:]))
        ]
        self.writes.append(events)
        if any(name == protocol.MESSAGE_COMPLETED for name, _ in events):
            # Synchronous peek at the memory store (no await): what a GET would answer now.
            messages = self._store._messages.get(self._thread_id, {})
            self.stored_at_completed.append(
                [m.id for m in messages.values() if m.status == "completed"]
            )

    def writable(self) -> bool:
        return True

    def is_closing(self) -> bool:
        return False


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[tuple[RunManager, GatedStore]]:
    write_agent(tmp_path / "agents", "idle", IDLE)
    store = GatedStore()
    runs = RunManager(
        store=store,
        registry=Registry(BrokerConfig()),
        catalog=AgentCatalog(discover_agents([tmp_path / "agents"])),
        models=ModelRouter(default_model="simulated:tokens=5,rate=0"),
        config=RunsConfig(checkpoint_interval=0),
    )
    yield runs, store
    await runs.aclose(timeout=1)


async def a_run(manager: RunManager) -> tuple[RunContext, Subscriber]:
    thread = Thread(id=new_id("thread"), created_at=now())
    await manager.store.create_thread(thread)
    ctx = await manager.create(thread.id, "idle")
    async with within(5):
        async for event in ctx.stream.follow():  # the agent is running: the run is quiet
            if event.name == protocol.run_event("in_progress"):
                break
    assert isinstance(manager.store, MemoryStore)
    subscriber = Subscriber(manager.store, thread.id)
    ctx.stream.subscribe(subscriber, cursor=ctx.stream.head)  # type: ignore[arg-type]
    return ctx, subscriber


def reply_events(subscriber: Subscriber, message_id: str) -> list[list[str]]:
    """Per write, the names of the events of message ``message_id`` it held."""
    per_write = [[n for n, p in write if p.get("id") == message_id] for write in subscriber.writes]
    return [names for names in per_write if names]


async def test_a_text_reply_is_stored_then_published_in_one_write(
    hub: tuple[RunManager, GatedStore],
) -> None:
    manager, store = hub
    ctx, subscriber = await a_run(manager)
    store.gate.clear()
    head = ctx.stream.head
    reply = asyncio.create_task(replies.reply_text(ctx, "Know thyself"))
    async with within(5):
        await store.writing.wait()
    for _ in range(3):
        await asyncio.sleep(0)
    assert ctx.stream.head == head  # nothing shown while the store write is pending
    store.gate.set()
    async with within(5):
        message = await reply
    async with within(5):
        while not reply_events(subscriber, message.id):  # noqa: ASYNC110 - the next flush
            await asyncio.sleep(0)
    assert reply_events(subscriber, message.id) == [
        [
            protocol.MESSAGE_CREATED,
            protocol.MESSAGE_IN_PROGRESS,
            protocol.MESSAGE_DELTA,
            protocol.MESSAGE_COMPLETED,
        ]
    ]  # one write holds the four events
    assert ctx.stream.head == head + 4  # consecutive ids, nothing in between
    assert subscriber.stored_at_completed == [[message.id]]  # stored before it was shown
    created = next(p for w in subscriber.writes for n, p in w if n == protocol.MESSAGE_CREATED)
    assert created["status"] == "in_progress" and created["content"] == []
    stored = await store.get_message(ctx.run.thread_id, message.id)
    assert stored.status == "completed" and stored.content == "Know thyself"
    await end_run(ctx)


SHOWN_INCOMPLETE = [
    protocol.MESSAGE_CREATED,
    protocol.MESSAGE_IN_PROGRESS,
    protocol.MESSAGE_DELTA,
    protocol.MESSAGE_INCOMPLETE,
]
"""What a reply whose store write failed shows: its whole life, ended incomplete."""


async def names_flushed(subscriber: Subscriber) -> list[str]:
    """The names of the events written to ``subscriber``, once the next flush came."""
    async with within(5):
        while not subscriber.writes:  # noqa: ASYNC110 - the next flush
            await asyncio.sleep(0)
    return [n for write in subscriber.writes for n, _ in write]


async def end_run(ctx: RunContext) -> None:
    ctx.end("cancelled")
    async with within(5):
        await ctx.done.wait()


async def test_a_reply_the_store_refuses_is_shown_incomplete_never_completed(
    hub: tuple[RunManager, GatedStore],
) -> None:
    manager, store = hub
    ctx, subscriber = await a_run(manager)
    store.fail = True
    try:
        with pytest.raises(StorageUnavailable):
            await replies.reply_text(ctx, "Lost words")
    finally:
        store.fail = False
    assert await names_flushed(subscriber) == SHOWN_INCOMPLETE
    assert len(subscriber.writes) == 1
    assert len(manager.repairs) == 1  # queued for when the store takes writes again
    await end_run(ctx)


async def test_a_reply_cancelled_during_its_store_write_is_shown_incomplete(
    hub: tuple[RunManager, GatedStore],
) -> None:
    manager, store = hub
    ctx, subscriber = await a_run(manager)
    store.gate.clear()
    reply = asyncio.create_task(replies.reply_text(ctx, "Interrupted"))
    async with within(5):
        await store.writing.wait()
    reply.cancel()  # as the run's cancel does to a thread's pending call
    with pytest.raises(asyncio.CancelledError):
        await reply
    store.gate.set()
    assert await names_flushed(subscriber) == SHOWN_INCOMPLETE
    assert len(manager.repairs) == 1  # to be stored incomplete, as it was shown
    await end_run(ctx)
