"""The hub ↔ worker wire format. Pure and synchronous (the sans-I/O core of isolation).

A message is a JSON object (``orjson``), framed by its length as 4 bytes big-endian.
:func:`encode` frames one message, :func:`encode_many` several in one buffer (what a
sender writes once per event-loop turn), and :class:`Decoder` takes bytes as they arrive
and hands back whole messages.

Messages carry an ``op``. Worker → hub: ``ready``, ``call`` (``id``, ``method``,
``args``), ``note`` (``method``, ``args``: a call that wants no answer), ``done``
(the agent's end). Hub → worker: ``run``, ``reply`` (``id``, ``result``), ``error``
(``id`` and the error), ``chunks`` (``stream``, ``chunks``), ``stream_end`` (``stream``,
``error``), ``cancel``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from ..errors import AgentRuntimeError

__all__ = ["MAX_FRAME", "Decoder", "WireError", "encode", "encode_many"]

MAX_FRAME = 64 * 1024 * 1024
"""The largest message either side accepts (a bigger one means a broken peer)."""

_HEADER = 4


class WireError(AgentRuntimeError):
    """The peer sent bytes that are not a message (too large, or not JSON)."""


def encode(message: dict[str, Any]) -> bytes:
    """One framed message."""
    body = orjson.dumps(message)
    return len(body).to_bytes(_HEADER, "big") + body


def encode_many(messages: Iterable[dict[str, Any]]) -> bytes:
    """Several framed messages in one buffer, in order."""
    return b"".join(encode(m) for m in messages)


class Decoder:
    """Bytes in, whole messages out, in order; keeps a partial frame for the next feed."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        """The messages completed by ``data``. Raises :class:`WireError` for a frame over
        :data:`MAX_FRAME` or a body that is not a JSON object."""
        buffer = self._buffer
        buffer += data
        out: list[dict[str, Any]] = []
        start = 0
        while len(buffer) - start >= _HEADER:
            size = int.from_bytes(buffer[start : start + _HEADER], "big")
            if size > MAX_FRAME:
                raise WireError(f"a frame of {size} bytes is over the limit")
            end = start + _HEADER + size
            if len(buffer) < end:
                break
            try:
                message = orjson.loads(bytes(buffer[start + _HEADER : end]))
            except orjson.JSONDecodeError as exc:
                raise WireError(f"a frame is not JSON: {exc}") from None
            if not isinstance(message, dict):
                raise WireError("a frame is not a JSON object")
            out.append(message)
            start = end
        if start:
            del buffer[:start]
        return out

    @property
    def pending(self) -> int:
        """Bytes held of a frame not complete yet."""
        return len(self._buffer)
