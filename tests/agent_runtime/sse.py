"""Protocol events for the runtime's end-to-end tests, and a reader of live SSE responses.

Frames come from the broker tests' SSE parser (:mod:`tests.broker.sse_parse`: WHATWG
rules, keepalive comments and every raw field kept, so tests can check exactly what went
over the wire).

:func:`decode` turns frames into protocol events (:class:`Ev`) in either framing of
``docs/protocol.md``: the default one (no ``event:`` line, ``data:`` holding
``{"event", "data"}``) or OpenAI's (``event: <name>``, ``data: <bare object>``, ending
``event: done`` / ``data: [DONE]``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from tests.broker.sse_parse import Frame, SSEParser, parse_frames

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
