"""A message channel over a stream socket, on the event loop (the thin I/O layer).

:meth:`Channel.send` never awaits and never writes at once: messages sent during one
loop turn go out together in one ``write`` at the end of the turn, so a burst of chunks
costs one system call, not one per token. Incoming bytes are decoded by
:class:`~agent_runtime.isolation.wire.Decoder` and each message is handed to
``on_message`` in order, on the loop. ``closed`` resolves when the peer goes away (or the
channel is closed), with the reason.

Backpressure: none on purpose. What is sent is bounded by what a run produces (its
completions' chunks), and a peer that stops reading is a worker that is stuck, which the
hub ends by killing it.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable
from typing import Any

from .wire import Decoder, WireError, encode

__all__ = ["Channel", "open_channel"]

logger = logging.getLogger(__name__)

OnMessage = Callable[[dict[str, Any]], None]


class Channel(asyncio.Protocol):
    """One end of a hub ↔ worker connection. Loop thread only."""

    def __init__(self, on_message: OnMessage) -> None:
        self._on_message = on_message
        self._decoder = Decoder()
        self._transport: asyncio.Transport | None = None
        self._out: list[bytes] = []
        self._flush: asyncio.Handle | None = None
        self._loop = asyncio.get_running_loop()
        self.closed: asyncio.Future[str] = self._loop.create_future()

    # -- asyncio.Protocol ------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        try:
            messages = self._decoder.feed(data)
        except WireError as exc:
            logger.error("closing a worker channel: %s", exc)
            self.close(str(exc))
            return
        for message in messages:
            try:
                self._on_message(message)
            except Exception:  # one bad message must not stop the channel
                logger.exception("handling a %r message failed", message.get("op"))

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if not self.closed.done():
            self.closed.set_result(str(exc) if exc else "the peer closed the connection")

    # -- sending ---------------------------------------------------------------------

    def send(self, message: dict[str, Any]) -> None:
        """Queue ``message``; everything queued this loop turn is written in one go."""
        if self._transport is None:
            return
        self._out.append(encode(message))
        if self._flush is None:
            self._flush = self._loop.call_soon(self._write)

    def _write(self) -> None:
        self._flush = None
        out, self._out = self._out, []
        if self._transport is not None and out:
            self._transport.write(b"".join(out))

    def close(self, reason: str = "closed") -> None:
        """Write what is queued, then close. Idempotent."""
        if self._flush is not None:
            self._flush.cancel()
            self._write()
        if self._transport is not None:
            self._transport.close()
        if not self.closed.done():
            self.closed.set_result(reason)


async def open_channel(sock: socket.socket, on_message: OnMessage) -> Channel:
    """A :class:`Channel` over a connected stream socket (its ownership passes to it)."""
    loop = asyncio.get_running_loop()
    _transport, channel = await loop.connect_accepted_socket(lambda: Channel(on_message), sock)
    return channel
