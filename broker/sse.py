"""The aiohttp Server-Sent-Events handler: one HTTP response per subscription.

Per event, nothing here runs: the stream writes each batch of pre-encoded frames straight
to the connection's transport, with HTTP/1.1 chunk framing applied once per batch and
shared by every subscriber at the same position. ``aiohttp-sse``'s ``EventSourceResponse``
was measured and left off this path (see ``benchmarks/README.md``): its ``send()`` formats
a string and arms a timer per event per subscriber (~26–30 µs against ~6 µs for a bare
transport write), and its response starts a ping task per subscriber whose ``: ping``
*block* the openai SDK's parser dispatches as an empty event. Keepalives come instead from
one registry-wide task (:meth:`broker.Stream.keepalive`), as a single comment line.

Lifecycle of one subscription
-----------------------------
1. Cursor, ``format`` and ``snapshot`` are parsed once by the caller
   (:func:`parse_stream_query`) and checked *before* any byte is sent, so a bad cursor is
   a plain ``400`` (raised as :class:`~broker.errors.InvalidCursor`), and a cursor at the
   end of a finished stream is ``204 No Content``.
2. Headers are sent; the backlog is written in one write; live events follow.
3. If the transport's buffer passes ``config.high_water`` the subscription is paused;
   this handler waits for the transport to drain, at most ``config.stall_timeout``
   seconds, then resumes it (it catches up from its cursor) or aborts the connection.
   The kernel is also asked to drop the connection when sent data stays unacknowledged
   that long (``TCP_USER_TIMEOUT``), which catches a hung peer on a quiet stream.
   Every subscriber dropped for making no progress (by that timeout, by the kernel's, or
   a finished one not taking its end) is counted in ``Counters.stalled_disconnects`` and
   logged (INFO) with how far behind it was.
4. After the stream's terminal event the response ends (``event: done`` first in the
   OpenAI framing). A stream dropped under a subscriber closes the connection without
   ending the body, so the client knows to resume.

Run the server with ``handler_cancellation=True`` (the hub does) so that a client going
away cancels this handler and releases the subscription at once; otherwise it is
released at the next write or keepalive that finds the connection closed.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from aiohttp import hdrs, web

from .config import BrokerConfig
from .cursor import parse_cursor
from .errors import BackendUnavailable, BrokerError, InvalidCursor, LimitExceeded, StreamNotFound
from .events import DONE_FRAME, RETRY_LINE, Event, Framing
from .registry import Registry
from .stream import Stream, Subscription, SubState
from .types import Wire, plain_wire

__all__ = [
    "SSE_HEADERS",
    "StreamQuery",
    "chunked_wire",
    "make_stream_handler",
    "parse_stream_query",
    "plain_error_response",
    "request_cursor",
    "request_framing",
    "serve_stream",
]

logger = logging.getLogger(__name__)

SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}

_TRUE = frozenset({"1", "true", "yes", "on"})


def chunked_wire(data: bytes) -> bytes:
    """HTTP/1.1 chunk framing of one batch."""
    return b"%x\r\n%b\r\n" % (len(data), data)


def request_cursor(request: web.Request) -> tuple[int | None, str]:
    """The request's cursor and the name of the parameter it came from (for errors):
    ``Last-Event-ID`` when that header is present and not blank, else ``last_event_id``."""
    header = request.headers.get(hdrs.LAST_EVENT_ID)
    cursor = parse_cursor(header, request.query.get("last_event_id"))
    source = "Last-Event-ID" if header is not None and header.strip() else "last_event_id"
    return cursor, source


def request_framing(request: web.Request) -> Framing:
    """The framing the ``format`` query parameter asks for (400 naming ``format``)."""
    try:
        return Framing.parse(request.query.get("format"))
    except BrokerError as exc:
        raise InvalidCursor(str(exc), param="format") from exc


@dataclass(frozen=True, slots=True)
class StreamQuery:
    """What a subscription request asks for, parsed once (see :func:`parse_stream_query`)."""

    cursor: int | None
    """Where to resume: the last event id the client has (``None``: from the start)."""
    cursor_param: str
    """The parameter the cursor came from, named in a cursor error."""
    framing: Framing
    snapshot: bool
    """``snapshot=1``: start with the publisher's snapshot as of the cursor."""


def parse_stream_query(request: web.Request, *, framing: Framing | None = None) -> StreamQuery:
    """Parse a subscription request's cursor, ``format`` and ``snapshot``, in that order.

    Raises :class:`~broker.errors.InvalidCursor` (naming the parameter) for a bad cursor
    or format. ``framing`` overrides the ``format`` query parameter (not read then).
    """
    cursor, source = request_cursor(request)
    if framing is None:
        framing = request_framing(request)
    snapshot = request.query.get("snapshot", "").lower() in _TRUE
    return StreamQuery(cursor, source, framing, snapshot)


def _set_user_timeout(request: web.Request, seconds: float) -> None:
    """Ask the kernel (Linux) to abort the connection when sent data stays unacknowledged
    for ``seconds``: a hung peer is found even when too little is sent to fill buffers."""
    option = getattr(socket, "TCP_USER_TIMEOUT", None)
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    if option is None or sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, option, int(seconds * 1000))
    except OSError:  # not a TCP socket after all, or not supported: keep the default
        logger.debug("TCP_USER_TIMEOUT not set", exc_info=True)


class _TransportSink:
    """A subscription's sink: the response's transport, written without awaiting."""

    __slots__ = ("_transport", "wire", "_high")

    def __init__(self, transport: asyncio.Transport, wire: Wire, high_water: int) -> None:
        self._transport = transport
        self.wire = wire
        self._high = high_water

    def write(self, data: bytes) -> None:
        self._transport.write(data)

    def writable(self) -> bool:
        return self._transport.get_write_buffer_size() <= self._high

    def is_closing(self) -> bool:
        return self._transport.is_closing()


class _LossWatch(asyncio.Protocol):
    """Stands between a transport and its protocol (aiohttp's) while a subscription lasts,
    forwarding every call, to learn why the connection was lost: ``TimeoutError``
    (``ETIMEDOUT``) when the kernel dropped a peer that stopped taking data.

    aiohttp cancels the handler on a lost connection without saying why; this is how a
    slow subscriber cut off by the kernel is told from a client that left.
    """

    __slots__ = ("transport", "inner", "lost_with")

    def __init__(self, transport: asyncio.BaseTransport, inner: asyncio.BaseProtocol) -> None:
        self.transport = transport
        self.inner = inner
        self.lost_with: BaseException | None = None

    @classmethod
    def install(cls, transport: asyncio.BaseTransport) -> _LossWatch | None:
        inner = transport.get_protocol()
        if not isinstance(inner, asyncio.Protocol) or isinstance(inner, asyncio.BufferedProtocol):
            return None  # not a protocol this can stand in for: go without
        watch = cls(transport, inner)
        transport.set_protocol(watch)
        return watch

    def restore(self) -> None:
        """Give the transport its protocol back (the connection may serve more requests)."""
        if self.transport.get_protocol() is self:
            self.transport.set_protocol(self.inner)

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)  # type: ignore[attr-defined]

    def eof_received(self) -> bool | None:
        result: bool | None = self.inner.eof_received()  # type: ignore[attr-defined]
        return result

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost_with = exc
        self.inner.connection_lost(exc)


def at_end_response() -> web.Response:
    """The answer to a cursor at the end of a finished stream: ``204 No Content``."""
    return web.Response(status=204, headers={"Cache-Control": "no-cache"})


def replay_response(events: Iterable[Event], framing: Framing) -> web.Response:
    """A finished stream's ``events`` answered in one plain body, ended as a live stream
    ends (``event: done`` in the OpenAI framing): for a stream served from storage rather
    than from the registry. No ``retry:`` and no keepalives: the body is complete."""
    body = b"".join(e.frame(framing) for e in events)
    if framing is Framing.OPENAI:
        body += DONE_FRAME
    return web.Response(body=body, headers=SSE_HEADERS)


async def serve_stream(
    request: web.Request,
    stream: Stream,
    query: StreamQuery,
    *,
    config: BrokerConfig,
    registry: Registry | None = None,
) -> web.StreamResponse:
    """Serve ``stream`` to the client of ``request`` from ``query`` (the request's cursor,
    framing and snapshot wish, parsed by the caller with :func:`parse_stream_query`)
    until the stream ends or the client leaves.

    Raises :class:`~broker.errors.BrokerError` subclasses before the response starts for
    a cursor ahead of the stream or a refused limit; callers turn them into error answers
    (see :func:`make_stream_handler`).
    """
    cursor, framing = query.cursor, query.framing
    try:
        stream.check_cursor(cursor)
    except InvalidCursor as exc:
        raise InvalidCursor(str(exc), param=query.cursor_param) from None
    if stream.at_end(cursor):
        return at_end_response()
    # Hold a subscriber slot from the limit check until the subscription exists, so that
    # concurrent requests cannot all pass the check while this one sends its headers.
    release = registry.reserve(stream) if registry is not None else None
    try:
        response = web.StreamResponse(status=200, headers=SSE_HEADERS)
        _set_user_timeout(request, config.stall_timeout)
        writer = await response.prepare(request)
        transport = request.transport
        if transport is None or transport.is_closing() or writer is None:
            return response
        if stream.discarded:  # dropped while the headers were being sent
            response.force_close()
            transport.close()
            return response
        transport.set_write_buffer_limits(high=config.high_water)
        chunked = response.headers.get(hdrs.TRANSFER_ENCODING, "").lower() == "chunked"
        wire = chunked_wire if chunked else plain_wire
        sink = _TransportSink(transport, wire, config.high_water)
        preamble = b"" if config.retry_ms is None else RETRY_LINE % config.retry_ms
        sub = stream.subscribe(sink, cursor, framing, snapshot=query.snapshot, preamble=preamble)
        watch = _LossWatch.install(transport)
    finally:
        if release is not None:
            release()

    stalled: str | None = None
    try:
        while True:
            state = await sub.wait()
            if state is not SubState.PAUSED:
                break
            try:
                async with asyncio.timeout(config.stall_timeout):
                    await writer.drain()
            except TimeoutError:
                stalled = f"stalled for {config.stall_timeout:g}s"
                break
            except ConnectionError:
                break
            stream.resume(sub)
    finally:
        if watch is not None:
            watch.restore()
        if stalled is None and watch is not None and isinstance(watch.lost_with, TimeoutError):
            # The kernel gave up on the peer (TCP_USER_TIMEOUT: sent data stayed
            # unacknowledged, usually behind a full receive window). It often fires before
            # the timer above: the peer's window closes long before the transport's buffer
            # reaches high_water.
            stalled = f"unacknowledged for {config.stall_timeout:g}s"
        if stalled is not None:
            _dropped_slow(stream, sub, transport, stalled)
            transport.abort()
        stream.unsubscribe(sub)

    if sub.state is SubState.DONE and not transport.is_closing():
        # It was sent the whole stream: it may still not take it (the timer below), or the
        # kernel may cut it off meanwhile (seen by the watch; aiohttp then cancels us).
        watch = _LossWatch.install(transport)
        dropped = False
        try:
            async with asyncio.timeout(config.stall_timeout):
                await response.write_eof()
        except TimeoutError:
            dropped = True
            _dropped_slow(stream, sub, transport, f"stalled for {config.stall_timeout:g}s")
            transport.abort()
        except ConnectionError:
            pass
        finally:
            if watch is not None:
                watch.restore()
                if not dropped and isinstance(watch.lost_with, TimeoutError):
                    why = f"unacknowledged for {config.stall_timeout:g}s"
                    _dropped_slow(stream, sub, transport, why)
    else:
        # Ended early: leave the body unterminated so the client knows to resume.
        response.force_close()
        transport.close()
    return response


def _dropped_slow(
    stream: Stream, sub: Subscription, transport: asyncio.Transport, why: str
) -> None:
    """Count (``Counters.stalled_disconnects``) and log one slow subscriber dropped."""
    stream.counters.stalled_disconnects += 1
    logger.info(
        "stream %r: slow subscriber dropped (%s) at event %d, %d events and %d bytes behind",
        stream.key,
        why,
        sub.cursor,
        max(0, stream.head - sub.cursor),
        transport.get_write_buffer_size(),
    )


def plain_error_response(exc: BrokerError) -> web.Response:
    """A minimal answer to a broker error raised before streaming, for the broker used on
    its own: a status and the message as plain text (``param: …`` on a second line when
    the error names one). Applications answer in their own format (see
    :func:`make_stream_handler`'s ``on_error``)."""
    status = 400
    param = exc.param if isinstance(exc, InvalidCursor) else None
    if isinstance(exc, StreamNotFound):
        status = 404
    elif isinstance(exc, LimitExceeded):
        status, param = 429, exc.limit
    elif isinstance(exc, BackendUnavailable):
        status = 503
    text = str(exc) if param is None else f"{exc}\nparam: {param}"
    return web.Response(status=status, text=text + "\n")


def make_stream_handler(
    registry: Registry,
    key_of: Callable[[web.Request], str] = lambda request: request.match_info["key"],
    *,
    on_error: Callable[[BrokerError], web.StreamResponse] = plain_error_response,
) -> Callable[[web.Request], object]:
    """A ready aiohttp handler serving the registry's stream named by ``key_of(request)``.

    A broker error raised before streaming (a bad cursor or format, an unknown key, a
    refused limit, an unreachable backend) is answered with ``on_error(exc)``.
    """

    async def handler(request: web.Request) -> web.StreamResponse:
        key = key_of(request)
        try:
            query = parse_stream_query(request)
            stream = await registry.open(key, cursor=query.cursor)
            if stream is None:
                raise StreamNotFound(f"no stream {key!r}")
            return await serve_stream(
                request, stream, query, config=registry.config, registry=registry
            )
        except BrokerError as exc:
            return on_error(exc)

    return handler
