"""Shared vocabulary of the broker: callbacks, sinks and statistics."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

__all__ = [
    "Counters",
    "Projection",
    "ProjectionFactory",
    "SnapshotFn",
    "SnapshotItem",
    "Sink",
    "StreamStats",
    "Wire",
    "plain_wire",
]

SnapshotItem = tuple[str, Any]
"""One event of a snapshot: its name and JSON-serialisable payload."""

SnapshotFn = Callable[[int], Sequence[SnapshotItem]]
"""Supplied by the publisher at stream creation: ``snapshot(at)`` returns events that,
played from nothing, rebuild the publisher's state as of event id ``at``. It is called
synchronously on the event loop, so for ``at == head`` the publisher's current state is
exactly right. The broker stamps the last item with id ``at``; the others carry none."""


class Projection(Protocol):
    """The publisher's state as a fold over its events, for nodes that only *read* a
    stream (see :mod:`broker.redis_streams`): such a node records every event it mirrors
    and answers the snapshot questions itself. ``snapshot``/``resume_snapshot`` are
    snapshot functions (:data:`SnapshotFn`). A projection rebuilt from a snapshot taken at ``at`` is
    recorded with every item at id ``at``, and is then exact for any ``at`` or later."""

    def record(self, event_id: int, name: str, payload: Any) -> None: ...

    def snapshot(self, at: int) -> Sequence[SnapshotItem]: ...

    def resume_snapshot(self, at: int) -> Sequence[SnapshotItem]: ...


ProjectionFactory = Callable[[str], Projection]
"""Makes an empty projection for the stream with this key."""

Wire = Callable[[bytes], bytes]
"""Transfer framing applied to a batch of SSE frames before it is written (identity for
a raw connection, HTTP/1.1 chunk framing for a chunked response). Sinks sharing the same
``Wire`` object share the bytes of a batch."""


def plain_wire(data: bytes) -> bytes:
    """The identity transfer framing."""
    return data


class Sink(Protocol):
    """Where a subscription's bytes go: an HTTP response's transport, or a test collector.

    ``write`` must never block or await: it hands bytes to a buffer (the transport's).
    ``writable`` is false while that buffer is above its high-water mark; the broker then
    stops writing to the sink until its owner calls :meth:`Stream.resume`.
    """

    wire: Wire

    def write(self, data: bytes) -> None: ...

    def writable(self) -> bool: ...

    def is_closing(self) -> bool: ...


class Counters:
    """Running totals of a registry's streams (plain integers: export them as you like).

    ``delivered`` counts events written to SSE subscribers (events a gap's snapshot stands
    for included); ``gaps`` subscribers served a gap event; ``snapshots``
    snapshots served (after a gap, or asked for with ``snapshot=1``);
    ``stalled_disconnects`` subscribers cut off for making no progress.
    """

    __slots__ = ("published", "delivered", "writes", "gaps", "snapshots", "stalled_disconnects")

    def __init__(self) -> None:
        self.published = 0
        self.delivered = 0
        self.writes = 0
        self.gaps = 0
        self.snapshots = 0
        self.stalled_disconnects = 0


@dataclass(frozen=True, slots=True)
class StreamStats:
    """A stream at one moment, for metrics."""

    key: str
    subscribers: int
    paused_subscribers: int
    head_id: int
    oldest_buffered_id: int
    buffered_events: int
    buffered_bytes: int
    slowest_lag: int
    """Events between the head and the slowest subscriber's cursor (0 without subscribers)."""
    closed: bool
