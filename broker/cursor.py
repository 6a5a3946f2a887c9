"""Parsing subscription cursors. Pure and synchronous.

A cursor is the id of the last event a subscriber has seen; the stream continues with the
event after it. It arrives as the ``Last-Event-ID`` header (what a browser ``EventSource``
sends when it reconnects) or the ``last_event_id`` query parameter (what a client sets
explicitly). When both are present the header wins: an ``EventSource`` opened on a URL
that carries ``last_event_id`` keeps that URL on reconnect and sends the newer position
in the header.
"""

from __future__ import annotations

from .errors import InvalidCursor

__all__ = ["MAX_CURSOR_DIGITS", "check_cursor", "parse_cursor"]

MAX_CURSOR_DIGITS = 18


def _parse_one(value: str, param: str) -> int | None:
    value = value.strip()
    if value == "":
        return None
    if not (value.isascii() and value.isdigit()) or len(value) > MAX_CURSOR_DIGITS:
        raise InvalidCursor(
            f"{param} must be an event id (a non-negative integer), got {value[:40]!r}",
            param=param,
        )
    return int(value)


def check_cursor(cursor: int, head: int, *, param: str = "last_event_id") -> None:
    """Raise :class:`InvalidCursor` (naming ``param``) unless ``cursor`` is an id of a
    stream whose last event id is ``head``."""
    if cursor < 0 or cursor > head:
        raise InvalidCursor(
            f"cursor {cursor} is ahead of the stream (last event id is {head})", param=param
        )


def parse_cursor(header: str | None, query: str | None) -> int | None:
    """The cursor carried by a request, or ``None`` for "from the start".

    ``0`` is a valid cursor meaning "before the first event". Anything that is not a
    non-negative decimal integer raises :class:`InvalidCursor` naming the parameter.
    Whether the cursor is ahead of the stream is checked by the stream, not here.
    """
    if header is not None:
        parsed = _parse_one(header, "Last-Event-ID")
        if parsed is not None:
            return parsed
    if query is not None:
        return _parse_one(query, "last_event_id")
    return None
