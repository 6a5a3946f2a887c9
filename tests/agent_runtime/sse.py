"""A real Server-Sent-Events parser for the runtime's end-to-end tests, and a reader of
live SSE responses.

Parsing follows the WHATWG "event stream interpretation" rules: lines end with CRLF, LF or
CR; a line starting with ``:`` is a comment; ``field: value`` loses one leading space of
its value; a line without a colon is a field with an empty value; ``data`` lines
accumulate, joined by ``\\n``; a blank line ends a frame. Unlike a browser it also
reports frames made only of comments (keepalives), and keeps every raw field, so tests
can check exactly what went over the wire.

:func:`decode` turns frames into protocol events (:class:`Ev`) in either framing of
``shared/spec/protocol.md``: the default one (no ``event:`` line, ``data:`` holding
``{"event", "data"}``) or OpenAI's (``event: <name>``, ``data: <bare object>``, ending
``event: done`` / ``data: [DONE]``).
"""

from __future__ import annotations

import asyncio
import codecs
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

__all__ = [
    "DONE",
    "Ev",
    "Frame",
    "SSEParser",
    "SSEReader",
    "decode",
    "decode_frame",
    "parse_events",
    "parse_frames",
]

DONE = "done"
"""Name given to the OpenAI framing's ``event: done`` / ``data: [DONE]`` sentinel."""


@dataclass
class Frame:
    """One block of lines ended by a blank line."""

    id: str | None = None
    event: str | None = None
    data: str | None = None
    """The ``data`` lines joined by ``\\n``; ``None`` when the frame had none."""
    retry: int | None = None
    comments: list[str] = field(default_factory=list)
    fields: list[tuple[str, str]] = field(default_factory=list)
    """Every non-comment line, in order, as ``(name, value)``."""

    @property
    def is_comment(self) -> bool:
        """A frame made only of comment lines (a keepalive)."""
        return not self.fields and bool(self.comments)


class SSEParser:
    """Incremental parser: :meth:`feed` bytes as they arrive, get the completed frames."""

    def __init__(self) -> None:
        self.retry: int | None = None
        """The last ``retry:`` value received (reconnection delay in ms)."""
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="strict")
        self._text = ""
        self._started = False
        self._after_cr = False
        self._frame = Frame()
        self._data: list[str] = []
        self._has_lines = False

    def feed(self, data: bytes) -> list[Frame]:
        text = self._decoder.decode(data)
        if not self._started and text:
            self._started = True
            text = text.removeprefix("\ufeff")
        if self._after_cr and text:
            self._after_cr = False
            text = text.removeprefix("\n")  # the CR ending the last feed and this LF: one end
        buf = self._text + text
        frames: list[Frame] = []
        pos = 0
        while True:
            ends = [i for i in (buf.find("\r", pos), buf.find("\n", pos)) if i >= 0]
            if not ends:
                break
            end = min(ends)
            line = buf[pos:end]
            if buf[end] == "\r" and end + 1 == len(buf):
                self._after_cr = True
                pos = end + 1
            elif buf[end] == "\r" and buf[end + 1] == "\n":
                pos = end + 2
            else:
                pos = end + 1
            frame = self._line(line)
            if frame is not None:
                frames.append(frame)
        self._text = buf[pos:]
        return frames

    def _line(self, line: str) -> Frame | None:
        if line == "":
            if not self._has_lines:
                return None
            frame = self._frame
            if self._data:
                frame.data = "\n".join(self._data)
            if frame.data is None and not frame.comments:
                # Fields without data (a lone ``retry:``) set parser state; browsers
                # dispatch no event for them, so neither do we.
                if frame.retry is not None:
                    self.retry = frame.retry
                self._frame = Frame()
                self._data = []
                self._has_lines = False
                return None
            self._frame, self._data, self._has_lines = Frame(), [], False
            return frame
        self._has_lines = True
        if line.startswith(":"):
            self._frame.comments.append(line[1:].removeprefix(" "))
            return None
        name, colon, value = line.partition(":")
        if colon:
            value = value.removeprefix(" ")
        self._frame.fields.append((name, value))
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._frame.event = value
        elif name == "id" and "\0" not in value:
            self._frame.id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self._frame.retry = int(value)
        return None

    def at_boundary(self) -> bool:
        """True when everything fed so far ended on a frame boundary."""
        return not self._has_lines and self._text == ""

    @property
    def pending(self) -> str:
        return self._text


def parse_frames(data: bytes, *, complete: bool = True) -> list[Frame]:
    """Parse a whole body; with ``complete``, fail unless it ends on a frame boundary."""
    parser = SSEParser()
    frames = parser.feed(data)
    if complete:
        assert parser.at_boundary(), f"body ends inside a frame: {parser.pending[-200:]!r}"
    return frames


@dataclass
class Ev:
    """One protocol event: its ``id:`` (``None`` when the frame had none), name and data."""

    id: int | None
    name: str
    data: Any
    frame: Frame = field(repr=False, compare=False)

    @property
    def text(self) -> str:
        """The text a ``thread.message.delta`` carries, or a message object's text."""
        if self.name == "thread.message.delta":
            parts = self.data["delta"].get("content") or []
        else:
            parts = self.data.get("content") or []
        return "".join(p["text"]["value"] for p in parts if p.get("type") == "text")

    @property
    def message_id(self) -> str:
        return str(self.data["id"])


def decode_frame(frame: Frame, framing: str = "default") -> Ev:
    """The protocol event a (non-comment) frame carries, checking its framing."""
    event_id = None if frame.id is None else int(frame.id)
    assert frame.data is not None, f"frame without data: {frame}"
    assert "\n" not in frame.data, f"payloads are single-line JSON: {frame.data[:200]!r}"
    if framing == "default":
        assert frame.event is None, f"default framing has no event: line: {frame}"
        envelope = json.loads(frame.data)
        assert set(envelope) == {"event", "data"}, envelope
        return Ev(event_id, envelope["event"], envelope["data"], frame)
    assert framing == "openai", framing
    assert frame.event is not None, f"openai framing names every event: {frame}"
    if frame.event == DONE:
        assert frame.data == "[DONE]", frame
        return Ev(event_id, DONE, "[DONE]", frame)
    data = json.loads(frame.data)
    assert not (isinstance(data, dict) and set(data) == {"event", "data"}), data
    return Ev(event_id, frame.event, data, frame)


def decode(frames: Iterable[Frame], framing: str = "default") -> list[Ev]:
    """Protocol events of ``frames`` (keepalive comments skipped)."""
    return [decode_frame(f, framing) for f in frames if not f.is_comment]


def parse_events(body: bytes, framing: str = "default") -> list[Ev]:
    """Protocol events of a whole response body (which must end on a frame boundary)."""
    return decode(parse_frames(body), framing)


class SSEReader:
    """Reads a live ``text/event-stream`` response event by event.

    Keeps every byte received (:attr:`body`) and every event decoded (:attr:`events`).
    """

    def __init__(self, response: aiohttp.ClientResponse, framing: str = "default") -> None:
        self.response = response
        self.framing = framing
        self.body = b""
        self.events: list[Ev] = []
        self.ended = False
        self._parser = SSEParser()
        self._pending: list[Ev] = []

    async def _fill(self) -> bool:
        data = await self.response.content.readany()
        if not data:
            self.ended = True
            return False
        self.body += data
        self._pending.extend(decode(self._parser.feed(data), self.framing))
        return True

    async def next(self) -> Ev | None:
        """The next event, or ``None`` at the end of the body."""
        while not self._pending:
            if self.ended or not await self._fill():
                return None
        event = self._pending.pop(0)
        self.events.append(event)
        return event

    async def until(self, predicate: Callable[[Ev], bool]) -> Ev:
        """Read up to and including the first event matching ``predicate``."""
        while True:
            event = await self.next()
            assert event is not None, f"the stream ended first; got {[e.name for e in self.events]}"
            if predicate(event):
                return event

    async def rest(self) -> list[Ev]:
        """Read to the end of the body; the events read by this call."""
        start = len(self.events)
        while await self.next() is not None:
            pass
        assert self._parser.at_boundary(), f"body ends inside a frame: {self._parser.pending!r}"
        return self.events[start:]

    async def read_all(self, timeout: float) -> list[Ev]:
        """Every event to the end of the body, bounded by ``timeout`` seconds."""
        async with asyncio.timeout(timeout):
            await self.rest()
        return self.events
