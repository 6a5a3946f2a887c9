"""Concurrency: 200 runs of an asynchronous agent at once, and several streamed completions
inside one run (interleaved deltas, each naming its message)."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import pytest

from agent_runtime.models.simulated import RATE0_BURST, simulated_text

from ..conftest import (
    PACED_MODEL,
    PLATO,
    SOCRATES,
    HubClient,
    StartHub,
    check_run,
    with_examples,
    within,
)
from ..sse import Ev

RUNS = 200


async def test_200_concurrent_runs_of_an_async_agent(start_hub: StartHub) -> None:
    hub = await start_hub(model="simulated:tokens=6,rate=0")

    async def one(index: int) -> tuple[str, list[str]]:
        thread_id = await hub.create_thread(f"Question number {index}?")
        reply = await hub.request(
            "POST",
            f"/v1/threads/{thread_id}/runs",
            json_body={"assistant_id": "async-example", "stream": True},
        )
        assert reply.status == 200, reply.body
        trace = check_run(reply.events("openai")[:-1], "thread.run.completed")
        assert len(trace.messages) == 1
        return thread_id, trace.texts

    async with within(20):
        results = await asyncio.gather(*(one(i) for i in range(RUNS)))

    assert len({thread_id for thread_id, _texts in results}) == RUNS
    for thread_id, texts in results:
        assert texts == await hub.assistant_texts(thread_id)
    assert len({t for _thread, (t,) in results}) > 1  # each run answered its own thread
    assert hub.hub.runs.live_count == 0
    assert hub.hub.runs.finished["completed"] == RUNS


async def test_many_live_runs_with_many_subscribers(start_hub: StartHub) -> None:
    """Runs live at the same time, each with subscribers joining from the start and
    mid-run: every subscriber of a run gets the same bytes."""
    hub = await start_hub(model="simulated:tokens=20,rate=400")

    async def one(index: int) -> None:
        thread_id, run_id = await hub.start("async-example", f"Topic {index}?")
        async with hub.reader(thread_id, run_id) as early:
            await early.until(lambda e: e.name == "thread.message.delta")
            async with hub.reader(thread_id, run_id) as late:
                await asyncio.gather(early.rest(), late.rest())
        assert early.body == late.body
        trace = check_run(early.events)
        assert trace.texts == await hub.assistant_texts(thread_id)

    async with within(10):
        await asyncio.gather(*(one(i) for i in range(40)))


async def read_run(hub: HubClient, agent: str) -> tuple[str, list[Ev]]:
    thread_id, run_id = await hub.start(agent)
    return thread_id, await hub.events(thread_id, run_id)


@pytest.mark.parametrize(
    ("agent", "model"),
    [
        # Both start in one loop step; at rate=0 each streams bursts of RATE0_BURST tokens.
        ("two-streams", f"simulated:tokens={4 * RATE0_BURST},rate=0"),
        ("two-streams", PACED_MODEL),
        # A synchronous agent starts its second completion a thread round trip later: at
        # rate=0 the first may be over by then, so only a paced model must interleave.
        ("two-streams-sync", PACED_MODEL),
    ],
)
async def test_two_stream_handlers_in_one_run(
    start_hub: StartHub, agents_dir: Path, agent: str, model: str
) -> None:
    hub = await start_hub(agents=with_examples(agents_dir), model=model)

    thread_id, events = await read_run(hub, agent)

    trace = check_run(events)
    first, second = trace.messages
    tokens = int(model.split("tokens=")[1].split(",")[0])
    question = {"role": "user", "content": "What is virtue?"}
    assert first.text == simulated_text([SOCRATES, question], tokens=tokens)
    assert second.text == simulated_text([PLATO, question], tokens=tokens)
    assert first.delta_text == first.text and second.delta_text == second.text

    deltas = [e.message_id for e in events if e.name == "thread.message.delta"]
    switches = sum(1 for a, b in itertools.pairwise(deltas) if a != b)
    assert switches > 2, f"the two completions' deltas are interleaved: {deltas}"
    if agent == "two-streams":  # both are started in one step of the loop
        names = [e.name for e in events]
        first_delta = names.index("thread.message.delta")
        assert names[3:first_delta] == ["thread.message.created", "thread.message.in_progress"] * 2
    assert await hub.assistant_texts(thread_id) == [first.text, second.text]
