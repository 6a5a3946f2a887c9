"""The bounded replay buffer of one stream, and the process-wide byte budget.

Pure and synchronous: no asyncio, no I/O, no locks (only the event loop touches it).

Events carry consecutive ids ``1, 2, 3, …``. The buffer keeps the newest ones, bounded by
a number of events and a number of bytes; older ones are evicted. ``since(cursor)``
returns the events after ``cursor`` in O(1) + O(result), or a :class:`Gap` when the
cursor reaches back before what is still buffered.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .cursor import check_cursor
from .events import Event

__all__ = ["ByteBudget", "Gap", "ReplayBuffer"]


@dataclass(frozen=True, slots=True)
class Gap:
    """Events ``first_missing … first_buffered - 1`` are no longer buffered."""

    cursor: int
    first_buffered: int


class ByteBudget:
    """Bytes held by all replay buffers of a process, against one cap.

    Buffers charge and refund it; whoever owns the buffers (the registry) decides what to
    evict when :attr:`over` is true. ``limit=None`` means unbounded.
    """

    __slots__ = ("limit", "used")

    def __init__(self, limit: int | None = None) -> None:
        if limit is not None and limit <= 0:
            raise ValueError("byte budget must be positive")
        self.limit = limit
        self.used = 0

    @property
    def over(self) -> bool:
        return self.limit is not None and self.used > self.limit


class ReplayBuffer:
    """The newest events of one stream, bounded by count and by bytes.

    At least the newest event is always kept, whatever the byte cap, so a subscriber
    that is caught up can always be served.
    """

    __slots__ = ("max_events", "max_bytes", "_events", "_start", "_first_id", "_bytes", "_budget")

    def __init__(
        self,
        max_events: int,
        max_bytes: int,
        budget: ByteBudget | None = None,
    ) -> None:
        if max_events < 1 or max_bytes < 1:
            raise ValueError("a replay buffer holds at least one event and one byte")
        self.max_events = max_events
        self.max_bytes = max_bytes
        # A list with a moving start index: O(1) append, evict and index; compacted
        # once the dead prefix dominates, so memory stays proportional to what is kept.
        self._events: list[Event] = []
        self._start = 0
        self._first_id = 1  # id of self._events[self._start] when not empty
        self._bytes = 0
        self._budget = budget

    # -- state -----------------------------------------------------------------------

    @property
    def head(self) -> int:
        """Id of the newest event ever appended (0 before the first)."""
        return self._first_id + len(self._events) - self._start - 1

    @property
    def first_id(self) -> int:
        """Id of the oldest buffered event (``head + 1`` when nothing is buffered)."""
        return self._first_id

    def __len__(self) -> int:
        return len(self._events) - self._start

    @property
    def nbytes(self) -> int:
        return self._bytes

    # -- writing ---------------------------------------------------------------------

    def append(self, event: Event) -> None:
        """Append the next event; its id must be ``head + 1``. Evicts to stay in bounds."""
        if event.id != self.head + 1:
            raise ValueError(f"expected event id {self.head + 1}, got {event.id}")
        self._events.append(event)
        size = event.size
        self._bytes += size
        if self._budget is not None:
            self._budget.used += size
        excess = len(self) - self.max_events
        if excess > 0:
            self.evict(excess)
        while self._bytes > self.max_bytes and len(self) > 1:
            self.evict(1)

    def evict(self, count: int) -> int:
        """Drop up to ``count`` oldest events, always keeping the newest. Returns bytes freed."""
        count = min(count, len(self) - 1)
        if count <= 0:
            return 0
        freed = 0
        events = self._events
        for i in range(self._start, self._start + count):
            freed += events[i].size
        self._start += count
        self._first_id += count
        self._bytes -= freed
        if self._budget is not None:
            self._budget.used -= freed
        if self._start > 1024 and self._start * 2 > len(events):
            del events[: self._start]
            self._start = 0
        return freed

    def release(self) -> None:
        """Drop everything and refund the budget (the stream is being discarded)."""
        if self._budget is not None:
            self._budget.used -= self._bytes
        self._first_id = self.head + 1
        self._events = []
        self._start = 0
        self._bytes = 0

    def restart_after(self, head: int) -> None:
        """Make an empty buffer continue after event ``head`` (a mirror that joins a
        stream whose earlier events are gone): the next event appended must be
        ``head + 1``, and every cursor before it is a :class:`Gap`."""
        if len(self) or self._events:
            raise ValueError("only an empty buffer can be restarted")
        if head < 0:
            raise ValueError(f"head must be >= 0, got {head}")
        self._first_id = head + 1

    # -- reading ---------------------------------------------------------------------

    def check_cursor(self, cursor: int) -> None:
        """Raise :class:`InvalidCursor` if ``cursor`` is not an id of this stream so far."""
        check_cursor(cursor, self.head)

    def since(self, cursor: int) -> Sequence[Event] | Gap:
        """Events with ids greater than ``cursor``, oldest first; or a :class:`Gap`.

        ``cursor`` must satisfy :meth:`check_cursor`. An empty sequence means the caller
        is caught up.
        """
        if cursor + 1 < self._first_id:
            return Gap(cursor, self._first_id)
        offset = self._start + cursor + 1 - self._first_id
        events = self._events
        if offset >= len(events):
            return ()
        return events[offset:]

    def get(self, event_id: int) -> Event | None:
        """The buffered event with this id, if it is still buffered."""
        if event_id < self._first_id or event_id > self.head:
            return None
        return self._events[self._start + event_id - self._first_id]
