"""The event record and its Server-Sent-Events framings.

Pure and synchronous. An event is encoded to SSE frame bytes at most once per framing
("encode once"): an :class:`Event` caches its frames, and a replay buffer keeps each
frame it has encoded (see :mod:`broker.buffer`), shared by every subscriber that uses
that framing.

Two framings exist (see ``docs/protocol.md``, "Framings"):

* :attr:`Framing.DEFAULT` — no ``event:`` line; ``data:`` holds an envelope
  ``{"event": <name>, "data": <payload>}``, so a browser ``EventSource`` listening for
  ``message`` receives every event.
* :attr:`Framing.OPENAI` — OpenAI's own: ``event: <name>`` and ``data: <payload>``, the
  stream ending with ``event: done`` / ``data: [DONE]``.

Field injection is impossible by construction: names are restricted to a safe ASCII
alphabet, ids are integers, and payloads are single-line JSON (``orjson`` never emits a
raw line break; pre-encoded payloads are checked for ``\\r`` and ``\\n``).
"""

from __future__ import annotations

import enum
import re
from typing import Any, Final

import orjson

from .errors import InvalidEvent

__all__ = [
    "DONE_FRAME",
    "PING_FRAME",
    "RETRY_LINE",
    "Event",
    "Framing",
    "check_name",
    "encode_frame",
    "event_size",
]

_NAME_RE: Final = re.compile(r"[A-Za-z0-9_.:\-]{1,200}\Z")

PING_FRAME: Final = b": ping\n"
"""A keepalive: one comment line, ignored by every SSE parser, that keeps proxies and
clients from timing out. It has no blank line after it on purpose: it is written between
frames, so it joins the next frame's block as a comment. A comment *block* (``: ping`` and
a blank line) would be dispatched as an empty event by parsers that, like the openai
SDK's, keep the last event id across blocks."""

RETRY_LINE: Final = b"retry: %d\n"
"""The SSE reconnection delay (ms). Like :data:`PING_FRAME`, a line without a blank line
after it: it joins the next frame's block, which every parser reads as one event."""

DONE_FRAME: Final = b"event: done\ndata: [DONE]\n\n"
"""The OpenAI framing's end-of-stream sentinel."""


class Framing(enum.Enum):
    """How events are laid out on the wire."""

    DEFAULT = "default"
    OPENAI = "openai"

    @classmethod
    def parse(cls, value: str | None) -> Framing:
        """Framing from a ``format`` query parameter (absent means :attr:`DEFAULT`)."""
        if value is None or value == "" or value == "default":
            return cls.DEFAULT
        if value == "openai":
            return cls.OPENAI
        raise InvalidEvent(f"unknown stream format {value!r}; expected 'default' or 'openai'")


def check_name(name: str) -> None:
    """Raise :class:`InvalidEvent` unless ``name`` is safe in an SSE ``event:`` field."""
    if not _NAME_RE.match(name):
        raise InvalidEvent(
            f"event name {name!r} must be 1-200 characters of letters, digits and '_.:-'"
        )


def encode_frame(framing: Framing, event_id: int | None, name: str | bytes, data: bytes) -> bytes:
    """Encode one SSE frame. ``data`` is a single line of JSON; ``name`` is already checked
    (``bytes``: its ASCII encoding)."""
    id_line = b"" if event_id is None else b"id: %d\n" % event_id
    raw = name.encode() if isinstance(name, str) else name
    if framing is Framing.DEFAULT:
        return b'%sdata: {"event":"%s","data":%s}\n\n' % (id_line, raw, data)
    return b"%sevent: %s\ndata: %s\n\n" % (id_line, raw, data)


def event_size(name: str, data: bytes) -> int:
    """Bytes an event accounts for in a replay buffer (see :attr:`Event.size`)."""
    return 2 * (len(data) + len(name)) + 120


class Event:
    """One event of a stream: its id (``None`` for synthetic events), name and JSON payload.

    Immutable by convention. Frames are computed lazily and cached per framing; the cache
    is not thread-safe, which is fine because only the event loop touches events.

    An :class:`Event` is the value handed to and from the broker's API (``publish``,
    ``follow``, ``ReplayBuffer.since``); a replay buffer does not keep these objects (it
    copies their bytes into columns the garbage collector never visits item by item), so
    an ``Event`` read back from a buffer is a new, equal object.
    """

    __slots__ = ("id", "name", "data", "_default", "_openai")

    id: int | None
    name: str
    data: bytes

    def __init__(self, id: int | None, name: str, data: bytes) -> None:
        check_name(name)
        if b"\n" in data or b"\r" in data:
            raise InvalidEvent("event data must be a single line of JSON")
        if id is not None and id < 1:
            raise InvalidEvent(f"event ids start at 1, got {id}")
        self.id = id
        self.name = name
        self.data = data
        self._default: bytes | None = None
        self._openai: bytes | None = None

    @classmethod
    def trusted(
        cls,
        id: int | None,
        name: str,
        data: bytes,
        default: bytes | None = None,
        openai: bytes | None = None,
    ) -> Event:
        """An event from fields already checked (read back from a replay buffer), with
        whatever frames were already encoded for it."""
        event = cls.__new__(cls)
        event.id = id
        event.name = name
        event.data = data
        event._default = default
        event._openai = openai
        return event

    @classmethod
    def create(cls, id: int | None, name: str, payload: Any) -> Event:
        """Build an event from a JSON-serialisable payload (encoded once, with ``orjson``)."""
        try:
            # orjson's result keeps its whole output buffer (4 KiB for a 200-byte delta);
            # an exact-size copy is what anything holding events should hold (measured
            # when buffers held Event objects: 4.0 KiB against 0.26 KiB of RSS per event).
            data = bytes(memoryview(orjson.dumps(payload)))
        except TypeError as exc:
            raise InvalidEvent(f"payload of {name!r} is not JSON-serialisable: {exc}") from exc
        return cls(id, name, data)

    def frame(self, framing: Framing) -> bytes:
        """The event's SSE frame in ``framing``; encoded on first use, then cached."""
        if framing is Framing.DEFAULT:
            frame = self._default
            if frame is None:
                frame = self._default = encode_frame(framing, self.id, self.name, self.data)
            return frame
        frame = self._openai
        if frame is None:
            frame = self._openai = encode_frame(framing, self.id, self.name, self.data)
        return frame

    def with_id(self, id: int | None) -> Event:
        """A copy carrying another id (used to stamp the last event of a snapshot)."""
        return Event(id, self.name, self.data)

    def payload(self) -> Any:
        """The decoded payload (for tests and tools; the hot path never decodes)."""
        return orjson.loads(self.data)

    @property
    def size(self) -> int:
        """Bytes this event accounts for in a replay buffer.

        A fixed estimate of the payload plus one cached frame and the object overhead, so
        that it does not change when frames are encoded later.
        """
        return event_size(self.name, self.data)

    def __repr__(self) -> str:
        return f"Event(id={self.id!r}, name={self.name!r}, data={self.data[:60]!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Event):
            return NotImplemented
        return (self.id, self.name, self.data) == (other.id, other.name, other.data)

    def __hash__(self) -> int:
        return hash((self.id, self.name, self.data))
