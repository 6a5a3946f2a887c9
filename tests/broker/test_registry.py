"""The registry: keys, retention, stream and subscriber limits, byte budget, stats, shutdown."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from broker.config import BrokerConfig
from broker.errors import LimitExceeded, StreamExists
from broker.events import Event
from broker.registry import Registry
from broker.stream import SubState

from .helpers import UNIT, CollectingSink, eventually


def event_size(payload: Any, name: str = "e") -> int:
    return Event.create(1, name, payload).size


def test_config_validation() -> None:
    for field in ("max_events_per_stream", "max_bytes_per_stream", "high_water"):
        with pytest.raises(ValueError):
            BrokerConfig(**{field: 0})
    for field in ("retention", "keepalive", "stall_timeout"):
        with pytest.raises(ValueError):
            BrokerConfig(**{field: 0})
        with pytest.raises(ValueError):
            BrokerConfig(**{field: -1.0})
    BrokerConfig(max_total_bytes=None, max_streams=None)


async def test_create_get_and_duplicate_key() -> None:
    registry = Registry()
    stream = registry.create("a", snapshot=lambda at: [])
    assert registry.get("a") is stream and "a" in registry
    assert registry.get("b") is None and "b" not in registry
    with pytest.raises(StreamExists):
        registry.create("a")
    other = registry.create("b")
    assert list(registry) == [stream, other]
    assert stream.buffer.max_events == registry.config.max_events_per_stream
    assert stream.buffer.max_bytes == registry.config.max_bytes_per_stream
    registry.shutdown()


async def test_duplicate_key_while_retained_then_free_after_discard() -> None:
    registry = Registry()
    stream = registry.create("a")
    stream.close()
    with pytest.raises(StreamExists):
        registry.create("a")
    registry.discard("a")
    registry.discard("a")  # idempotent
    assert registry.create("a") is not stream
    registry.shutdown()


async def test_closed_stream_is_retained_then_dropped() -> None:
    registry = Registry(BrokerConfig(retention=0.05 * UNIT))
    stream = registry.create("a")
    stream.publish("e", {"x": 1})
    sink = CollectingSink()
    sink.stalled = True
    sub = stream.subscribe(sink)  # a paused subscriber keeps no stream alive
    assert sub.state is SubState.PAUSED
    stream.close()
    assert registry.get("a") is stream  # retained for late joiners
    await eventually(lambda: "a" not in registry, units=2, what="retention expiry")
    assert sub.state is SubState.DROPPED
    assert registry.budget.used == 0 and registry.subscriber_count == 0
    registry.shutdown()


async def test_open_streams_are_not_expired() -> None:
    registry = Registry(BrokerConfig(retention=0.01 * UNIT))
    registry.create("open")
    closed = registry.create("closed")
    closed.close()
    await eventually(lambda: "closed" not in registry, units=2, what="retention expiry")
    assert "open" in registry
    registry.shutdown()


async def test_a_discarded_key_reused_is_not_expired_by_the_old_timer() -> None:
    registry = Registry(BrokerConfig(retention=0.05 * UNIT))
    registry.create("a").close()
    registry.discard("a")
    fresh = registry.create("a")
    marker = registry.create("marker")
    marker.close()  # closed after the first "a": expires after it
    await eventually(lambda: "marker" not in registry, units=2, what="marker expiry")
    assert registry.get("a") is fresh
    registry.shutdown()


async def test_max_streams_drops_retained_streams_first_then_refuses() -> None:
    registry = Registry(BrokerConfig(max_streams=2))
    a = registry.create("a")
    b = registry.create("b")
    with pytest.raises(LimitExceeded) as info:
        registry.create("c")
    assert info.value.limit == "max_streams"
    assert set(registry) == {a, b}
    b.close()
    await asyncio.sleep(0)  # a loop turn between the two closes (distinct close times)
    a.close()
    c = registry.create("c")  # b closed longest ago: dropped
    assert "b" not in registry and registry.get("a") is a and registry.get("c") is c
    d = registry.create("d")
    assert "a" not in registry and set(registry) == {c, d}
    with pytest.raises(LimitExceeded):
        registry.create("e")
    registry.shutdown()


async def test_retained_streams_are_dropped_oldest_first_when_over_budget() -> None:
    payload = {"pad": "x" * 100}
    size = event_size(payload)
    registry = Registry(BrokerConfig(max_total_bytes=10 * size))
    old = registry.create("old")
    young = registry.create("young")
    for _ in range(3):
        old.publish("e", payload)
        young.publish("e", payload)
    old.close()
    await asyncio.sleep(0)
    young.close()
    live = registry.create("live")
    for _ in range(4):
        live.publish("e", payload)
    assert registry.budget.used == 10 * size and not registry.budget.over
    live.publish("e", payload)  # 11 events: the longest retained stream goes
    assert "old" not in registry and "young" in registry
    assert registry.budget.used == 8 * size
    for _ in range(3):
        live.publish("e", payload)
    assert "young" not in registry and "live" in registry
    assert len(live.buffer) == 8 and live.buffer.first_id == 1
    registry.shutdown()
    assert registry.budget.used == 0


async def test_a_live_publisher_over_budget_trims_itself() -> None:
    payload = {"pad": "y" * 200}
    size = event_size(payload)
    registry = Registry(BrokerConfig(max_total_bytes=16 * size))
    other = registry.create("other")  # open streams of others are not touched
    for _ in range(4):
        other.publish("e", payload)
    live = registry.create("live")
    published = [live.publish("e", payload) for _ in range(100)]
    assert not registry.budget.over
    assert registry.budget.used <= 16 * size
    assert len(other.buffer) == 4
    assert live.head == 100 and live.buffer.first_id > 1
    assert (
        list(live.buffer.since(live.buffer.first_id - 1)) == published[live.buffer.first_id - 1 :]
    )
    assert registry.budget.used == other.buffer.nbytes + live.buffer.nbytes
    registry.shutdown()


async def test_a_single_event_larger_than_the_budget_is_kept() -> None:
    registry = Registry(BrokerConfig(max_total_bytes=100))
    live = registry.create("live")
    event = live.publish("e", {"pad": "z" * 500})
    event = live.publish("e", {"pad": "z" * 500})
    assert list(live.buffer.since(1)) == [event]  # the newest always stays
    registry.shutdown()


async def test_subscriber_limit_per_stream() -> None:
    registry = Registry(BrokerConfig(max_subscribers_per_stream=2))
    a = registry.create("a")
    b = registry.create("b")
    subs = []
    for _ in range(2):
        registry.check_subscribe(a)
        subs.append(a.subscribe(CollectingSink()))
    with pytest.raises(LimitExceeded) as info:
        registry.check_subscribe(a)
    assert info.value.limit == "max_subscribers_per_stream"
    registry.check_subscribe(b)
    a.unsubscribe(subs[0])
    registry.check_subscribe(a)
    registry.shutdown()


async def test_subscriber_limit_in_total() -> None:
    registry = Registry(BrokerConfig(max_subscribers=3))
    a = registry.create("a")
    b = registry.create("b")
    a.subscribe(CollectingSink())
    a.subscribe(CollectingSink())
    sub = b.subscribe(CollectingSink())
    assert registry.subscriber_count == 3
    for stream in (a, b):
        with pytest.raises(LimitExceeded) as info:
            registry.check_subscribe(stream)
        assert info.value.limit == "max_subscribers"
    b.close()
    await asyncio.sleep(0)  # b's subscriber finishes on the flush
    assert sub.state is SubState.DONE and registry.subscriber_count == 2
    registry.check_subscribe(a)
    registry.shutdown()


async def test_stats() -> None:
    registry = Registry(BrokerConfig(max_events_per_stream=3))
    a = registry.create("a")
    b = registry.create("b")
    for n in range(5):
        a.publish("e", {"n": n})
    slow = CollectingSink()
    slow.stalled = True
    a.subscribe(slow, 2)  # backlog 3..5 written, then paused at 5
    a.subscribe(CollectingSink())
    for n in range(4):
        a.publish("e", {"n": n})
    b.publish("e", {})
    b.close()
    await asyncio.sleep(0)
    stats = registry.stats()
    assert (stats.streams, stats.open_streams, stats.subscribers) == (2, 1, 2)
    assert stats.buffered_bytes == a.buffer.nbytes + b.buffer.nbytes == registry.budget.used
    by_key = {s.key: s for s in stats.per_stream}
    sa, sb = by_key["a"], by_key["b"]
    assert (sa.subscribers, sa.paused_subscribers, sa.head_id) == (2, 1, 9)
    assert (sa.oldest_buffered_id, sa.buffered_events, sa.slowest_lag) == (7, 3, 4)
    assert not sa.closed
    assert (sb.subscribers, sb.head_id, sb.oldest_buffered_id, sb.slowest_lag) == (0, 1, 1, 0)
    assert sb.closed
    registry.shutdown()


async def test_shutdown_cancels_timers_and_drops_everything() -> None:
    registry = Registry(BrokerConfig(retention=60.0))
    open_stream = registry.create("open")
    closed_stream = registry.create("closed")
    open_stream.publish("e", {})
    sub_open = open_stream.subscribe(CollectingSink())
    sub_closed = closed_stream.subscribe(CollectingSink())
    closed_stream.close()  # arms a retention timer
    timers = list(registry._expiry.values())  # white-box: the call_later handles
    assert len(timers) == 1 and not timers[0].cancelled()
    registry.shutdown()
    assert timers[0].cancelled()
    assert list(registry) == [] and registry.stats().streams == 0
    assert sub_open.state is SubState.DROPPED
    assert sub_closed.state in (SubState.DONE, SubState.DROPPED)
    assert registry.subscriber_count == 0 and registry.budget.used == 0
    with pytest.raises(LimitExceeded) as info:
        registry.create("new")
    assert info.value.limit == "shutdown"
    registry.shutdown()  # idempotent


async def test_close_after_shutdown_arms_no_timer() -> None:
    registry = Registry()
    stream = registry.create("a")
    registry.shutdown()
    stream.close()
    assert registry._expiry == {}


async def test_resume_snapshot_is_passed_to_the_stream() -> None:
    registry = Registry(BrokerConfig(max_events_per_stream=2))
    stream = registry.create("a", resume_snapshot=lambda at: [("resume", {"at": at})])
    for n in range(4):
        stream.publish("e", {"n": n})
    sink = CollectingSink()
    stream.subscribe(sink, 3, snapshot=True)
    assert sink.data.startswith(b'id: 3\ndata: {"event":"resume","data":{"at":3}}\n\n')
    registry.shutdown()


async def test_wait_idle() -> None:
    registry = Registry()
    assert await registry.wait_idle(0.01 * UNIT)
    stream = registry.create("a")
    stream.publish("e", {})
    sink = CollectingSink()
    sink.stalled = True
    sub = stream.subscribe(sink)
    assert sub.state is SubState.PAUSED
    assert not await registry.wait_idle(0.02 * UNIT)  # a stalled subscriber: times out
    waiting = asyncio.create_task(registry.wait_idle(5 * UNIT))
    await asyncio.sleep(0)
    stream.unsubscribe(sub)
    assert await waiting
    registry.shutdown()
