"""The registry's running totals: published, delivered, writes, gaps, snapshots."""

from __future__ import annotations

import asyncio

from broker import BrokerConfig, Registry

from .helpers import CollectingSink


async def turn() -> None:
    await asyncio.sleep(0)  # one loop turn: the scheduled flush runs


async def test_published_delivered_and_writes_are_counted() -> None:
    registry = Registry()
    stream = registry.create("k")
    first, second = CollectingSink(), CollectingSink()
    stream.subscribe(first)
    stream.subscribe(second)
    for i in range(3):
        stream.publish("e", {"i": i})
    await turn()
    counters = registry.counters
    assert counters.published == 3
    assert counters.delivered == 6  # three events to each of two subscribers
    assert counters.writes == 2  # one coalesced write each
    late = CollectingSink()
    stream.subscribe(late, cursor=1)
    assert (counters.delivered, counters.writes) == (8, 3)
    assert (counters.gaps, counters.snapshots) == (0, 0)


async def test_gaps_and_snapshots_are_counted_per_subscriber() -> None:
    registry = Registry(BrokerConfig(max_events_per_stream=2))
    stream = registry.create("k", snapshot=lambda at: [("state", {"at": at})])
    for i in range(5):
        stream.publish("e", {"i": i})
    stream.subscribe(CollectingSink())  # from the start: behind the buffer
    stream.subscribe(CollectingSink(), cursor=1)
    assert (registry.counters.gaps, registry.counters.snapshots) == (2, 2)
    stalled = [CollectingSink(), CollectingSink()]
    subs = [stream.subscribe(sink, cursor=5) for sink in stalled]
    for sink in stalled:
        sink.stalled = True
    stream.publish("e", {"i": 5})
    await turn()  # both are written once, then paused
    for _ in range(3):
        stream.publish("e", {"i": 6})
    for sink, sub in zip(stalled, subs, strict=True):
        sink.unblock()
        stream.resume(sub)  # each is now behind the 2-event buffer
    assert (registry.counters.gaps, registry.counters.snapshots) == (4, 4)
    # An explicit resume snapshot (snapshot=1) counts as a snapshot, not a gap.
    stream.subscribe(CollectingSink(), cursor=8, snapshot=True)
    assert (registry.counters.gaps, registry.counters.snapshots) == (4, 5)
