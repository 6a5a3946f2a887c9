"""Cancelling a live run: ``cancelling`` at once, then the stream ends with
``thread.run.cancelled`` within about one unit, for a synchronous agent (it stops at its
next Environment call) and an asynchronous one (its task is cancelled)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from ..conftest import (
    SLOW_MODEL,
    UNIT,
    HubClient,
    StartHub,
    check_run,
    eventually,
    text_of,
    with_examples,
    within,
    write_agent,
)
from ..sse import Ev


def agent_thread_alive(run_id: str) -> bool:
    return any(t.name == f"agent {run_id}" and t.is_alive() for t in threading.enumerate())


async def cancel_mid_stream(hub: HubClient, agent: str) -> tuple[str, str, list[Ev]]:
    thread_id, run_id = await hub.start(agent)
    async with hub.reader(thread_id, run_id) as reader:
        async with within(2):
            await reader.until(lambda e: e.name == "thread.message.delta")
            await reader.until(lambda e: e.name == "thread.message.delta")

        started = time.monotonic()
        reply = await hub.request("POST", f"/v1/threads/{thread_id}/runs/{run_id}/cancel")
        assert reply.status == 200, reply.body
        assert reply.json()["status"] == "cancelling"
        assert reply.json()["id"] == run_id
        async with within(1):
            await reader.rest()
        assert time.monotonic() - started < UNIT
    return thread_id, run_id, reader.events


@pytest.mark.parametrize("agent", ["streaming-example", "async-example"])
async def test_cancel_mid_stream_ends_the_run_cancelled(start_hub: StartHub, agent: str) -> None:
    hub = await start_hub(model=SLOW_MODEL)

    thread_id, run_id, events = await cancel_mid_stream(hub, agent)

    trace = check_run(events, "thread.run.cancelled")
    names = [e.name for e in events]
    assert "thread.run.cancelling" in names
    assert names.index("thread.run.cancelling") < names.index("thread.run.cancelled")
    (message,) = trace.messages
    assert message.final.name == "thread.message.incomplete"
    assert message.final.data["incomplete_details"] == {"reason": "run_cancelled"}
    run = await hub.run(thread_id, run_id)
    assert run["status"] == "cancelled" and run["cancelled_at"] is not None
    assert trace.terminal.data == run
    stored = await hub.messages(thread_id)
    assert [m["status"] for m in stored] == ["completed", "incomplete"]  # the partial text kept
    assert text_of(stored[1]) == message.delta_text
    if agent == "streaming-example":
        await eventually(lambda: not agent_thread_alive(run_id), what="the agent's thread ends")

    # the thread is free again
    again = await hub.request(
        "POST", f"/v1/threads/{thread_id}/runs", json_body={"assistant_id": agent}
    )
    assert again.status == 200
    await hub.request("POST", f"/v1/threads/{thread_id}/runs/{again.json()['id']}/cancel")


@pytest.mark.in_process_only(reason="looks for the agent's thread in the hub's process")
async def test_cancel_a_sync_agent_outside_any_completion(
    start_hub: StartHub, agents_dir: Path
) -> None:
    """The poller never streams: it stops at its next Environment call."""
    hub = await start_hub(agents=with_examples(agents_dir))
    thread_id, run_id = await hub.start("poller")
    async with hub.reader(thread_id, run_id) as reader:
        async with within(2):
            await reader.until(lambda e: e.name == "thread.message.completed")
        assert agent_thread_alive(run_id)
        reply = await hub.request("POST", f"/v1/threads/{thread_id}/runs/{run_id}/cancel")
        assert reply.json()["status"] == "cancelling"
        async with within(1):
            await reader.rest()

    check_run(reader.events, "thread.run.cancelled")
    await eventually(lambda: not agent_thread_alive(run_id), units=1, what="the poller stops")
    assert (await hub.run(thread_id, run_id))["status"] == "cancelled"


async def test_cancel_twice_is_harmless(start_hub: StartHub) -> None:
    hub = await start_hub(model=SLOW_MODEL)
    thread_id, run_id = await hub.start("async-example")
    async with hub.reader(thread_id, run_id) as reader, within(2):
        # Running (a run cancelled while still queued never starts: see below).
        await reader.until(lambda e: e.name == "thread.run.in_progress")
    path = f"/v1/threads/{thread_id}/runs/{run_id}/cancel"
    first = await hub.request("POST", path)
    second = await hub.request("POST", path)
    assert first.json()["status"] == "cancelling"
    assert second.status in (200, 400)
    events = await hub.events(thread_id, run_id, units=1)
    check_run(events, "thread.run.cancelled")
    assert [e.name for e in events].count("thread.run.cancelling") == 1


async def test_cancel_a_queued_run(start_hub: StartHub) -> None:
    hub = await start_hub(model=SLOW_MODEL, runs={"max_concurrent_runs": 1})
    busy_thread, busy_run = await hub.start("async-example")
    thread_id, run_id = await hub.start("async-example")
    assert (await hub.run(thread_id, run_id))["status"] == "queued"

    reply = await hub.request("POST", f"/v1/threads/{thread_id}/runs/{run_id}/cancel")
    assert reply.json()["status"] == "cancelling"
    events = await hub.events(thread_id, run_id, units=1)

    assert [e.name for e in events] == [
        "thread.run.created",
        "thread.run.queued",
        "thread.run.cancelling",
        "thread.run.cancelled",
    ]
    assert [e.id for e in events] == [1, 2, 3, 4]
    assert (await hub.run(thread_id, run_id))["status"] == "cancelled"
    assert (await hub.run(busy_thread, busy_run))["status"] == "in_progress"
    await hub.request("POST", f"/v1/threads/{busy_thread}/runs/{busy_run}/cancel")
    check_run(await hub.events(busy_thread, busy_run, units=1), "thread.run.cancelled")


RACER = """
import asyncio

async def run(env):
    # A completion left streaming: ending the run cancels its pump and awaits it.
    await env.acompletion("What is virtue?", stream=True)
    # In-process test hook: a cancel request that lands during that await, exactly as
    # a POST .../cancel arriving at that moment does.
    ctx = env._ctx
    loop = asyncio.get_running_loop()
    loop.call_soon(lambda: loop.create_task(ctx.manager.cancel(ctx.run.thread_id, ctx.run.id)))
"""


async def test_cancel_while_the_run_is_finishing_still_ends_it(
    start_hub: StartHub, tmp_path: Path
) -> None:
    """Runtime bug: RunContext.end() cancels the run's task even while RunContext._finish()
    is running; the CancelledError escapes _finish, so no terminal event is ever published,
    the stream never closes, and the run stays 'cancelling' in the store."""
    write_agent(tmp_path, "racer", RACER)
    hub = await start_hub(agents=(tmp_path,), model=SLOW_MODEL)
    thread_id, run_id = await hub.start("racer")

    try:
        reply = await hub.stream(thread_id, run_id, units=1)
    except TimeoutError:
        run = await hub.run(thread_id, run_id)
        raise AssertionError(
            f"the run's stream never ended; the run is stuck {run['status']!r}"
        ) from None

    events = reply.events()
    check_run(events, None)
    assert events[-1].name in ("thread.run.cancelled", "thread.run.completed")
    assert (await hub.run(thread_id, run_id))["status"] in ("cancelled", "completed")
