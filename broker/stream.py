"""A live stream of events and its subscriptions (asyncio, no sockets).

Concurrency model
-----------------
Everything here runs on one event loop thread; nothing is locked. :meth:`Stream.publish`
is synchronous and never awaits a subscriber: it appends the event to the replay buffer
and, if none is pending, schedules one flush with ``loop.call_soon``. The flush runs on
the next loop turn and writes every pending frame of every subscriber in one write each.
A burst of publishes is therefore batched, and a lone event goes out on the next turn
without any added delay. A burst that would overflow the replay buffer before that turn
is flushed first, so a subscriber that keeps up never falls out of the buffer.

Subscriptions are cursors into the shared buffer, not queues. Subscribers at the same
cursor with the same framing share the bytes of a batch, encoded once.

Backpressure
------------
After a write, a sink above its high-water mark is *paused*: the stream stops writing to
it and wakes its owner (see :meth:`Subscription.wait`), who waits for the transport to
drain (or gives up after a stall timeout and drops the connection) and then calls
:meth:`Stream.resume`. The subscriber then catches up from its cursor; if the buffer has
moved past it, it receives a gap event (named by ``gap_event``) and the publisher's snapshot.
A stalled subscriber costs one cursor and its transport's buffer, never the agent's time
or the other subscribers'.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import AsyncIterator, Callable

from .buffer import ByteBudget, Gap, ReplayBuffer
from .config import BrokerConfig
from .errors import StreamClosed
from .events import DONE_FRAME, PING_FRAME, Event, Framing
from .types import Counters, Sink, SnapshotFn, StreamStats

__all__ = ["Stream", "SubState", "Subscription", "SubscriberTotal"]

logger = logging.getLogger(__name__)


class SubscriberTotal:
    """A count shared by several streams (the registry's total of subscribers), with a
    way to wait until it falls to zero."""

    __slots__ = ("n", "_idle")

    def __init__(self) -> None:
        self.n = 0
        self._idle: list[asyncio.Future[None]] = []

    def add(self) -> None:
        self.n += 1

    def remove(self) -> None:
        self.n -= 1
        if self.n == 0 and self._idle:
            idle, self._idle = self._idle, []
            for fut in idle:
                if not fut.done():
                    fut.set_result(None)

    async def wait_zero(self) -> None:
        while self.n > 0:
            fut = asyncio.get_running_loop().create_future()
            self._idle.append(fut)
            try:
                await fut
            finally:
                if fut in self._idle:  # cancelled or timed out: do not keep it
                    self._idle.remove(fut)


class SubState(enum.Enum):
    LIVE = "live"
    """Written to as events arrive."""
    PAUSED = "paused"
    """Its sink is above the high-water mark; waiting for its owner to resume it."""
    DONE = "done"
    """It has received the whole stream (the stream is closed and it is at the end)."""
    DROPPED = "dropped"
    """It was removed before the end: its sink closed, it unsubscribed, or the stream was
    discarded. The owner should close the connection; the client may resume."""


class Subscription:
    """One subscriber's position in a stream. Created by :meth:`Stream.subscribe`."""

    __slots__ = ("stream", "sink", "framing", "cursor", "state", "quiet", "_waiter")

    def __init__(self, stream: Stream, sink: Sink, framing: Framing, cursor: int) -> None:
        self.stream = stream
        self.sink = sink
        self.framing = framing
        self.cursor = cursor
        self.state = SubState.LIVE
        self.quiet = False
        """Nothing was written to it since the last keepalive tick."""
        self._waiter: asyncio.Future[None] | None = None

    async def wait(self) -> SubState:
        """Wait until the subscription needs its owner: paused, done or dropped.

        Returns at once if it already does. Cancel-safe: cancelling the wait leaves the
        subscription as it was (the owner should then :meth:`Stream.unsubscribe`).
        """
        while self.state is SubState.LIVE:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        return self.state

    def _set_state(self, state: SubState) -> None:
        self.state = state
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    @property
    def lag(self) -> int:
        return self.stream.head - self.cursor


class Stream:
    """An append-only sequence of events with ids ``1, 2, 3, …`` and its subscribers.

    Must be created and used on the event loop thread. See the module docstring for the
    concurrency and backpressure contract. ``config`` gives its replay buffer's caps and
    its gap event's name (a :class:`~broker.registry.Registry` passes its own).
    """

    def __init__(
        self,
        key: str,
        config: BrokerConfig | None = None,
        *,
        snapshot: SnapshotFn | None = None,
        budget: ByteBudget | None = None,
        on_over_budget: Callable[[Stream], None] | None = None,
        on_close: Callable[[Stream], None] | None = None,
        subscriber_total: SubscriberTotal | None = None,
        resume_snapshot: SnapshotFn | None = None,
        counters: Counters | None = None,
        tap: Callable[[Event], None] | None = None,
    ) -> None:
        config = config or BrokerConfig()
        self.key = key
        self.buffer = ReplayBuffer(
            config.max_events_per_stream, config.max_bytes_per_stream, budget=budget
        )
        self._budget = budget
        self._on_over_budget = on_over_budget
        self._snapshot = snapshot
        self._resume_snapshot = resume_snapshot or snapshot
        self.counters = counters or Counters()
        self._followers: list[asyncio.Future[None]] = []
        self._on_close = on_close
        self._total = subscriber_total
        self._subs: dict[Subscription, None] = {}
        self._flush_handle: asyncio.Handle | None = None
        self._pending_events = 0
        self._pending_bytes = 0
        """Events (and their bytes) appended since the scheduled flush was scheduled."""
        self._loop = asyncio.get_running_loop()
        self.closed = False
        self.closed_at: float | None = None
        self._discarded = False
        self.reserved = 0
        """Subscriber slots held by requests still starting (see ``Registry.reserve``)."""
        self._tap = tap
        self._gap_event = config.gap_event

    # -- publishing ------------------------------------------------------------------

    @property
    def head(self) -> int:
        return self.buffer.head

    def publish(self, name: str, payload: object) -> Event:
        """Append an event and schedule its delivery. Never awaits; never blocks.

        Raises :class:`StreamClosed` after :meth:`close`, and ``InvalidEvent`` for a bad
        name or a payload that is not JSON-serialisable (nothing is appended then).
        """
        if self.closed:
            raise StreamClosed(f"stream {self.key!r} is closed")
        event = Event.create(self.buffer.head + 1, name, payload)
        self._append(event)
        self.counters.published += 1
        if self._tap is not None:
            self._tap(event)
        return event

    def append(self, event: Event) -> None:
        """Append an event published elsewhere (a mirror of another node's stream); its
        id must be ``head + 1``. Delivered exactly like a published one; never awaits."""
        if self.closed:
            raise StreamClosed(f"stream {self.key!r} is closed")
        self._append(event)

    def _append(self, event: Event) -> None:
        buffer = self.buffer
        if self._flush_handle is not None and (
            self._pending_events >= buffer.max_events
            or self._pending_bytes + event.size > buffer.max_bytes
        ):
            # This append would evict events not yet written to the live subscribers (a
            # burst larger than the buffer within one loop turn, e.g. a batch read from
            # another node): write them now, so that only a subscriber that is really
            # behind (paused) ever gets a gap.
            self._flush_handle.cancel()
            self._flush()
        buffer.append(event)
        budget = self._budget
        if budget is not None and budget.over and self._on_over_budget is not None:
            self._on_over_budget(self)
        if self._subs:
            if self._flush_handle is None:
                self._flush_handle = self._loop.call_soon(self._flush)
                self._pending_events = self._pending_bytes = 0
            self._pending_events += 1
            self._pending_bytes += event.size
        if self._followers:
            self._wake_followers()

    def close(self) -> None:
        """Mark the end of the stream. Subscribers receive what is left, then finish."""
        if self.closed:
            return
        self.closed = True
        self.closed_at = self._loop.time()
        if self._subs and self._flush_handle is None:
            self._flush_handle = self._loop.call_soon(self._flush)
        self._wake_followers()
        if self._on_close is not None:
            self._on_close(self)

    def discard(self) -> None:
        """Drop the stream: release the buffer and drop every subscriber (they may resume)."""
        self.closed = True
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        for sub in list(self._subs):
            self._remove(sub, SubState.DROPPED)
        self._discarded = True
        self._wake_followers()
        self.buffer.release()

    @property
    def discarded(self) -> bool:
        return self._discarded

    # -- subscribing -----------------------------------------------------------------

    def check_cursor(self, cursor: int | None) -> None:
        """Raise :class:`InvalidCursor` when ``cursor`` is ahead of the stream."""
        if cursor is not None:
            self.buffer.check_cursor(cursor)

    def at_end(self, cursor: int | None) -> bool:
        """True when the stream is closed and ``cursor`` has seen all of it."""
        return self.closed and cursor is not None and cursor >= self.head

    def subscribe(
        self,
        sink: Sink,
        cursor: int | None = None,
        framing: Framing = Framing.DEFAULT,
        *,
        snapshot: bool = False,
        preamble: bytes = b"",
    ) -> Subscription:
        """Attach a sink and write its backlog to it at once (one write).

        With ``snapshot=True`` and a cursor, the backlog starts with the publisher's
        snapshot as of the cursor (for a client that lost its state), then the exact tail.
        ``preamble`` (e.g. an SSE ``retry:`` field) goes first in that write.
        The returned subscription may already be paused or done.
        """
        start = 0 if cursor is None else cursor
        self.buffer.check_cursor(start)
        sub = Subscription(self, sink, framing, start)
        self._subs[sub] = None
        if self._total is not None:
            self._total.add()
        prefix = preamble
        if snapshot and start > 0 and self.buffer.reaches(start):
            events = self._snapshot_events(self._resume_snapshot, start, [])
            prefix += b"".join([e.frame(framing) for e in events])
            self.counters.snapshots += 1
        self._deliver(sub, prefix)
        return sub

    def resume(self, sub: Subscription) -> None:
        """Resume a paused subscription once its sink has drained: it catches up at once."""
        if sub.state is SubState.PAUSED:
            sub.state = SubState.LIVE
            self._deliver(sub)

    def unsubscribe(self, sub: Subscription) -> None:
        """Detach a subscription (idempotent). Its sink is not closed here."""
        if sub in self._subs:
            self._remove(sub, SubState.DROPPED)

    # -- delivery --------------------------------------------------------------------

    def _remove(self, sub: Subscription, state: SubState) -> None:
        if sub in self._subs:
            del self._subs[sub]
            if self._total is not None:
                self._total.remove()
        sub._set_state(state)

    def _snapshot_events(self, fn: SnapshotFn | None, at: int, lead: list[Event]) -> list[Event]:
        """``lead`` then ``fn``'s snapshot as of ``at``; the last event carries id ``at``."""
        events = list(lead)
        if fn is not None:
            try:
                events.extend(Event.create(None, name, data) for name, data in fn(at))
            except Exception:
                logger.exception("snapshot of stream %r failed; sending the gap alone", self.key)
                events = list(lead)
        if events:
            events[-1] = events[-1].with_id(at)
        return events

    def _catch_up(self, cursor: int) -> tuple[list[Event], int]:
        """Events taking a subscriber at ``cursor`` (behind the buffer) forward: a gap event,
        then the snapshot at the head; or, with no snapshot, the gap and what is buffered."""
        head = self.buffer.head
        if self._snapshot is not None:
            gap = Event.create(None, self._gap_event, {"from": cursor, "to": head + 1})
            return self._snapshot_events(self._snapshot, head, [gap]), head
        first = self.buffer.first_id
        tail = self.buffer.since(first - 1)
        assert not isinstance(tail, Gap)
        return [Event.create(None, self._gap_event, {"from": cursor, "to": first}), *tail], head

    def _batch(self, cursor: int, framing: Framing) -> tuple[bytes, int, bool]:
        """SSE bytes that take a subscriber from ``cursor`` to the head, the new cursor,
        and whether they begin with a gap."""
        found = self.buffer.encoded(cursor, framing)
        if isinstance(found, Gap):
            events, head = self._catch_up(cursor)
            return b"".join([e.frame(framing) for e in events]), head, True
        data, count = found
        return data, cursor + count, False

    def _count_gaps(self, served: int) -> None:
        self.counters.gaps += served
        if self._snapshot is not None:
            self.counters.snapshots += served

    def _deliver(self, sub: Subscription, prefix: bytes = b"") -> None:
        """Write one subscriber's pending frames, in one write."""
        if sub.state is not SubState.LIVE:
            return
        sink = sub.sink
        if sink.is_closing():
            self._remove(sub, SubState.DROPPED)
            return
        start = sub.cursor
        data, sub.cursor, gap = self._batch(start, sub.framing)
        if gap:
            self._count_gaps(1)
        data = prefix + data
        finished = self.closed and sub.cursor >= self.buffer.head
        if finished and sub.framing is Framing.OPENAI:
            data += DONE_FRAME
        if data:
            sink.write(sink.wire(data))
            sub.quiet = False
            self.counters.writes += 1
            self.counters.delivered += sub.cursor - start
        self._after_write(sub, finished)

    def _after_write(self, sub: Subscription, finished: bool) -> None:
        if finished:
            self._remove(sub, SubState.DONE)
        elif not sub.sink.writable():
            sub._set_state(SubState.PAUSED)

    def _flush(self) -> None:
        """Bring every live subscriber to the head; subscribers at the same cursor,
        framing and wire share one encoded batch.

        The hot loop of the broker: per subscriber it does a few comparisons, one
        ``write`` and one buffer-size check. Consecutive subscribers at the same position
        (the common case) reuse the previous batch without a dictionary lookup.
        """
        self._flush_handle = None
        head = self.buffer.head
        closed = self.closed
        live = SubState.LIVE
        batches: dict[tuple[int, Framing, object], tuple[bytes, int, bool]] = {}
        last_key: tuple[int, Framing, object] | None = None
        batch: tuple[bytes, int, bool] = (b"", 0, False)
        writes = delivered = gaps = 0
        for sub in list(self._subs):
            if sub.state is not live:
                continue
            start = sub.cursor
            if start >= head and not closed:
                continue
            sink = sub.sink
            if sink.is_closing():
                self._remove(sub, SubState.DROPPED)
                continue
            key = (start, sub.framing, sink.wire)
            if key != last_key:
                found = batches.get(key)
                if found is None:
                    data, cursor, gap = self._batch(start, sub.framing)
                    if closed and sub.framing is Framing.OPENAI:
                        data += DONE_FRAME
                    found = batches[key] = (sink.wire(data) if data else b"", cursor, gap)
                batch, last_key = found, key
            wire_bytes, cursor, gap = batch
            if wire_bytes:
                sink.write(wire_bytes)
                sub.quiet = False
                writes += 1
                delivered += cursor - start
                gaps += gap
            sub.cursor = cursor
            if closed:
                self._remove(sub, SubState.DONE)
            elif not sink.writable():
                sub._set_state(SubState.PAUSED)
        counters = self.counters
        counters.writes += writes
        counters.delivered += delivered
        if gaps:
            self._count_gaps(gaps)

    def keepalive(self) -> int:
        """Write a keepalive comment to every live subscriber that has been sent nothing
        since the previous call; returns how many were pinged. Called by the registry's
        keepalive ticker, one pass over all streams per interval."""
        pinged = 0
        for sub in self._subs:
            if sub.state is not SubState.LIVE:
                continue
            if sub.quiet and not sub.sink.is_closing():
                sub.sink.write(sub.sink.wire(PING_FRAME))
                pinged += 1
            sub.quiet = True
        return pinged

    # -- in-process subscribers ---------------------------------------------------------

    def _wake_followers(self) -> None:
        followers, self._followers = self._followers, []
        for fut in followers:
            if not fut.done():
                fut.set_result(None)

    async def follow(self, cursor: int | None = None) -> AsyncIterator[Event]:
        """Iterate the stream's events in-process, from after ``cursor`` to its end.

        The in-process twin of an SSE subscription (for the CLI, embedding and tests):
        same ordering, same gap + snapshot when the cursor is behind the buffer. Slow
        consumers fall behind on their own cursor; the publisher never waits for them.
        Ends when the stream is closed and consumed; raises :class:`StreamClosed` if the
        stream is discarded first.
        """
        position = 0 if cursor is None else cursor
        self.buffer.check_cursor(position)
        while True:
            if self._discarded:
                raise StreamClosed(f"stream {self.key!r} was discarded")
            found = self.buffer.since(position)
            if isinstance(found, Gap):
                self._count_gaps(1)
                events, position = self._catch_up(position)
                for event in events:
                    yield event
                continue
            if found:
                batch = list(found)
                position += len(batch)
                for event in batch:
                    yield event
                continue
            if self.closed:
                return
            fut = self._loop.create_future()
            self._followers.append(fut)
            await fut

    # -- introspection ---------------------------------------------------------------

    @property
    def subscriber_count(self) -> int:
        return len(self._subs)

    @property
    def watched(self) -> bool:
        """Someone is subscribed, starting a subscription, or following in-process."""
        return bool(self._subs or self.reserved or self._followers)

    def subscriptions(self) -> list[Subscription]:
        return list(self._subs)

    def stats(self) -> StreamStats:
        subs = self._subs
        head = self.buffer.head
        return StreamStats(
            key=self.key,
            subscribers=len(subs),
            paused_subscribers=sum(1 for s in subs if s.state is SubState.PAUSED),
            head_id=head,
            oldest_buffered_id=self.buffer.first_id,
            buffered_events=len(self.buffer),
            buffered_bytes=self.buffer.nbytes,
            slowest_lag=max((head - s.cursor for s in subs), default=0),
            closed=self.closed,
        )
