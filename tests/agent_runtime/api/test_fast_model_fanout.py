"""A model as fast as possible (``rate=0``, bursts of chunks per loop turn) fanned out to
many subscribers through a real hub: each gets every event exactly once, in order, and
the deltas spell the stored message, whether it joined before, during or after them."""

from __future__ import annotations

import asyncio

from ..conftest import HubClient, StartHub, text_of, within

TOKENS = 2000
SUBSCRIBERS = 100


async def test_every_delta_reaches_every_subscriber_exactly_once_in_order(
    start_hub: StartHub,
) -> None:
    client: HubClient = await start_hub(model=f"simulated:tokens={TOKENS},rate=0")
    thread_id, run_id = await client.start("async-example")
    async with within(20):
        bodies = await asyncio.gather(
            *(client.stream(thread_id, run_id, units=20) for _ in range(SUBSCRIBERS))
        )
    [stored] = await client.assistant_texts(thread_id)
    assert len(stored.split()) > TOKENS // 2
    events = bodies[0].events()
    assert [e.id for e in events] == list(range(1, len(events) + 1))  # once, in order
    assert events[-1].name == "thread.run.completed"
    deltas = [e for e in events if e.name == "thread.message.delta"]
    assert "".join(e.text for e in deltas) == stored
    [completed] = [e for e in events if e.name == "thread.message.completed"]
    assert text_of(completed.data) == stored
    # Every subscriber, whenever it joined, got the very same bytes (events are encoded once).
    for reply in bodies:
        assert reply.status == 200 and reply.body == bodies[0].body
