"""The bounded replay buffer of one stream, and the process-wide byte budget.

Pure and synchronous: no asyncio, no I/O, no locks (only the event loop touches it).

Events carry consecutive ids ``1, 2, 3, …``. The buffer keeps the newest ones, bounded by
a number of events and a number of bytes; older ones are evicted. ``since(cursor)``
returns the events after ``cursor`` in O(1) + O(result), or a :class:`Gap` when the
cursor reaches back before what is still buffered; ``encoded(cursor, framing)`` returns
their SSE frames as one ``bytes``, each frame encoded once per framing and kept.

Garbage collection: the buffer holds no object per event, so a full collection does not
grow with what is buffered (``benchmarks/gc_pause.py``: a million buffered events). The
events (``name SP payload`` each) and their encoded frames (one column per framing asked
for) are kept end to end in ``bytearray`` columns, with the items' offsets in an
``array``; neither type is tracked by the collector. Ids are implicit.
:class:`~broker.events.Event` objects are made only when the API hands events out.
(A list of ``bytes`` is not enough: the collector visits every item of a list, and at a
million items those visits alone, scattered through memory, cost ~100 ms.)
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from dataclasses import dataclass

from .cursor import check_cursor
from .events import Event, Framing, encode_frame

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


class _Column:
    """Byte strings of consecutive ids ``first … end - 1``, end to end in one bytearray.

    ``_offs[k]`` is the logical offset where item ``_offs_first + k`` starts (one more
    entry marks the end); logical offsets never change, ``_base`` is the logical offset
    of ``_buf[0]``. Dropping a prefix is O(1); the dead prefix is compacted once it
    dominates, so memory stays proportional to what is kept.
    """

    __slots__ = ("first", "end", "_offs_first", "_offs", "_buf", "_base")

    def __init__(self, first: int) -> None:
        self.first = first
        self.end = first
        self._offs_first = first
        self._offs = array("q", [0])
        self._buf = bytearray()
        self._base = 0

    def append(self, data: bytes) -> None:
        offs = self._offs
        offs.append(offs[-1] + len(data))
        self._buf += data
        self.end += 1

    def extend(self, items: list[bytes]) -> None:
        offs = self._offs
        end = offs[-1]
        for item in items:
            end += len(item)
            offs.append(end)
        self._buf += b"".join(items)
        self.end += len(items)

    def items(self, lo: int, hi: int) -> list[bytes]:
        """Items ``lo … hi - 1``, each as its own ``bytes``."""
        k, base, offs, buf = self._offs_first, self._base, self._offs, self._buf
        return [bytes(buf[offs[i] - base : offs[i + 1] - base]) for i in range(lo - k, hi - k)]

    def nbytes(self, lo: int, hi: int) -> int:
        """Bytes of items ``lo … hi - 1`` together."""
        k = self._offs_first
        return self._offs[hi - k] - self._offs[lo - k]

    def span(self, lo: int, hi: int) -> bytes:
        """Items ``lo … hi - 1`` end to end, as one ``bytes``."""
        k, base = self._offs_first, self._base
        start, stop = self._offs[lo - k] - base, self._offs[hi - k] - base
        if stop - start < 65536:
            return bytes(self._buf[start:stop])  # two small copies beat a memoryview's set-up
        return bytes(memoryview(self._buf)[start:stop])  # one copy (the view is released at once)

    def drop_before(self, first: int) -> None:
        """Forget the items before ``first``."""
        if first <= self.first:
            return
        self.first = first
        dead = first - self._offs_first
        if dead > 1024 and dead * 2 > len(self._offs):
            cut = self._offs[dead] - self._base
            del self._buf[:cut]
            del self._offs[:dead]
            self._base += cut
            self._offs_first = first


class ReplayBuffer:
    """The newest events of one stream, bounded by count and by bytes.

    At least the newest event is always kept, whatever the byte cap, so a subscriber
    that is caught up can always be served. See the module docstring for the storage
    layout (nothing per event is tracked by the garbage collector).
    """

    __slots__ = ("max_events", "max_bytes", "_data", "_frames", "_bytes", "_budget")

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
        self._data = _Column(1)
        """Each event as ``name SP payload`` (a name has no space, so the first one splits)."""
        self._frames: dict[Framing, _Column] = {}
        """Per framing, the frames of the events ``first … end - 1`` of that column (a
        contiguous run up to the head once asked for; absent until then)."""
        self._bytes = 0
        self._budget = budget

    # -- state -----------------------------------------------------------------------

    @property
    def head(self) -> int:
        """Id of the newest event ever appended (0 before the first)."""
        return self._data.end - 1

    @property
    def first_id(self) -> int:
        """Id of the oldest buffered event (``head + 1`` when nothing is buffered)."""
        return self._data.first

    def __len__(self) -> int:
        return self._data.end - self._data.first

    @property
    def nbytes(self) -> int:
        return self._bytes

    def _size(self, lo: int, hi: int) -> int:
        """What events ``lo … hi - 1`` account for (the sum of their ``Event.size``)."""
        return 2 * (self._data.nbytes(lo, hi) - (hi - lo)) + 120 * (hi - lo)

    # -- writing ---------------------------------------------------------------------

    def append(self, event: Event) -> None:
        """Append the next event; its id must be ``head + 1``. Evicts to stay in bounds.

        The buffer copies the event's name and payload, and its frame in each framing a
        subscriber has asked for (encoded now if the event does not carry it yet).
        """
        event_id, name, data = event.id, event.name, event.data
        data_col = self._data
        end = data_col.end
        if event_id != end:
            raise ValueError(f"expected event id {end}, got {event_id}")
        data_col.append(b" ".join((name.encode(), data)))
        if self._frames:
            for framing, column in self._frames.items():
                if column.end == event_id:
                    column.append(event.frame(framing))
        size = 2 * (len(data) + len(name)) + 120  # Event.size
        self._bytes += size
        if self._budget is not None:
            self._budget.used += size
        excess = event_id + 1 - data_col.first - self.max_events
        if excess > 0:
            self.evict(excess)
        while self._bytes > self.max_bytes and event_id > data_col.first:
            self.evict(1)

    def evict(self, count: int) -> int:
        """Drop up to ``count`` oldest events, always keeping the newest. Returns bytes freed."""
        first = self._data.first
        count = min(count, self._data.end - first - 1)
        if count <= 0:
            return 0
        freed = self._size(first, first + count)
        self._data.drop_before(first + count)
        if self._frames:
            for column in self._frames.values():
                column.drop_before(first + count)
        self._bytes -= freed
        if self._budget is not None:
            self._budget.used -= freed
        return freed

    def release(self) -> None:
        """Drop everything and refund the budget (the stream is being discarded)."""
        if self._budget is not None:
            self._budget.used -= self._bytes
        self._restart(self.head + 1)
        self._bytes = 0

    def _restart(self, first: int) -> None:
        self._data = _Column(first)
        self._frames = {}

    def restart_after(self, head: int) -> None:
        """Make an empty buffer continue after event ``head`` (a mirror that joins a
        stream whose earlier events are gone): the next event appended must be
        ``head + 1``, and every cursor before it is a :class:`Gap`."""
        if len(self):
            raise ValueError("only an empty buffer can be restarted")
        if head < 0:
            raise ValueError(f"head must be >= 0, got {head}")
        self._restart(head + 1)

    # -- reading ---------------------------------------------------------------------

    def check_cursor(self, cursor: int) -> None:
        """Raise :class:`InvalidCursor` if ``cursor`` is not an id of this stream so far."""
        check_cursor(cursor, self.head)

    def reaches(self, cursor: int) -> bool:
        """Whether every event after ``cursor`` is still buffered (no :class:`Gap`)."""
        return cursor + 1 >= self._data.first

    def _event(self, event_id: int) -> Event:
        name, data = self._data.span(event_id, event_id + 1).split(b" ", 1)
        return Event.trusted(event_id, name.decode(), data)

    def since(self, cursor: int) -> Sequence[Event] | Gap:
        """Events with ids greater than ``cursor``, oldest first; or a :class:`Gap`.

        ``cursor`` must satisfy :meth:`check_cursor`. An empty sequence means the caller
        is caught up. The events are new objects (equal to those appended).
        """
        if cursor + 1 < self._data.first:
            return Gap(cursor, self._data.first)
        return [self._event(i) for i in range(cursor + 1, self._data.end)]

    def encoded(self, cursor: int, framing: Framing) -> tuple[bytes, int] | Gap:
        """The SSE frames (in ``framing``) of the events after ``cursor`` end to end, and
        how many events they are; or a :class:`Gap`.

        ``cursor`` must satisfy :meth:`check_cursor`. The hot path of delivery: each frame
        is encoded once per framing (the events appended since the last call), then the
        batch is one copy out of the column.
        """
        first, end = cursor + 1, self._data.end
        if first < self._data.first:
            return Gap(cursor, self._data.first)
        if first >= end:
            return b"", 0
        column = self._frames.get(framing)
        if column is None or first < column.first:
            # First use of this framing, or a cursor further back than it was ever used
            # from (rare): encode from the cursor on.
            column = self._frames[framing] = _Column(first)
        lo = column.end
        if lo < end:
            records = [record.split(b" ", 1) for record in self._data.items(lo, end)]
            column.extend([encode_frame(framing, lo + k, n, d) for k, (n, d) in enumerate(records)])
        return column.span(first, end), end - first

    def get(self, event_id: int) -> Event | None:
        """The buffered event with this id, if it is still buffered (a new object)."""
        if event_id < self._data.first or event_id > self.head:
            return None
        return self._event(event_id)
