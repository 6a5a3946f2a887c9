"""Property: whatever the interleaving of publishes, subscriptions, stalls, resumes,
disconnects and close, every subscriber receives exactly the published sequence from its
cursor, or a gap + snapshot (stamped with the head at that moment) and then the exact tail.

Each example runs its own event loop (``asyncio.run``); loop turns are explicit ops.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import event as note_event
from hypothesis import strategies as st

from broker.config import BrokerConfig
from broker.errors import StreamClosed
from broker.events import Event, Framing
from broker.stream import Stream, Subscription, SubState

from .helpers import CollectingSink, Rec, check_sequence, records_of, within

SnapshotFn = Callable[[int], Sequence[tuple[str, Any]]]

SNAPSHOTS: dict[str, SnapshotFn | None] = {
    "none": None,
    "two": lambda at: [("thread.run", {"at": at}), ("thread.message.created", {"at": at})],
    "empty": lambda at: [],
    "varying": lambda at: [("snap", {"at": at, "k": k, "t": "a\nb"}) for k in range(at % 3)],
}

IDX = st.integers(0, 63)
PUBLISH = st.tuples(st.just("publish"), st.lists(st.integers(0, 300), min_size=1, max_size=6))
SUBSCRIBE = st.tuples(
    st.just("subscribe"),
    st.integers(0, 10**6),
    st.sampled_from(Framing),
    st.booleans(),
    st.booleans(),
)
# Publishes and subscriptions weigh more than the rest (one_of picks branches uniformly).
OP = st.one_of(
    PUBLISH,
    PUBLISH,
    PUBLISH,
    SUBSCRIBE,
    SUBSCRIBE,
    st.tuples(st.just("stall"), IDX),
    st.tuples(st.just("stall"), IDX),
    st.tuples(st.just("resume"), IDX),
    st.tuples(st.just("resume"), IDX),
    st.tuples(st.just("disconnect"), IDX),
    st.tuples(st.just("unsubscribe"), IDX),
    st.tuples(st.just("turn")),
    st.tuples(st.just("turn")),
    st.tuples(st.just("close")),
)
# Scenarios of up to 70 operations, not only the short lists hypothesis favours.
OPS = st.integers(0, 70).flatmap(lambda n: st.lists(OP, min_size=n // 2, max_size=n))


@dataclass
class Sub:
    sub: Subscription
    sink: CollectingSink
    start: int
    framing: Framing
    prefix: bool
    left: bool = False
    was_paused: bool = False


async def scenario(
    ops: list[tuple[Any, ...]],
    max_events: int,
    max_bytes: int,
    snapshot_kind: str,
    resume_kind: str = "none",
) -> None:
    base = SNAPSHOTS[snapshot_kind]
    resume_base = SNAPSHOTS[resume_kind]
    prefix_fn = resume_base or base  # what a requested snapshot is made of
    prefix_at: list[int | None] = [None]
    bad_calls: list[tuple[str, int, int]] = []
    stream: Stream

    def snapshot(at: int) -> Sequence[tuple[str, Any]]:
        assert base is not None
        # A gap's snapshot is taken at the head; it also serves requested snapshots (at
        # the cursor) when there is no resume_snapshot.
        if at != stream.head and not (resume_base is None and at == prefix_at[0]):
            bad_calls.append(("gap", at, stream.head))
        return base(at)

    def resume_snapshot(at: int) -> Sequence[tuple[str, Any]]:
        assert resume_base is not None
        if at != prefix_at[0]:  # a requested snapshot is taken at the cursor
            bad_calls.append(("resume", at, stream.head))
        return resume_base(at)

    stream = Stream(
        "k",
        BrokerConfig(max_events_per_stream=max_events, max_bytes_per_stream=max_bytes),
        snapshot=None if base is None else snapshot,
        resume_snapshot=None if resume_base is None else resume_snapshot,
    )
    published: list[tuple[str, Any]] = []
    subs: list[Sub] = []

    since_turn: list[int] = []
    """Sizes of the events published since the last loop turn."""

    def writes() -> int:
        return sum(len(s.sink.writes) for s in subs)

    for op in ops:
        kind = op[0]
        if kind == "publish":
            for pad in op[1]:
                payload = {"i": len(published) + 1, "text": "x\n" * (pad // 2) + "é" * (pad % 7)}
                if stream.closed:
                    with pytest.raises(StreamClosed):
                        stream.publish("thread.message.delta", payload)
                    continue
                before = writes()
                event = stream.publish("thread.message.delta", payload)
                published.append(("thread.message.delta", payload))
                assert event.id == len(published)
                since_turn.append(event.size)
                # Publishing writes to no subscriber, unless what was published since the
                # last loop turn overflows the buffer (then it is flushed first).
                overflowed = len(since_turn) > max_events or sum(since_turn) > max_bytes
                assert writes() == before or overflowed, "publish wrote synchronously"
        elif kind == "subscribe":
            _, seed, framing, want_snapshot, stalled = op
            head = stream.head
            choice = seed % (head + 2)
            cursor = None if choice == head + 1 else choice
            start = cursor or 0
            in_buffer = start + 1 >= stream.buffer.first_id
            prefix = bool(want_snapshot and start > 0 and prefix_fn is not None and in_buffer)
            sink = CollectingSink()
            sink.stalled = stalled
            prefix_at[0] = start if prefix else None
            sub = stream.subscribe(sink, cursor, framing, snapshot=want_snapshot)
            prefix_at[0] = None
            assert len(sink.writes) <= 1, "the backlog must go out in one write"
            subs.append(Sub(sub, sink, start, framing, prefix))
        elif subs and kind in ("stall", "resume", "disconnect", "unsubscribe"):
            s = subs[op[1] % len(subs)]
            if kind == "stall":
                s.sink.stalled = True
            elif kind == "resume":
                s.sink.unblock()
                stream.resume(s.sub)
            elif kind == "disconnect":
                s.sink.closing = True
                s.left = True
            else:
                stream.unsubscribe(s.sub)
                s.left = True
        elif kind == "turn":
            await asyncio.sleep(0)
            since_turn.clear()
        elif kind == "close":
            stream.close()
        for s in subs:
            s.was_paused |= s.sub.state is SubState.PAUSED
        stats = stream.stats()
        attached = [s for s in subs if s.sub.state in (SubState.LIVE, SubState.PAUSED)]
        assert stats.subscribers == stream.subscriber_count == len(attached)
        assert stats.paused_subscribers == sum(s.sub.state is SubState.PAUSED for s in subs)
        assert stats.head_id == len(published)

    # Everyone drains; the stream ends.
    for s in subs:
        s.sink.unblock()
    stream.close()
    await asyncio.sleep(0)
    for s in subs:
        stream.resume(s.sub)
    await asyncio.sleep(0)

    assert bad_calls == [], f"snapshot taken at the wrong id: {bad_calls}"
    head = stream.head
    first_id = stream.buffer.first_id
    for s in subs:
        assert s.sink.violations == [], s.sink.violations
        state = s.sub.state
        if s.left:
            assert state in (SubState.DONE, SubState.DROPPED)
        else:
            assert state is SubState.DONE
        recs = records_of(s.sink.data, s.framing)
        result = check_sequence(
            recs,
            published=published,
            start=s.start,
            snapshot=base,
            snapshot_prefix=s.prefix,
            resume_snapshot=prefix_fn,
        )
        if state is SubState.DONE:
            assert result.cursor == head
            assert result.done_frame == (s.framing is Framing.OPENAI)
        else:
            assert not result.done_frame
        if result.gaps:
            note_event("gap")
        if result.snapshots:
            note_event("snapshot")
        if s.was_paused:
            note_event("paused" + (" then gap" if result.gaps else ""))
        if len(result.gaps) > 1:
            note_event("several gaps")
        if s.prefix:
            note_event("snapshot prefix")
        for frm, _to in result.gaps:
            # A gap is only reported when the cursor really fell out of the buffer.
            assert frm + 1 < first_id
    assert stream.subscriber_count == 0


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    ops=OPS,
    max_events=st.integers(1, 8) | st.integers(9, 40) | st.just(10_000),
    max_bytes=st.integers(1, 3000) | st.just(10**7) | st.just(10**7),
    snapshot_kind=st.sampled_from(sorted(SNAPSHOTS)),
    resume_kind=st.sampled_from(sorted(SNAPSHOTS)),
)
def test_every_subscriber_gets_the_exact_sequence_or_a_gap_and_snapshot(
    ops: list[tuple[Any, ...]],
    max_events: int,
    max_bytes: int,
    snapshot_kind: str,
    resume_kind: str,
) -> None:
    asyncio.run(scenario(ops, max_events, max_bytes, snapshot_kind, resume_kind))


@settings(max_examples=100, deadline=None)
@given(ops=OPS, snapshot_kind=st.sampled_from(sorted(SNAPSHOTS)))
def test_without_eviction_nobody_ever_sees_a_gap(
    ops: list[tuple[Any, ...]], snapshot_kind: str
) -> None:
    # Big caps: check_sequence plus "gaps only below first_id" (which stays 1) forbid gaps.
    asyncio.run(scenario(ops, 10_000, 10**8, snapshot_kind))


FOLLOW_OPS = st.lists(
    st.one_of(
        st.tuples(st.just("publish"), st.integers(1, 6)),
        st.tuples(st.just("consume"), st.integers(1, 8)),
        st.tuples(st.just("turn"), st.just(0)),
    ),
    max_size=40,
)


async def follow_scenario(
    ops: list[tuple[str, int]],
    initial: int,
    cursor_seed: int,
    max_events: int,
    snapshot_kind: str,
) -> None:
    base = SNAPSHOTS[snapshot_kind]
    stream = Stream("k", BrokerConfig(max_events_per_stream=max_events), snapshot=base)
    published: list[tuple[str, Any]] = []

    def publish(n: int) -> None:
        for _ in range(n):
            payload = {"i": len(published) + 1}
            stream.publish("e", payload)
            published.append(("e", payload))

    publish(initial)
    choice = cursor_seed % (stream.head + 2)
    cursor = None if choice == stream.head + 1 else choice
    credit = asyncio.Semaphore(0)  # the consumer takes one event per credit
    got: list[Event] = []

    async def consumer() -> None:
        async with contextlib.aclosing(stream.follow(cursor)) as events:
            while True:
                await credit.acquire()
                try:
                    got.append(await anext(events))
                except StopAsyncIteration:
                    return

    task = asyncio.create_task(consumer())
    for op, n in ops:
        if op == "publish":
            publish(n)  # never waits for the follower
        elif op == "consume":
            for _ in range(n):
                credit.release()
            await asyncio.sleep(0)
        else:
            await asyncio.sleep(0)
    stream.close()
    for _ in range(len(published) + 100):
        credit.release()
    async with within():
        await task
    recs = [Rec(e.id, e.name, e.payload()) for e in got]
    result = check_sequence(recs, published=published, start=cursor or 0, snapshot=base)
    assert result.cursor == stream.head
    if result.gaps:
        note_event("follower gap")
    for frm, _to in result.gaps:
        assert frm + 1 < stream.buffer.first_id


@settings(max_examples=200, deadline=None)
@given(
    ops=FOLLOW_OPS,
    initial=st.integers(0, 10),
    cursor_seed=st.integers(0, 1000),
    max_events=st.integers(1, 6) | st.just(10_000),
    snapshot_kind=st.sampled_from(sorted(SNAPSHOTS)),
)
def test_followers_get_the_exact_sequence_or_a_gap_and_snapshot(
    ops: list[tuple[str, int]], initial: int, cursor_seed: int, max_events: int, snapshot_kind: str
) -> None:
    asyncio.run(follow_scenario(ops, initial, cursor_seed, max_events, snapshot_kind))
