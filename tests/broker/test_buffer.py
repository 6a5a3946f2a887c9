"""The replay buffer and the byte budget (pure, synchronous)."""

from __future__ import annotations

import gc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from broker import BrokerConfig
from broker.buffer import ByteBudget, Gap, ReplayBuffer
from broker.errors import InvalidCursor
from broker.events import Event, Framing

from .helpers import tracked_held

EVENTS = BrokerConfig().max_events_per_stream
BYTES = BrokerConfig().max_bytes_per_stream


def ev(i: int, pad: int = 0) -> Event:
    return Event.create(i, "e", {"i": i, "pad": "x" * pad})


def fill(buf: ReplayBuffer, n: int, pad: int = 0) -> list[Event]:
    events = [ev(buf.head + 1 + k, pad) for k in range(n)]
    for e in events:
        buf.append(e)
    return events


def test_empty_buffer() -> None:
    buf = ReplayBuffer(EVENTS, BYTES)
    assert (buf.head, buf.first_id, len(buf), buf.nbytes) == (0, 1, 0, 0)
    assert list(buf.since(0)) == []
    assert buf.get(0) is None and buf.get(1) is None


@pytest.mark.parametrize(("max_events", "max_bytes"), [(0, 10), (10, 0), (-1, 10)])
def test_caps_must_be_positive(max_events: int, max_bytes: int) -> None:
    with pytest.raises(ValueError):
        ReplayBuffer(max_events, max_bytes)


def test_ids_must_be_consecutive() -> None:
    buf = ReplayBuffer(EVENTS, BYTES)
    with pytest.raises(ValueError):
        buf.append(ev(2))
    buf.append(ev(1))
    with pytest.raises(ValueError):
        buf.append(ev(1))
    with pytest.raises(ValueError):
        buf.append(ev(3))
    with pytest.raises(ValueError):
        buf.append(Event.create(None, "e", {}))
    assert buf.head == 1 and len(buf) == 1
    buf.append(ev(2))
    assert buf.head == 2


def test_since_returns_exact_tails() -> None:
    buf = ReplayBuffer(EVENTS, BYTES)
    events = fill(buf, 10)
    for c in range(11):
        assert list(buf.since(c)) == events[c:]
    assert list(buf.since(10)) == []


def test_event_cap_keeps_the_newest() -> None:
    buf = ReplayBuffer(max_events=3, max_bytes=BYTES)
    events = fill(buf, 10)
    assert len(buf) == 3 and buf.head == 10 and buf.first_id == 8
    assert list(buf.since(7)) == events[7:]
    assert list(buf.since(9)) == events[9:]
    assert buf.since(6) == Gap(cursor=6, first_buffered=8)
    assert buf.since(0) == Gap(cursor=0, first_buffered=8)


def test_byte_cap() -> None:
    size = ev(1).size
    buf = ReplayBuffer(max_events=100, max_bytes=size * 2 + size // 2)
    events = fill(buf, 6)
    assert all(e.size == size for e in events)
    assert len(buf) == 2 and buf.nbytes == 2 * size <= buf.max_bytes
    assert buf.first_id == 5
    assert list(buf.since(4)) == events[4:]
    assert buf.since(3) == Gap(3, 5)


def test_always_keeps_the_newest_event_whatever_the_byte_cap() -> None:
    buf = ReplayBuffer(max_events=10, max_bytes=1)
    for i in range(1, 6):
        e = ev(i, pad=1000)
        buf.append(e)
        assert len(buf) == 1 and buf.first_id == i == buf.head
        assert list(buf.since(i - 1)) == [e]
        assert list(buf.since(i)) == []
        assert buf.nbytes == e.size > buf.max_bytes


def test_get() -> None:
    buf = ReplayBuffer(max_events=4, max_bytes=BYTES)
    events = fill(buf, 9)
    assert [buf.get(i) for i in range(6, 10)] == events[5:]
    for i in (-1, 0, 1, 5, 10, 11):
        assert buf.get(i) is None


def test_check_cursor() -> None:
    buf = ReplayBuffer(max_events=2, max_bytes=BYTES)
    fill(buf, 5)
    for c in range(6):
        buf.check_cursor(c)  # evicted cursors are still ids of the stream
    for c in (-1, 6, 10**17):
        with pytest.raises(InvalidCursor):
            buf.check_cursor(c)


def test_evict_returns_bytes_freed_and_keeps_the_newest() -> None:
    buf = ReplayBuffer(EVENTS, BYTES)
    events = fill(buf, 5, pad=3)
    size = events[0].size
    assert buf.evict(0) == 0 and buf.evict(-3) == 0
    assert buf.evict(2) == 2 * size
    assert buf.first_id == 3 and len(buf) == 3 and buf.nbytes == 3 * size
    assert buf.evict(100) == 2 * size
    assert len(buf) == 1 and buf.first_id == 5 and list(buf.since(4)) == [events[4]]
    assert buf.evict(1) == 0


def test_byte_budget_is_shared_and_returns_to_zero() -> None:
    budget = ByteBudget(limit=None)
    a = ReplayBuffer(max_events=3, max_bytes=BYTES, budget=budget)
    b = ReplayBuffer(max_events=100, max_bytes=BYTES, budget=budget)
    fill(a, 10, pad=7)
    fill(b, 10, pad=50)
    assert budget.used == a.nbytes + b.nbytes > 0
    assert not budget.over
    b.evict(4)
    assert budget.used == a.nbytes + b.nbytes
    a.release()
    assert budget.used == b.nbytes
    b.release()
    assert budget.used == 0
    a.release()  # idempotent
    assert budget.used == 0


def test_byte_budget_over() -> None:
    budget = ByteBudget(limit=1000)
    buf = ReplayBuffer(EVENTS, BYTES, budget=budget)
    while budget.used <= 1000:
        assert not budget.over
        fill(buf, 1)
    assert budget.over
    buf.evict(len(buf))
    assert budget.used == buf.nbytes


@pytest.mark.parametrize("limit", [0, -1])
def test_byte_budget_must_be_positive(limit: int) -> None:
    with pytest.raises(ValueError):
        ByteBudget(limit)


def test_release_keeps_the_numbering() -> None:
    budget = ByteBudget()
    buf = ReplayBuffer(EVENTS, BYTES, budget=budget)
    fill(buf, 4)
    buf.release()
    assert (buf.head, buf.first_id, len(buf), buf.nbytes, budget.used) == (4, 5, 0, 0, 0)
    assert list(buf.since(4)) == []
    assert buf.since(3) == Gap(3, 5)
    e = ev(5)
    buf.append(e)
    assert list(buf.since(4)) == [e] and budget.used == e.size


def test_compaction_keeps_correctness_after_many_evictions() -> None:
    budget = ByteBudget()
    buf = ReplayBuffer(max_events=10, max_bytes=BYTES, budget=budget)
    events = fill(buf, 5000)
    assert len(buf) == 10 and buf.head == 5000 and buf.first_id == 4991
    for c in range(4990, 5001):
        assert list(buf.since(c)) == events[c:]
    assert buf.since(4989) == Gap(4989, 4991)
    assert [buf.get(i) for i in range(4991, 5001)] == events[4990:]
    assert buf.nbytes == sum(e.size for e in events[4990:]) == budget.used
    # Memory stays proportional to what is kept (white-box: the dead prefix is compacted).
    assert len(buf._data._offs) <= 2 * 1024 + 10


def test_compaction_with_large_explicit_evictions() -> None:
    buf = ReplayBuffer(max_events=100_000, max_bytes=BYTES)
    events = fill(buf, 3000)
    for _ in range(5):
        buf.evict(400)
        first = buf.first_id
        assert list(buf.since(first - 1)) == events[first - 1 :]
        assert buf.get(first) == events[first - 1]
        assert buf.get(first - 1) is None
    assert buf.first_id == 2001 and len(buf) == 1000
    more = fill(buf, 10)
    assert list(buf.since(2999)) == [events[-1], *more]


# -- properties -------------------------------------------------------------------------------

OPS = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(0, 300)),
        st.tuples(st.just("evict"), st.integers(0, 6)),
        st.tuples(st.just("frames"), st.integers(0, 12)),
    ),
    max_size=60,
)


@settings(max_examples=300)
@given(
    max_events=st.integers(1, 12),
    max_bytes=st.integers(1, 4000),
    budget_limit=st.none() | st.integers(1, 5000),
    ops=OPS,
    release=st.booleans(),
)
def test_since_is_an_exact_tail_or_a_gap(
    max_events: int,
    max_bytes: int,
    budget_limit: int | None,
    ops: list[tuple[str, int]],
    release: bool,
) -> None:
    budget = ByteBudget(budget_limit)
    buf = ReplayBuffer(max_events=max_events, max_bytes=max_bytes, budget=budget)
    published: list[Event] = []
    kept = 0  # how many of the newest events the buffer should hold
    for op, arg in ops:
        if op == "append":
            e = ev(buf.head + 1, pad=arg)
            buf.append(e)
            published.append(e)
            # Appending evicts only what the caps demand: the longest suffix that fits.
            kept = min(kept + 1, max_events)
            while kept > 1 and sum(x.size for x in published[-kept:]) > max_bytes:
                kept -= 1
        elif op == "frames":
            check_frames(buf, published, arg)
            continue
        else:
            freed = buf.evict(arg)
            dropped = max(0, min(arg, kept - 1))
            assert freed == sum(x.size for x in published[len(published) - kept :][:dropped])
            kept -= dropped
        check_buffer(buf, budget, published, kept)
    if release:
        buf.release()
        check_buffer(buf, budget, published, 0)


def check_buffer(buf: ReplayBuffer, budget: ByteBudget, published: list[Event], kept: int) -> None:
    head = len(published)
    assert buf.head == head
    assert len(buf) == kept
    assert buf.first_id == head - kept + 1
    assert len(buf) <= buf.max_events
    assert buf.nbytes <= buf.max_bytes or len(buf) <= 1
    assert buf.nbytes == sum(e.size for e in published[head - kept :]) == budget.used
    if head and kept:
        assert buf.get(head) == published[-1]
    for c in range(head + 1):
        buf.check_cursor(c)
        found = buf.since(c)
        if isinstance(found, Gap):
            assert found == Gap(cursor=c, first_buffered=buf.first_id)
            assert c + 1 < buf.first_id
        else:
            assert c + 1 >= buf.first_id
            assert list(found) == published[c:]

    for c in (-1, head + 1):
        with pytest.raises(InvalidCursor):
            buf.check_cursor(c)


def check_frames(buf: ReplayBuffer, published: list[Event], arg: int) -> None:
    """``frames`` from one cursor: the events' frames exactly, or the same gap as ``since``.
    Frames encoded earlier for other cursors (the buffer remembers which) must neither be
    encoded twice nor hide one still missing."""
    cursor = max(0, buf.head - arg)
    framing = Framing.OPENAI if arg % 3 == 0 else Framing.DEFAULT
    got = buf.encoded(cursor, framing)
    if isinstance(got, Gap):
        assert got == buf.since(cursor)
    else:
        assert got[1] == len(published) - cursor
        assert got[0] == b"".join(
            Event.create(e.id, e.name, e.payload()).frame(framing) for e in published[cursor:]
        )


# -- garbage collection ---------------------------------------------------------------------


def test_buffered_events_are_not_tracked_by_the_garbage_collector() -> None:
    buf = ReplayBuffer(max_events=5000, max_bytes=BYTES)
    events = fill(buf, 3000, pad=20)
    assert tracked_held(buf) < 20  # at once, not only after a collection
    for framing in Framing:
        assert buf.encoded(1000, framing)[1] == 2000  # frames encoded and kept too
    assert tracked_held(buf) < 20
    gc.collect()
    assert tracked_held(buf) < 20
    buf.evict(2500)  # compacts
    fill(buf, 10)
    assert tracked_held(buf) < 20
    # What the API hands out is unchanged: equal events, frames as an Event encodes them.
    assert list(buf.since(2990)) == events[2990:] + list(buf.since(3000))
    data, count = buf.encoded(2999, Framing.OPENAI)  # type: ignore[misc]
    assert count == 11 and data.startswith(events[-1].frame(Framing.OPENAI))


def test_a_full_collection_does_not_visit_buffered_events() -> None:
    """Allocation-count view of the same guarantee: buffering more events adds no object
    the collector tracks (so a full collection's work does not grow with them)."""
    buf = ReplayBuffer(max_events=100_000, max_bytes=1 << 30)
    fill(buf, 10)
    gc.collect()
    before = len(gc.get_objects())
    events = fill(buf, 5000, pad=5)
    del events
    gc.collect()
    assert len(gc.get_objects()) - before < 100
