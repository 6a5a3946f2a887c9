"""Stream and Subscription: delivery, batching, backpressure, gaps and snapshots.

Delivery of published events happens on the next loop turn (a ``call_soon`` flush);
``await turn()`` (one ``asyncio.sleep(0)``) lets it run. That is a loop turn, not a timing
sleep.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from typing import Any

import pytest

from broker.buffer import ByteBudget
from broker.config import BrokerConfig
from broker.errors import InvalidCursor, InvalidEvent, StreamClosed
from broker.events import DONE_FRAME, Event, Framing
from broker.registry import Registry
from broker.stream import Stream, SubscriberTotal, SubState
from broker.types import StreamStats

from .helpers import GAP, CollectingSink, Rec, check_sequence, records_of, tracked_held, within

DEFAULT = Framing.DEFAULT
OPENAI = Framing.OPENAI


async def turn() -> None:
    """Let the loop run the pending flush (one loop turn)."""
    await asyncio.sleep(0)


def snap(at: int) -> list[tuple[str, Any]]:
    return [("thread.run", {"at": at}), ("thread.message.created", {"at": at, "text": "so\nfar"})]


def publish_n(stream: Stream, n: int, pad: int = 0) -> list[tuple[str, Any]]:
    out = []
    for _ in range(n):
        payload = {"i": stream.head + 1, "pad": "p" * pad}
        stream.publish("e", payload)
        out.append(("e", payload))
    return out


def test_a_stream_needs_a_running_loop() -> None:
    with pytest.raises(RuntimeError):
        Stream("k")


async def test_publish_assigns_consecutive_ids() -> None:
    stream = Stream("k")
    events = [stream.publish("e", {"n": n}) for n in range(3)]
    assert [e.id for e in events] == [1, 2, 3]
    assert stream.head == 3
    assert events[1] == Event.create(2, "e", {"n": 1})


async def test_subscribe_writes_the_backlog_at_once_in_one_write() -> None:
    stream = Stream("k")
    events = [stream.publish("e", {"n": n}) for n in range(3)]
    sink = CollectingSink()
    sub = stream.subscribe(sink)
    assert sink.writes == [b"".join(e.frame(DEFAULT) for e in events)]
    assert sub.cursor == 3 and sub.state is SubState.LIVE and sub.lag == 0


async def test_subscribe_from_a_cursor() -> None:
    stream = Stream("k")
    events = [stream.publish("e", {"n": n}) for n in range(5)]
    sink = CollectingSink()
    stream.subscribe(sink, 2, OPENAI)
    assert sink.writes == [b"".join(e.frame(OPENAI) for e in events[2:])]
    caught_up = CollectingSink()
    stream.subscribe(caught_up, 5)
    assert caught_up.writes == []


async def test_publish_never_writes_and_delivers_on_the_next_turn_in_one_write() -> None:
    stream = Stream("k")
    sink = CollectingSink()
    sub = stream.subscribe(sink)
    published = publish_n(stream, 100)
    assert sink.writes == []  # publishing never writes to a subscriber
    await turn()
    assert len(sink.writes) == 1
    check_sequence(records_of(sink.data), published=published, start=0)
    assert sub.cursor == 100
    await turn()
    assert len(sink.writes) == 1


async def test_a_lone_event_goes_out_on_the_next_turn() -> None:
    stream = Stream("k")
    sink = CollectingSink()
    stream.subscribe(sink)
    for i in range(1, 4):
        event = stream.publish("tok", {"i": i})
        await turn()
        assert sink.writes[-1] == event.frame(DEFAULT)
    assert len(sink.writes) == 3


async def test_subscribers_at_one_position_share_the_encoded_batch() -> None:
    stream = Stream("k")
    a, b, c = CollectingSink(), CollectingSink(), CollectingSink()
    other_wire = CollectingSink(wire=lambda data: b"<" + data + b">")
    openai = CollectingSink()
    for sink in (a, b, c, other_wire):
        stream.subscribe(sink)
    stream.subscribe(openai, None, OPENAI)
    events = [stream.publish("e", {"n": n}) for n in range(4)]
    await turn()
    expected = b"".join(e.frame(DEFAULT) for e in events)
    assert a.writes == [expected]
    assert b.writes[0] is a.writes[0] and c.writes[0] is a.writes[0]  # encoded once
    assert other_wire.writes == [b"<" + expected + b">"]
    assert openai.writes == [b"".join(e.frame(OPENAI) for e in events)]


async def test_subscribers_at_different_positions() -> None:
    stream = Stream("k")
    published = publish_n(stream, 4)
    a, b = CollectingSink(), CollectingSink()
    stream.subscribe(a, 1)
    stream.subscribe(b, 3)
    published += publish_n(stream, 2)
    await turn()
    assert check_sequence(records_of(a.data), published=published, start=1).cursor == 6
    assert check_sequence(records_of(b.data), published=published, start=3).cursor == 6


async def test_subscribing_while_a_flush_is_pending_gives_no_duplicates() -> None:
    stream = Stream("k")
    first = CollectingSink()
    stream.subscribe(first)
    published = publish_n(stream, 2)  # a flush is now pending
    late = CollectingSink()
    stream.subscribe(late)
    assert len(late.writes) == 1
    await turn()
    published += publish_n(stream, 1)
    await turn()
    for sink in (first, late):
        assert check_sequence(records_of(sink.data), published=published, start=0).cursor == 3


# -- end of the stream ------------------------------------------------------------------------


async def test_close_delivers_the_rest_then_finishes_every_subscriber() -> None:
    closed: list[Stream] = []
    total = SubscriberTotal()
    stream = Stream("k", on_close=closed.append, subscriber_total=total)
    default, openai = CollectingSink(), CollectingSink()
    sub_d = stream.subscribe(default)
    sub_o = stream.subscribe(openai, None, OPENAI)
    assert total.n == 2
    published = publish_n(stream, 3)
    stream.close()
    stream.close()  # idempotent
    assert closed == [stream]
    assert stream.closed and stream.closed_at is not None
    async with within():
        assert await sub_d.wait() is SubState.DONE
        assert await sub_o.wait() is SubState.DONE
    assert stream.subscriber_count == 0 and total.n == 0
    recs = records_of(default.data)
    assert check_sequence(recs, published=published, start=0).cursor == 3
    assert not any(r.done for r in recs)
    result = check_sequence(records_of(openai.data, OPENAI), published=published, start=0)
    assert result.done_frame and result.cursor == 3
    assert openai.data.endswith(DONE_FRAME) and openai.data.count(DONE_FRAME) == 1


async def test_close_of_an_idle_stream_finishes_caught_up_subscribers() -> None:
    stream = Stream("k")
    publish_n(stream, 2)
    default, openai = CollectingSink(), CollectingSink()
    sub_d = stream.subscribe(default)
    sub_o = stream.subscribe(openai, None, OPENAI)
    n_default = len(default.writes)
    stream.close()
    async with within():
        assert await sub_d.wait() is SubState.DONE
        assert await sub_o.wait() is SubState.DONE
    assert len(default.writes) == n_default  # nothing more to say in the default framing
    assert openai.writes[-1] == DONE_FRAME


async def test_subscribing_to_a_closed_stream_is_done_at_once() -> None:
    total = SubscriberTotal()
    stream = Stream("k", subscriber_total=total)
    published = publish_n(stream, 3)
    stream.close()
    sink = CollectingSink()
    sub = stream.subscribe(sink, 1, OPENAI)
    assert sub.state is SubState.DONE and stream.subscriber_count == 0 and total.n == 0
    assert len(sink.writes) == 1
    result = check_sequence(records_of(sink.data, OPENAI), published=published, start=1)
    assert result.done_frame and result.cursor == 3
    at_end = CollectingSink()
    assert stream.subscribe(at_end, 3).state is SubState.DONE
    assert at_end.writes == []


async def test_publish_after_close_raises() -> None:
    stream = Stream("k")
    stream.close()
    with pytest.raises(StreamClosed):
        stream.publish("e", {})
    assert stream.head == 0


async def test_invalid_publish_appends_nothing() -> None:
    stream = Stream("k")
    sink = CollectingSink()
    stream.subscribe(sink)
    with pytest.raises(InvalidEvent):
        stream.publish("bad\nname", {})
    with pytest.raises(InvalidEvent):
        stream.publish("e", {"x": object()})
    assert stream.head == 0
    await turn()
    assert sink.writes == []
    stream.publish("e", 1)
    assert stream.head == 1


async def test_at_end_and_check_cursor() -> None:
    stream = Stream("k")
    publish_n(stream, 2)
    stream.check_cursor(None)
    stream.check_cursor(0)
    stream.check_cursor(2)
    for bad in (3, -1):
        with pytest.raises(InvalidCursor):
            stream.check_cursor(bad)
    assert not stream.at_end(2)
    stream.close()
    assert stream.at_end(2)
    assert not stream.at_end(1)
    assert not stream.at_end(None)


async def test_a_cursor_ahead_of_the_stream_is_refused_and_adds_nothing() -> None:
    total = SubscriberTotal()
    stream = Stream("k", subscriber_total=total)
    publish_n(stream, 2)
    for bad in (3, -1, 10**17):
        with pytest.raises(InvalidCursor):
            stream.subscribe(CollectingSink(), bad)
    assert stream.subscriber_count == 0 and total.n == 0


# -- backpressure -----------------------------------------------------------------------------


async def test_a_stalled_sink_is_paused_and_not_written_until_resumed() -> None:
    stream = Stream("k")
    published = publish_n(stream, 2)
    slow, fast = CollectingSink(), CollectingSink()
    slow.stalled = True
    sub = stream.subscribe(slow)
    stream.subscribe(fast)
    assert sub.state is SubState.PAUSED  # the backlog write filled it
    async with within():
        assert await sub.wait() is SubState.PAUSED
    published += publish_n(stream, 5)
    await turn()
    assert len(slow.writes) == 1 and slow.violations == []
    assert check_sequence(records_of(fast.data), published=published, start=0).cursor == 7
    stats = stream.stats()
    assert (stats.subscribers, stats.paused_subscribers, stats.slowest_lag) == (2, 1, 5)
    assert sub.lag == 5
    slow.unblock()
    stream.resume(sub)
    assert sub.state is SubState.LIVE
    assert len(slow.writes) == 2  # caught up in one write, at once
    assert check_sequence(records_of(slow.data), published=published, start=0).cursor == 7
    stream.resume(sub)  # not paused: nothing happens
    assert len(slow.writes) == 2


async def test_a_paused_subscriber_finishes_when_resumed_after_close() -> None:
    stream = Stream("k")
    sink = CollectingSink()
    sub = stream.subscribe(sink, None, OPENAI)
    published = publish_n(stream, 1)
    sink.stalled = True
    await turn()
    assert sub.state is SubState.PAUSED
    published += publish_n(stream, 3)
    stream.close()
    await turn()
    assert sub.state is SubState.PAUSED and stream.subscriber_count == 1
    sink.unblock()
    stream.resume(sub)
    assert sub.state is SubState.DONE and stream.subscriber_count == 0
    result = check_sequence(records_of(sink.data, OPENAI), published=published, start=0)
    assert result.done_frame and result.cursor == 4 and sink.violations == []


async def test_resume_after_falling_behind_gets_gap_then_snapshot() -> None:
    calls: list[tuple[int, int]] = []
    stream: Stream

    def snapshot(at: int) -> list[tuple[str, Any]]:
        calls.append((at, stream.head))
        return snap(at)

    stream = Stream("k", BrokerConfig(max_events_per_stream=3), snapshot=snapshot)
    sink = CollectingSink()
    sink.stalled = True
    published = publish_n(stream, 1)
    sub = stream.subscribe(sink)
    assert sub.state is SubState.PAUSED and sub.cursor == 1
    published += publish_n(stream, 9)
    await turn()
    sink.unblock()
    stream.resume(sub)
    recs = records_of(sink.data)
    assert recs[1] == Rec(None, GAP, {"from": 1, "to": 11})
    assert recs[2:] == [
        Rec(None, "thread.run", {"at": 10}),
        Rec(10, "thread.message.created", {"at": 10, "text": "so\nfar"}),
    ]
    assert calls == [(10, 10)]
    published += publish_n(stream, 2)
    await turn()
    result = check_sequence(records_of(sink.data), published=published, start=0, snapshot=snap)
    assert result.gaps == [(1, 11)] and result.cursor == 12


async def test_a_burst_larger_than_the_buffer_in_one_turn_reaches_live_subscribers_whole() -> None:
    """A burst of publishes (or a batch appended from another node) bigger than the replay
    buffer, within one loop turn: subscribers that keep up get every event, no gap (the
    stream flushes before it would evict what they have not been written yet). Only a
    paused subscriber falls out of the buffer."""
    stream = Stream("k", BrokerConfig(max_events_per_stream=5), snapshot=snap)
    live, stalled = CollectingSink(), CollectingSink()
    stalled.stalled = True
    live_sub = stream.subscribe(live)
    stalled_sub = stream.subscribe(stalled)
    published = publish_n(stream, 1)
    await turn()
    assert stalled_sub.state is SubState.PAUSED
    published += publish_n(stream, 17)
    for event_id in range(19, 31):  # as a mirror appends what it read from another node
        payload = {"i": event_id, "pad": ""}
        stream.append(Event.create(event_id, "e", payload))
        published.append(("e", payload))
    await turn()
    result = check_sequence(records_of(live.data), published=published, start=0)
    assert result.gaps == [] and result.cursor == 30 == live_sub.cursor
    assert live.violations == [] and stalled.violations == []
    stalled.unblock()
    stream.resume(stalled_sub)
    behind = check_sequence(records_of(stalled.data), published=published, start=0, snapshot=snap)
    assert behind.gaps == [(0, 31)]


async def test_gap_without_snapshot_says_what_is_missing_and_goes_on() -> None:
    stream = Stream("k", BrokerConfig(max_events_per_stream=3))
    published = publish_n(stream, 10)
    sink = CollectingSink()
    stream.subscribe(sink, 2)
    recs = records_of(sink.data)
    assert recs[0] == Rec(None, GAP, {"from": 2, "to": 8})
    assert [r.id for r in recs[1:]] == [8, 9, 10]
    assert check_sequence(recs, published=published, start=2).gaps == [(2, 8)]


async def test_the_gap_event_is_named_by_the_configuration() -> None:
    registry = Registry(BrokerConfig(max_events_per_stream=3, gap_event="feed.behind"))
    stream = registry.create("k")
    publish_n(stream, 10)
    sink = CollectingSink()
    stream.subscribe(sink, 2)
    assert records_of(sink.data)[0] == Rec(None, "feed.behind", {"from": 2, "to": 8})
    registry.shutdown()


def test_a_gap_event_name_that_cannot_be_framed_is_refused() -> None:
    with pytest.raises(ValueError, match="gap_event"):
        BrokerConfig(gap_event="two\nlines")


async def test_fresh_join_after_eviction_gets_gap_and_snapshot_at_head() -> None:
    stream = Stream("k", BrokerConfig(max_events_per_stream=5), snapshot=snap)
    published = publish_n(stream, 20)
    sink = CollectingSink()
    stream.subscribe(sink)
    recs = records_of(sink.data)
    assert recs[0] == Rec(None, GAP, {"from": 0, "to": 21})
    assert [r.id for r in recs] == [None, None, 20]
    assert check_sequence(recs, published=published, start=0, snapshot=snap).cursor == 20


async def test_snapshot_on_request_then_exact_tail() -> None:
    calls: list[int] = []

    def snapshot(at: int) -> list[tuple[str, Any]]:
        calls.append(at)
        return snap(at)

    stream = Stream("k", BrokerConfig(max_events_per_stream=5), snapshot=snapshot)
    published = publish_n(stream, 20)
    sink = CollectingSink()
    stream.subscribe(sink, 17, snapshot=True)
    assert calls == [17]
    recs = records_of(sink.data)
    assert [r.id for r in recs] == [None, 17, 18, 19, 20]
    result = check_sequence(
        recs, published=published, start=17, snapshot=snap, snapshot_prefix=True
    )
    assert result.snapshots == [17] and result.gaps == []


async def test_snapshot_on_request_is_not_sent_from_the_start_or_without_a_callback() -> None:
    calls: list[int] = []
    stream = Stream("k", snapshot=lambda at: calls.append(at) or snap(at))
    published = publish_n(stream, 3)
    sink = CollectingSink()
    stream.subscribe(sink, 0, snapshot=True)
    stream.subscribe(CollectingSink(), None, snapshot=True)
    assert calls == []
    assert check_sequence(records_of(sink.data), published=published, start=0).cursor == 3
    plain = Stream("p")
    published = publish_n(plain, 3)
    other = CollectingSink()
    plain.subscribe(other, 1, snapshot=True)
    assert check_sequence(records_of(other.data), published=published, start=1).cursor == 3


async def test_snapshot_on_request_at_the_head() -> None:
    stream = Stream("k", snapshot=snap)
    publish_n(stream, 3)
    sink = CollectingSink()
    stream.subscribe(sink, 3, snapshot=True)
    assert [r.id for r in records_of(sink.data)] == [None, 3]


async def test_snapshot_on_request_inside_a_gap_sends_one_snapshot() -> None:
    calls: list[int] = []
    stream = Stream(
        "k", BrokerConfig(max_events_per_stream=2), snapshot=lambda at: calls.append(at) or snap(at)
    )
    published = publish_n(stream, 10)
    sink = CollectingSink()
    stream.subscribe(sink, 3, snapshot=True)
    assert calls == [10]
    result = check_sequence(records_of(sink.data), published=published, start=3, snapshot=snap)
    assert result.gaps == [(3, 11)] and result.snapshots == [10]


async def test_a_failing_snapshot_sends_the_gap_alone_stamped(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(at: int) -> list[tuple[str, Any]]:
        raise RuntimeError("boom")

    stream = Stream("k", BrokerConfig(max_events_per_stream=2), snapshot=broken)
    publish_n(stream, 6)
    sink = CollectingSink()
    with caplog.at_level(logging.ERROR, logger="broker.stream"):
        sub = stream.subscribe(sink)
    assert records_of(sink.data) == [Rec(6, GAP, {"from": 0, "to": 7})]
    assert any("snapshot" in r.message for r in caplog.records)
    assert sub.cursor == 6 and sub.state is SubState.LIVE


async def test_an_empty_snapshot_leaves_the_gap_stamped() -> None:
    stream = Stream("k", BrokerConfig(max_events_per_stream=2), snapshot=lambda at: [])
    publish_n(stream, 6)
    sink = CollectingSink()
    stream.subscribe(sink)
    assert records_of(sink.data) == [Rec(6, GAP, {"from": 0, "to": 7})]


async def test_an_unserialisable_snapshot_is_treated_as_failed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stream = Stream(
        "k",
        BrokerConfig(max_events_per_stream=2),
        snapshot=lambda at: [("ok", 1), ("bad", object())],
    )
    publish_n(stream, 6)
    sink = CollectingSink()
    with caplog.at_level(logging.ERROR, logger="broker.stream"):
        stream.subscribe(sink)
    assert records_of(sink.data) == [Rec(6, GAP, {"from": 0, "to": 7})]


# -- leaving ----------------------------------------------------------------------------------


async def test_a_closing_sink_is_dropped_at_the_next_delivery() -> None:
    total = SubscriberTotal()
    stream = Stream("k", subscriber_total=total)
    sink = CollectingSink()
    sub = stream.subscribe(sink)
    sink.closing = True
    stream.publish("e", {})
    await turn()
    async with within():
        assert await sub.wait() is SubState.DROPPED
    assert sink.writes == [] and sink.violations == []
    assert stream.subscriber_count == 0 and total.n == 0


async def test_a_sink_closing_at_subscribe_is_dropped_at_once() -> None:
    stream = Stream("k")
    publish_n(stream, 2)
    sink = CollectingSink()
    sink.closing = True
    sub = stream.subscribe(sink)
    assert sub.state is SubState.DROPPED and sink.writes == []
    assert stream.subscriber_count == 0


async def test_unsubscribe_is_idempotent() -> None:
    total = SubscriberTotal()
    stream = Stream("k", subscriber_total=total)
    sink = CollectingSink()
    sub = stream.subscribe(sink)
    stream.unsubscribe(sub)
    stream.unsubscribe(sub)
    assert sub.state is SubState.DROPPED and total.n == 0
    assert stream.subscriptions() == []
    stream.publish("e", {})
    await turn()
    assert sink.writes == []


async def test_discard_drops_subscribers_and_releases_the_buffer() -> None:
    budget = ByteBudget()
    total = SubscriberTotal()
    stream = Stream("k", budget=budget, subscriber_total=total)
    sinks = [CollectingSink(), CollectingSink()]
    subs = [stream.subscribe(s) for s in sinks]
    publish_n(stream, 3)  # a flush is pending
    assert budget.used > 0
    stream.discard()
    assert all(s.state is SubState.DROPPED for s in subs)
    assert budget.used == 0 and total.n == 0 and stream.closed
    await turn()
    assert all(s.writes == [] for s in sinks)  # the pending flush was cancelled
    with pytest.raises(StreamClosed):
        stream.publish("e", {})


async def test_wait_is_cancel_safe() -> None:
    stream = Stream("k")
    sub = stream.subscribe(CollectingSink())
    task = asyncio.create_task(sub.wait())
    await turn()
    assert not task.done()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert sub.state is SubState.LIVE and stream.subscriber_count == 1
    stream.close()
    async with within():
        assert await sub.wait() is SubState.DONE


async def test_wait_wakes_on_pause() -> None:
    stream = Stream("k")
    sink = CollectingSink()
    sub = stream.subscribe(sink)
    waiter = asyncio.create_task(sub.wait())
    await turn()
    sink.stalled = True
    stream.publish("e", {})
    async with within():
        assert await waiter is SubState.PAUSED


# -- budget and stats -------------------------------------------------------------------------


async def test_over_budget_calls_back_after_the_append() -> None:
    budget = ByteBudget(limit=500)
    seen: list[tuple[int, int]] = []
    stream: Stream

    def relieve(s: Stream) -> None:
        seen.append((s.head, budget.used))

    stream = Stream("k", budget=budget, on_over_budget=relieve)
    while not seen:
        stream.publish("e", {"pad": "x" * 50})
    head, used = seen[0]
    assert head == stream.head and used > 500


async def test_stats() -> None:
    stream = Stream("k", BrokerConfig(max_events_per_stream=4))
    assert stream.stats() == StreamStats(
        key="k",
        subscribers=0,
        paused_subscribers=0,
        head_id=0,
        oldest_buffered_id=1,
        buffered_events=0,
        buffered_bytes=0,
        slowest_lag=0,
        closed=False,
    )
    publish_n(stream, 6)
    slow = CollectingSink()
    slow.stalled = True
    stream.subscribe(slow, 5)
    stream.subscribe(CollectingSink())
    publish_n(stream, 2)
    await turn()
    stats = stream.stats()
    assert stats.subscribers == 2 and stats.paused_subscribers == 1
    assert stats.head_id == 8 and stats.oldest_buffered_id == 5 and stats.buffered_events == 4
    assert stats.buffered_bytes == stream.buffer.nbytes > 0
    assert stats.slowest_lag == 2 and not stats.closed


async def test_resume_snapshot_serves_requested_snapshots_and_snapshot_serves_gaps() -> None:
    def gap_snap(at: int) -> list[tuple[str, Any]]:
        return [("gap.state", {"at": at})]

    def resume_snap(at: int) -> list[tuple[str, Any]]:
        return [("resume.run", {"at": at}), ("resume.msg", {"at": at})]

    stream = Stream(
        "k", BrokerConfig(max_events_per_stream=4), snapshot=gap_snap, resume_snapshot=resume_snap
    )
    published = publish_n(stream, 10)
    resumed = CollectingSink()
    stream.subscribe(resumed, 8, snapshot=True)
    recs = records_of(resumed.data)
    assert [(r.id, r.name) for r in recs[:2]] == [(None, "resume.run"), (8, "resume.msg")]
    result = check_sequence(
        recs,
        published=published,
        start=8,
        snapshot=gap_snap,
        snapshot_prefix=True,
        resume_snapshot=resume_snap,
    )
    assert result.snapshots == [8]
    behind = CollectingSink()
    stream.subscribe(behind, 2, snapshot=True)  # behind the buffer: the gap snapshot
    recs = records_of(behind.data)
    assert recs == [Rec(None, GAP, {"from": 2, "to": 11}), Rec(10, "gap.state", {"at": 10})]


async def test_resume_snapshot_alone_has_no_say_in_gaps() -> None:
    stream = Stream("k", BrokerConfig(max_events_per_stream=3), resume_snapshot=snap)
    published = publish_n(stream, 10)
    resumed = CollectingSink()
    stream.subscribe(resumed, 9, snapshot=True)
    assert [r.id for r in records_of(resumed.data)] == [None, 9, 10]
    behind = CollectingSink()
    stream.subscribe(behind)
    recs = records_of(behind.data)
    assert recs[0] == Rec(None, GAP, {"from": 0, "to": 8})
    assert check_sequence(recs, published=published, start=0).cursor == 10


# -- in-process followers ---------------------------------------------------------------------


async def collect(stream: Stream, cursor: int | None, into: list[Event]) -> None:
    async with contextlib.aclosing(stream.follow(cursor)) as events:
        async for event in events:
            into.append(event)


def as_recs(events: list[Event]) -> list[Rec]:
    return [Rec(e.id, e.name, e.payload()) for e in events]


async def test_follow_from_the_start_to_the_end() -> None:
    stream = Stream("k")
    published = publish_n(stream, 3)
    got: list[Event] = []
    task = asyncio.create_task(collect(stream, None, got))
    await turn()
    assert [e.id for e in got] == [1, 2, 3]
    published += publish_n(stream, 2)
    await turn()
    assert [e.id for e in got] == [1, 2, 3, 4, 5]
    assert stream.subscriber_count == 0  # followers are not SSE subscribers
    stream.close()
    async with within():
        await task
    assert check_sequence(as_recs(got), published=published, start=0).cursor == 5


async def test_follow_from_a_cursor_of_a_closed_stream() -> None:
    stream = Stream("k")
    published = publish_n(stream, 5)
    stream.close()
    got: list[Event] = []
    async with within():
        await collect(stream, 3, got)
    assert check_sequence(as_recs(got), published=published, start=3).cursor == 5
    got = []
    async with within():
        await collect(stream, 5, got)
    assert got == []


async def test_follow_refuses_a_cursor_ahead() -> None:
    stream = Stream("k")
    publish_n(stream, 2)
    with pytest.raises(InvalidCursor):
        async with within():
            await collect(stream, 3, [])


async def test_a_slow_follower_gets_gap_and_snapshot() -> None:
    stream = Stream("k", BrokerConfig(max_events_per_stream=3), snapshot=snap)
    published = publish_n(stream, 2)
    got: list[Event] = []
    async with contextlib.aclosing(stream.follow()) as events:
        got.append(await anext(events))  # event 1; the publisher does not wait for us
        published += publish_n(stream, 10)
        stream.close()
        async with within():
            async for event in events:
                got.append(event)
    result = check_sequence(as_recs(got), published=published, start=0, snapshot=snap)
    assert result.gaps == [(2, 13)] and result.cursor == 12


async def test_a_follower_of_a_discarded_stream_is_told() -> None:
    stream = Stream("k")
    publish_n(stream, 1)
    got: list[Event] = []
    task = asyncio.create_task(collect(stream, None, got))
    await turn()
    stream.discard()
    with pytest.raises(StreamClosed):
        async with within():
            await task
    assert [e.id for e in got] == [1]


async def test_subscriber_total_wait_zero() -> None:
    total = SubscriberTotal()
    stream = Stream("k", subscriber_total=total)
    async with within():
        await total.wait_zero()  # already zero
    subs = [stream.subscribe(CollectingSink()) for _ in range(2)]
    waiter = asyncio.create_task(total.wait_zero())
    await turn()
    stream.unsubscribe(subs[0])
    await turn()
    assert not waiter.done()
    stream.unsubscribe(subs[1])
    async with within():
        await waiter
    assert total.n == 0


async def test_buffered_events_stay_untracked_by_the_garbage_collector() -> None:
    """Published, appended (a mirror's), delivered in both framings: what the buffer keeps
    is nothing the collector tracks (issue 18: a full collection at 1M buffered events)."""
    stream = Stream("k")
    sinks = [CollectingSink(), CollectingSink()]
    stream.subscribe(sinks[0], framing=DEFAULT)
    stream.subscribe(sinks[1], framing=OPENAI)
    publish_n(stream, 500, pad=10)
    mirrored = Event.create(stream.head + 1, "e", {"mirrored": True})
    mirrored.frame(OPENAI)  # an appended event may come with a frame already encoded
    stream.append(mirrored)
    await turn()
    gc.collect()
    assert tracked_held(stream.buffer) < 20
    assert stream.buffer.get(501) == mirrored and list(stream.buffer.since(500)) == [mirrored]
    assert sinks[1].data.endswith(mirrored.frame(OPENAI))
