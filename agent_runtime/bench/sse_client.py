"""The bench's subscribers: raw asyncio protocols reading a run's SSE stream.

Cheap by design, so that one core of load can watch a hub using the other: each
connection is an :class:`asyncio.BufferedProtocol` reading into one buffer shared by all
connections (asyncio's plain ``Protocol`` path allocates 256 KiB per read), undoing the
HTTP/1.1 chunk framing and splitting SSE frames with ``bytes`` methods. Each event's JSON
is decoded once per run, by the first subscriber that receives it; every other subscriber
compares its ``data`` bytes with that first copy and reuses the decoded fields.

A :class:`Subscriber` is logical: it survives reconnections (its own planned drop, or an
unexpected loss, retried like a browser's ``EventSource``) and resumes with
``Last-Event-ID``, and it checks what it receives against the contract: ids ``1, 2, 3…``
with no duplicate and no hole except one announced by ``thread.stream.gap`` and covered by
the snapshot that follows, and per message the text of its deltas (or, for a message the
snapshot reports finished, its final text).

Concurrency: everything runs on the bench's event loop; nothing is locked. Cancelling
the loop's tasks leaves transports open: call :meth:`Subscriber.close`.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import orjson

from ..protocol import TERMINAL_RUN_EVENTS
from .stats import Histogram

__all__ = [
    "Endpoint",
    "FrameInfo",
    "RunState",
    "Subscriber",
    "BenchCounters",
    "parse_event",
    "split_frame",
]

logger = logging.getLogger(__name__)

DELTA = "thread.message.delta"
GAP = "thread.stream.gap"
TERMINAL = TERMINAL_RUN_EVENTS
_MESSAGE_END = frozenset({"thread.message.completed", "thread.message.incomplete"})
_MAX_RETRIES = 5
_RETRY_DELAY = 0.1

FrameInfo = tuple[str, str | None, str | None]
"""What a frame means to a subscriber: event name, message id, text (delta or final)."""

_RECV_BUF = memoryview(bytearray(256 * 1024))
monotonic = time.monotonic


def split_frame(frame: bytes) -> tuple[int | None, bytes | None]:
    """The ``id`` and ``data`` of one SSE frame (``data`` None: nothing to dispatch).

    Fast paths for the hub's own layouts (``id: N`` then one ``data:`` line, or a lone
    ``data:`` line); any other frame is parsed field by field (``retry:``, comments…).
    """
    if frame.startswith(b"id: "):
        newline = frame.find(b"\n")
        if frame.startswith(b"data: ", newline + 1) and frame.find(b"\n", newline + 1) < 0:
            try:
                return int(frame[4:newline]), frame[newline + 7 :]
            except ValueError:
                pass
    elif frame.startswith(b"data: ") and b"\n" not in frame:
        return None, frame[6:]
    event_id: int | None = None
    data: list[bytes] = []
    for line in frame.split(b"\n"):
        key, _, value = line.partition(b":")
        value = value[1:] if value.startswith(b" ") else value
        if key == b"data":
            data.append(value)
        elif key == b"id":
            try:
                event_id = int(value)
            except ValueError:
                event_id = None
    return event_id, b"\n".join(data) if data else None


def parse_event(data: bytes) -> FrameInfo:
    """Decode the ``data:`` of a default-framing frame into :data:`FrameInfo`
    (name ``""`` for anything that is not an agentstream event)."""
    try:
        envelope = orjson.loads(data)
    except orjson.JSONDecodeError:
        return "", None, None
    if not isinstance(envelope, dict):
        return "", None, None
    name = str(envelope.get("event", ""))
    payload = envelope.get("data")
    if not isinstance(payload, dict) or not name.startswith("thread.message."):
        return name, None, None
    message_id = payload.get("id")
    if name == DELTA:
        parts = (payload.get("delta") or {}).get("content") or ()
    elif name in _MESSAGE_END:
        parts = payload.get("content") or ()
    else:
        return name, message_id, None
    text = "".join(p.get("text", {}).get("value", "") for p in parts if p.get("type") == "text")
    return name, message_id, text


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where the hub listens: host, port and the path the API's ``/v1`` is under."""

    host: str
    port: int
    prefix: str = ""
    address: str | None = None
    """``host`` resolved once (connections go there; ``Host:`` still says ``host``)."""

    def stream_request(self, thread_id: str, run_id: str, cursor: int | None) -> bytes:
        resume = b"" if cursor is None else b"Last-Event-ID: %d\r\n" % cursor
        path = f"{self.prefix}/v1/threads/{thread_id}/stream/{run_id}".encode()
        return (
            b"GET %s HTTP/1.1\r\nHost: %s:%d\r\nAccept: text/event-stream\r\n"
            b"Cache-Control: no-cache\r\nConnection: close\r\n%s\r\n"
            % (path, self.host.encode(), self.port, resume)
        )


class BenchCounters:
    """Counters shared by every subscriber of the bench (read by the progress display)."""

    __slots__ = ("delivered", "bytes", "window", "connected", "errors", "error_examples")

    def __init__(self) -> None:
        self.delivered = 0
        self.bytes = 0
        self.window = Histogram()
        """Latency samples since the last tick (the ticker swaps it)."""
        self.connected = 0
        self.errors = 0
        self.error_examples: list[str] = []

    def error(self, what: str) -> None:
        self.errors += 1
        if len(self.error_examples) < 10:
            self.error_examples.append(what)


@dataclass(eq=False)
class RunState:
    """One run, shared by its subscribers: the decoded frames and first receipts."""

    run_id: str
    thread_id: str
    t_post: float
    frames: dict[int, tuple[bytes, FrameInfo]] = field(default_factory=dict)
    """Per event id: the first ``data`` received and what it means; every other copy of
    that event must carry the same bytes."""
    first_rx: dict[int, float] = field(default_factory=dict)
    last_rx: dict[int, float] = field(default_factory=dict)
    first_delta_rx: float | None = None
    terminal_rx: float | None = None
    answered: float | None = None
    """When the ``POST`` that started the run was answered (``time.monotonic()``)."""
    first_connected: float | None = None
    """When the first of its subscribers' responses began."""

    def release(self) -> None:
        """Drop the per-event records (after the run is verified)."""
        self.frames.clear()
        self.first_rx.clear()
        self.last_rx.clear()


class Subscriber:
    """One logical subscriber of a run (see the module docstring)."""

    def __init__(
        self, run: RunState, endpoint: Endpoint, tally: BenchCounters, *, late: bool, drops: bool
    ) -> None:
        self.run = run
        self.endpoint = endpoint
        self.tally = tally
        self.late = late
        self.drops = drops
        self.expected = 1
        self.delivered = 0
        self.duplicates = 0
        self.lost = 0
        self.covered = 0
        """Ids skipped by a ``thread.stream.gap`` and accounted for by its snapshot."""
        self.protocol_gaps = 0
        self.corrupt = 0
        self.reconnects = 0
        self.errors = 0
        self.snapshot_mode = False
        self.terminal: str | None = None
        self.parts: dict[str, list[str]] = {}
        self.finals: dict[str, str] = {}
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._conn: _Conn | None = None
        self._live_since = math.inf
        """When this connection's response began: events first received earlier are replays."""
        self._retries = 0
        self._tasks: set[asyncio.Task[None]] = set()

    # -- connections ---------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        return self.done.done()

    def _finish(self) -> None:
        if not self.done.done():
            self.done.set_result(None)

    async def connect(self) -> None:
        """Open (or reopen, resuming after the last id received) the stream connection."""
        if self.finished:
            return
        cursor = self.expected - 1 if self.expected > 1 else None
        request = self.endpoint.stream_request(self.run.thread_id, self.run.run_id, cursor)
        loop = asyncio.get_running_loop()
        self._live_since = math.inf
        try:
            _transport, conn = await loop.create_connection(
                lambda: _Conn(self, request),
                self.endpoint.address or self.endpoint.host,
                self.endpoint.port,
            )
        except OSError as exc:
            self._failed(f"connect: {exc}")
            return
        if self.finished:
            conn.close()

    def drop(self) -> bool:
        """Abort the connection now, as a network failure would; False if not connected."""
        conn = self._conn
        if conn is None or self.finished:
            return False
        self._conn = None
        conn.abort()
        return True

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.abort()
        self._finish()

    def _failed(self, what: str) -> None:
        """An unexpected failure: count it and retry (bounded), resuming after the cursor."""
        self.errors += 1
        self.tally.error(f"{self.run.run_id}: {what}")
        if self.finished:
            return
        self._retries += 1
        if self._retries > _MAX_RETRIES:
            logger.warning("subscriber of %s gave up after %d errors", self.run.run_id, self.errors)
            self._finish()
            return
        asyncio.get_running_loop().call_later(_RETRY_DELAY, self._reconnect_soon)

    def _reconnect_soon(self) -> None:
        task = asyncio.ensure_future(self.connect())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _status(self, conn: _Conn, status: int) -> None:
        if status == 200:
            self._live_since = monotonic()
            if self.run.first_connected is None:
                self.run.first_connected = self._live_since
            self.tally.connected += 1
        elif status == 204 and self.expected > 1:  # the stream had ended at our cursor
            conn.close()
            self._finish()
        else:
            self._conn = None
            conn.close()
            self._failed(f"HTTP status {status}")

    def _lost(self, conn: _Conn, error: Exception | None) -> None:
        if conn.status == 200:
            self.tally.connected -= 1
        if self._conn is not conn:
            return  # dropped on purpose, or replaced
        self._conn = None
        if not self.finished:
            self._failed(f"connection lost before the run's end ({error or 'closed'})")

    # -- frames --------------------------------------------------------------------------

    def on_frames(self, frames: list[bytes], now: float) -> None:
        run = self.run
        cache = run.frames
        tally = self.tally
        for frame in frames:
            if not frame or frame[0] == 58:  # b":" — a comment (keepalive)
                continue
            event_id, data = split_frame(frame)
            if data is None:  # e.g. "retry: 1000"
                continue
            if event_id is None:
                info = parse_event(data)
                if info[0] == GAP:
                    self.protocol_gaps += 1
                    self.snapshot_mode = True
                    continue
                if not self.snapshot_mode:
                    self.corrupt += 1
                self._apply(info, now)
                continue
            if self.snapshot_mode:  # the snapshot's last event: it carries the head's id
                self.snapshot_mode = False
                if event_id >= self.expected:
                    self.covered += event_id - self.expected + 1
                    self.expected = event_id + 1
                self._apply(parse_event(data), now)
                continue
            expected = self.expected
            if event_id < expected:
                self.duplicates += 1
                continue
            if event_id > expected:
                self.lost += event_id - expected
            self.expected = event_id + 1
            self.delivered += 1
            tally.delivered += 1
            cached = cache.get(event_id)
            if cached is None:
                info = parse_event(data)
                cache[event_id] = (data, info)
                if not info[0]:
                    self.corrupt += 1
            elif cached[0] == data:
                info = cached[1]
            else:
                self.corrupt += 1
                info = parse_event(data)
            first = run.first_rx.get(event_id)
            if first is None:
                run.first_rx[event_id] = now
            elif first >= self._live_since:  # a live delivery, not a backlog replay
                lag = now - first
                tally.window.add(lag)
                if now > run.last_rx.get(event_id, 0.0):
                    run.last_rx[event_id] = now
            self._apply(info, now)

    def _apply(self, info: FrameInfo, now: float) -> None:
        name, message_id, text = info
        if message_id is not None:
            if name == DELTA:
                self.parts.setdefault(message_id, []).append(text or "")
                if self.run.first_delta_rx is None:
                    self.run.first_delta_rx = now
            elif name == "thread.message.created":
                self.parts[message_id] = []
            elif name in _MESSAGE_END:
                self.finals[message_id] = text or ""
        elif name in TERMINAL:
            self.terminal = name
            if self.run.terminal_rx is None:
                self.run.terminal_rx = now
            self._retries = 0
            self._finish()

    def texts(self) -> dict[str, str]:
        """Each message's text as this subscriber rebuilt it: its deltas since the message
        was (re)created, or the final text the snapshot gave for a finished one."""
        out = {mid: "".join(parts) for mid, parts in self.parts.items()}
        for mid, final in self.finals.items():
            if not self.parts.get(mid):
                out[mid] = final
        return out


class _Conn(asyncio.BufferedProtocol):
    """One HTTP connection of a subscriber: response head, chunk framing, SSE frames."""

    def __init__(self, sub: Subscriber, request: bytes) -> None:
        self.sub = sub
        self.request = request
        self.transport: asyncio.Transport | None = None
        self.status = 0
        self.head = b""
        self.chunked = False
        self.raw = b""
        self.left = 0
        self.crlf = 0
        self.ended = False
        """The last chunk arrived: anything after it (trailers) is ignored."""
        self.pending = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.sub._conn = self
        transport.write(self.request)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def get_buffer(self, sizehint: int) -> memoryview:
        return _RECV_BUF

    def buffer_updated(self, nbytes: int) -> None:
        self.feed(bytes(_RECV_BUF[:nbytes]))

    def feed(self, data: bytes) -> None:
        """Handle bytes read from the connection, however they are split."""
        self.sub.tally.bytes += len(data)
        if not self.status:
            rest = self._head(data)
            if rest is None:
                return
            data = rest
        try:
            body = self._dechunk(data) if self.chunked else data
        except ValueError:  # a chunk size that is not hexadecimal
            self.sub.corrupt += 1
            self.abort()
            return
        if not body:
            return
        pending = self.pending + body if self.pending else body
        frames = pending.split(b"\n\n")
        self.pending = frames.pop()
        if frames:
            self.sub.on_frames(frames, monotonic())

    def _head(self, data: bytes) -> bytes | None:
        """Read the response head; the body bytes that followed it, or None if there is
        no body to read (head incomplete, or not a 200)."""
        self.head += data
        end = self.head.find(b"\r\n\r\n")
        if end < 0:
            if len(self.head) > 65536:
                self.status = -1
                self.sub._status(self, -1)
            return None
        head, rest = self.head[:end], self.head[end + 4 :]
        self.head = b""
        lines = head.split(b"\r\n")
        try:
            self.status = int(lines[0].split()[1])
        except (IndexError, ValueError):
            self.status = -1
        for line in lines[1:]:
            key, _, value = line.partition(b":")
            if key.strip().lower() == b"transfer-encoding" and b"chunked" in value.lower():
                self.chunked = True
        self.sub._status(self, self.status)
        return rest if self.status == 200 else None

    def _dechunk(self, data: bytes) -> bytes:
        if self.ended:
            return b""
        buf = self.raw + data if self.raw else data
        self.raw = b""
        out: list[bytes] = []
        pos, size = 0, len(buf)
        while pos < size:
            if self.left:
                take = min(self.left, size - pos)
                out.append(buf[pos : pos + take])
                pos += take
                self.left -= take
                if not self.left:
                    self.crlf = 2
            elif self.crlf:
                take = min(self.crlf, size - pos)
                pos += take
                self.crlf -= take
            else:
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    self.raw = buf[pos:]
                    break
                length = int(buf[pos:eol].split(b";")[0], 16)
                pos = eol + 2
                if length == 0:  # the last chunk: the response is complete
                    self.ended = True
                    break
                self.left = length
        return out[0] if len(out) == 1 else b"".join(out)

    def connection_lost(self, exc: Exception | None) -> None:
        self.sub._lost(self, exc)


def describe(sub: Subscriber) -> dict[str, Any]:
    """One subscriber's figures (for debugging output)."""
    return {
        "run": sub.run.run_id,
        "late": sub.late,
        "drops": sub.drops,
        "delivered": sub.delivered,
        "expected_next": sub.expected,
        "duplicates": sub.duplicates,
        "lost": sub.lost,
        "covered": sub.covered,
        "terminal": sub.terminal,
    }
