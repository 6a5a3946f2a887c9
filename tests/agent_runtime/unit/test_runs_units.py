"""The runs package's pieces, driven directly on a real RunManager with a memory store:
what a context publishes and records, child deltas relayed, and an ending whose store
fails. No HTTP, no sockets."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from agent_runtime import protocol
from agent_runtime.errors import AgentRuntimeError, InvalidRequest, StorageUnavailable
from agent_runtime.runs import RunManager
from agent_runtime.runs.agent_thread import AgentExit, describe, exit_outcome
from agent_runtime.runs.context import RunContext
from agent_runtime.runs.lifecycle import finish
from agent_runtime.runs.pump import chat_messages

from ..conftest import within
from .managers import a_thread, run_manager


@pytest.fixture
async def manager() -> AsyncIterator[RunManager]:
    async with run_manager("simulated:tokens=5,rate=0") as runs:
        yield runs


def recorded(ctx: RunContext) -> list[tuple[str, Any]]:
    return [(name, payload) for _first, _id, name, payload in ctx.runlog.compact()]


async def test_a_published_delta_is_recorded_and_relayed_to_the_parent(
    manager: RunManager,
) -> None:
    slow = "simulated:tokens=5000,rate=10"  # both live until the test ends them
    parent = await manager.create(await a_thread(manager), "async-example", model=slow)
    child = await manager.create(
        await a_thread(manager), "async-example", model=slow, parent=parent
    )
    step = parent.new_step("child_run", {"type": "child_run", "child_run": {}})
    parent.children[step["id"]] = child  # as env.run_agent does
    child.relay = (parent, step["id"])
    message = {"id": "msg_x", "object": "thread.message", "content": []}
    child.publish(protocol.MESSAGE_CREATED, message)
    event_id = child.publish_delta("msg_x", "Know thyself")
    assert child.runlog.message_text("msg_x") == "Know thyself"
    assert child.stream.head == event_id
    relayed = [p for n, p in recorded(parent) if n == protocol.AGENT_CHILD_DELTA]
    assert relayed == []  # relayed events are not state: the log leaves them out
    buffered = parent.stream.buffer.since(0)
    assert isinstance(buffered, list)
    names = [event.name for event in buffered]
    assert protocol.AGENT_CHILD_DELTA in names
    parent.end("cancelled")
    async with within(5):
        await parent.done.wait()
        await child.done.wait()
    assert child.run.terminal  # the parent's end ended its child


async def test_an_ending_whose_store_fails_still_publishes_and_queues_a_repair(
    manager: RunManager,
) -> None:
    ctx = await manager.create(await a_thread(manager), "async-example")
    assert ctx.task is not None
    async with within(5):
        await ctx.task  # a whole run first: its store write succeeded
    assert (await manager.store.get_run(ctx.run.thread_id, ctx.run.id)).status == "completed"

    second = await manager.create(ctx.run.thread_id, "async-example")
    assert second.task is not None
    second.task.cancel()  # stop its agent: this test ends it by hand

    async def refuse(*_args: object, **_kwargs: object) -> None:
        raise StorageUnavailable("the data directory /x is full")

    manager.store.update_run = refuse  # type: ignore[method-assign]
    second.finishing = False
    await finish(second, "completed", None)
    assert second.done.is_set() and second.stream.closed
    assert second.run.status == "completed"
    assert [n for n, _p in recorded(second)][-1] == "thread.run.completed"
    assert manager.repairs.run(second.run.id) is not None


def test_chat_messages_checks_what_an_agent_passes() -> None:
    assert chat_messages("hi") == [{"role": "user", "content": "hi"}]
    assert chat_messages([{"role": "system", "content": "x", "extra": 1}]) == [
        {"role": "system", "content": "x"}
    ]
    with pytest.raises(InvalidRequest):
        chat_messages([{"content": "no role"}])
    with pytest.raises(InvalidRequest):
        chat_messages(42)  # type: ignore[arg-type]


def test_an_agents_exit_and_errors_are_described() -> None:
    assert exit_outcome(AgentExit(SystemExit(0))) == ("completed", None)
    assert exit_outcome(SystemExit(3)) == ("failed", "the agent exited (SystemExit: 3)")
    assert describe(ValueError("bad")) == "ValueError: bad"
    assert describe(AgentRuntimeError("plain")) == "plain"
    assert describe(KeyError()) == "KeyError"


async def test_a_run_ended_before_its_task_begins_still_ends(manager: RunManager) -> None:
    ctx = await manager.create(await a_thread(manager), "async-example")
    manager.cancel_now(ctx)  # the same loop turn: its task has not begun
    assert ctx.task is not None
    async with within(5):
        await ctx.task
    assert ctx.done.is_set() and ctx.stream.closed
    assert ctx.run.status == "cancelled"
    assert (await manager.store.get_run(ctx.run.thread_id, ctx.run.id)).status == "cancelled"
