"""The bounded replay buffer of one stream, and the process-wide byte budget.

Pure and synchronous: no asyncio, no I/O, no locks (only the event loop touches it).

Events carry consecutive ids ``1, 2, 3, …``. The buffer keeps the newest ones, bounded by
a number of events and a number of bytes; older ones are evicted. ``since(cursor)``
returns the events after ``cursor`` in O(1) + O(result), or a :class:`Gap` when the
cursor reaches back before what is still buffered; ``frames(cursor, framing)`` returns
their SSE frames, encoded once per event and framing and cached.

Garbage collection: the buffer keeps no object per event that the collector tracks. An
event is stored as its fields in parallel lists (names, payload bytes, encoded frames;
ids are implicit), which hold only ``str``, ``bytes`` and ``None``: a full collection
visits each list as one object and never follows its items, so a process holding a
million buffered events pauses for a collection about as long as one holding none
(``benchmarks/gc_pause.py``). :class:`~broker.events.Event` objects are made only when
the API hands events out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .cursor import check_cursor
from .events import Event, Framing, encode_frame, event_size

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
    that is caught up can always be served. See the module docstring for the storage
    layout (nothing per event is tracked by the garbage collector).
    """

    __slots__ = (
        "max_events",
        "max_bytes",
        "_names",
        "_data",
        "_default",
        "_openai",
        "_encoded",
        "_start",
        "_first_id",
        "_bytes",
        "_budget",
    )

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
        # Parallel lists with a moving start index: O(1) append, evict and index;
        # compacted once the dead prefix dominates, so memory stays proportional to what
        # is kept. Item i of each is one event: its name, its payload, and its frame in
        # each framing (None until first encoded).
        self._names: list[str] = []
        self._data: list[bytes] = []
        self._default: list[bytes | None] = []
        self._openai: list[bytes | None] = []
        self._encoded: dict[Framing, tuple[int, int]] = {}
        """Per framing, ids ``[lo, hi)`` whose frames are known to be encoded, so that a
        flush encodes only what is new without scanning what it sends."""
        self._start = 0
        self._first_id = 1  # id of item self._start when not empty
        self._bytes = 0
        self._budget = budget

    # -- state -----------------------------------------------------------------------

    @property
    def head(self) -> int:
        """Id of the newest event ever appended (0 before the first)."""
        return self._first_id + len(self._names) - self._start - 1

    @property
    def first_id(self) -> int:
        """Id of the oldest buffered event (``head + 1`` when nothing is buffered)."""
        return self._first_id

    def __len__(self) -> int:
        return len(self._names) - self._start

    @property
    def nbytes(self) -> int:
        return self._bytes

    # -- writing ---------------------------------------------------------------------

    def append(self, event: Event) -> None:
        """Append the next event; its id must be ``head + 1``. Evicts to stay in bounds.

        The buffer keeps the event's fields and any frame already encoded for it, not
        the object."""
        if event.id != self.head + 1:
            raise ValueError(f"expected event id {self.head + 1}, got {event.id}")
        name, data = event.name, event.data
        self._names.append(name)
        self._data.append(data)
        self._default.append(event._default)
        self._openai.append(event._openai)
        size = event_size(name, data)
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
        start = self._start
        stop = start + count
        names, data = self._names, self._data
        freed = 0
        for i in range(start, stop):
            freed += event_size(names[i], data[i])
        self._start = stop
        self._first_id += count
        self._bytes -= freed
        if self._budget is not None:
            self._budget.used -= freed
        if stop > 1024 and stop * 2 > len(names):
            for column in (self._names, self._data, self._default, self._openai):
                del column[:stop]
            self._start = 0
        return freed

    def release(self) -> None:
        """Drop everything and refund the budget (the stream is being discarded)."""
        if self._budget is not None:
            self._budget.used -= self._bytes
        self._first_id = self.head + 1
        self._names, self._data, self._default, self._openai = [], [], [], []
        self._encoded = {}
        self._start = 0
        self._bytes = 0

    def restart_after(self, head: int) -> None:
        """Make an empty buffer continue after event ``head`` (a mirror that joins a
        stream whose earlier events are gone): the next event appended must be
        ``head + 1``, and every cursor before it is a :class:`Gap`."""
        if len(self) or self._names:
            raise ValueError("only an empty buffer can be restarted")
        if head < 0:
            raise ValueError(f"head must be >= 0, got {head}")
        self._first_id = head + 1

    # -- reading ---------------------------------------------------------------------

    def check_cursor(self, cursor: int) -> None:
        """Raise :class:`InvalidCursor` if ``cursor`` is not an id of this stream so far."""
        check_cursor(cursor, self.head)

    def reaches(self, cursor: int) -> bool:
        """Whether every event after ``cursor`` is still buffered (no :class:`Gap`)."""
        return cursor + 1 >= self._first_id

    def _event(self, index: int) -> Event:
        return Event.trusted(
            self._first_id + index - self._start,
            self._names[index],
            self._data[index],
            self._default[index],
            self._openai[index],
        )

    def since(self, cursor: int) -> Sequence[Event] | Gap:
        """Events with ids greater than ``cursor``, oldest first; or a :class:`Gap`.

        ``cursor`` must satisfy :meth:`check_cursor`. An empty sequence means the caller
        is caught up. The events are new objects (equal to those appended).
        """
        if cursor + 1 < self._first_id:
            return Gap(cursor, self._first_id)
        offset = self._start + cursor + 1 - self._first_id
        return [self._event(i) for i in range(offset, len(self._names))]

    def frames(self, cursor: int, framing: Framing) -> list[bytes] | Gap:
        """The SSE frames (in ``framing``) of the events after ``cursor``, oldest first;
        or a :class:`Gap`. Each frame is encoded on first use and then cached.

        ``cursor`` must satisfy :meth:`check_cursor`. The hot path of delivery: one slice
        when every frame is already encoded.
        """
        if cursor + 1 < self._first_id:
            return Gap(cursor, self._first_id)
        first, end = cursor + 1, self.head + 1
        lo, hi = self._encoded.get(framing, (0, 0))
        if lo <= first <= hi:
            start = hi  # everything from first to hi is encoded already
        else:
            lo = start = first
        base = self._first_id - self._start  # the id of item 0
        column = self._default if framing is Framing.DEFAULT else self._openai
        if start < end:
            names, data = self._names, self._data
            for i in range(start - base, end - base):
                if column[i] is None:
                    column[i] = encode_frame(framing, base + i, names[i], data[i])
        self._encoded[framing] = (lo, end)
        return column[first - base :]  # type: ignore[return-value]  # no None left in it

    def get(self, event_id: int) -> Event | None:
        """The buffered event with this id, if it is still buffered (a new object)."""
        if event_id < self._first_id or event_id > self.head:
            return None
        return self._event(self._start + event_id - self._first_id)
