"""Test helpers of the broker suite: bounded waits, a collecting sink, a raw HTTP/1.1
client, and a checker of what a subscriber received against what was published."""

from __future__ import annotations

import asyncio
import gc
import os
import socket
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

import broker
from broker.events import Framing
from broker.types import Wire, plain_wire

from .sse_parse import Frame, SSEParser, parse_frames

UNIT = float(os.environ.get("AGENTSTREAM_TEST_UNIT", "1.0"))
"""Seconds; every timeout of the suite is a small multiple of it."""

GAP = broker.BrokerConfig().gap_event
"""The gap event's name under the default configuration."""


def within(units: float = 5) -> asyncio.Timeout:
    """``asyncio.timeout`` of ``units`` test units."""
    return asyncio.timeout(units * UNIT)


async def eventually(predicate: Callable[[], bool], *, units: float = 5, what: str = "") -> None:
    """Wait, bounded, for a condition that no awaitable signals (socket or timer state).

    Polls every few milliseconds; fails after ``units`` test units.
    """
    try:
        async with within(units):
            # A poll on purpose: these conditions have no event to await.
            while not predicate():  # noqa: ASYNC110
                await asyncio.sleep(0.005)
    except TimeoutError:
        raise AssertionError(f"condition not reached within {units * UNIT:.2f}s: {what}") from None


def norm(payload: Any) -> Any:
    """A payload as it comes back from the wire (JSON round trip)."""
    return orjson.loads(orjson.dumps(payload))


# -- a sink that collects bytes -------------------------------------------------------------


def tracked_held(root: object) -> int:
    """How many objects tracked by the garbage collector ``root``'s slots reach (types
    and what they hold left out): what a full collection has to visit for it."""
    stack = [getattr(root, slot, None) for slot in getattr(type(root), "__slots__", ())]
    seen: set[int] = set()
    count = 0
    while stack:
        obj = stack.pop()
        if id(obj) in seen or isinstance(obj, type):
            continue
        seen.add(id(obj))
        if gc.is_tracked(obj):
            count += 1
            stack.extend(gc.get_referents(obj))
    return count


class CollectingSink:
    """A :class:`broker.types.Sink` that keeps what it is given.

    ``stalled`` makes :meth:`writable` false; once the broker has seen that, the sink is
    *blocked* and any write before :meth:`unblock` is recorded as a violation (a paused
    subscription must not be written to). Writes after :attr:`closing` are violations too.
    """

    def __init__(self, wire: Wire = plain_wire) -> None:
        self.wire = wire
        self.writes: list[bytes] = []
        self.stalled = False
        self.closing = False
        self.blocked = False
        self.violations: list[str] = []

    def write(self, data: bytes) -> None:
        if self.closing:
            self.violations.append("write to a closing sink")
        if self.blocked:
            self.violations.append("write to a paused sink")
        self.writes.append(data)

    def writable(self) -> bool:
        if self.stalled:
            self.blocked = True
            return False
        return True

    def is_closing(self) -> bool:
        return self.closing

    def unblock(self) -> None:
        self.stalled = False
        self.blocked = False

    @property
    def data(self) -> bytes:
        return b"".join(self.writes)


# -- what a subscriber received ---------------------------------------------------------------


@dataclass(frozen=True)
class Rec:
    """One SSE event as a client sees it."""

    id: int | None
    name: str
    payload: Any
    done: bool = False


def to_records(frames: Sequence[Frame], framing: Framing = Framing.DEFAULT) -> list[Rec]:
    """Decode frames of either framing, checking their exact layout; keepalives skipped."""
    out: list[Rec] = []
    for f in frames:
        if f.is_comment:
            assert f.comments == ["ping"], f"unexpected comment frame {f!r}"
            continue
        # Keepalives (``: ping``) and the reconnection delay (``retry:``) are single lines
        # written between frames: they join the next frame's block, first.
        assert all(c == "ping" for c in f.comments), f"unexpected comment: {f!r}"
        names = [n for n, _ in f.fields]
        if names[:1] == ["retry"]:
            names = names[1:]
        if f.id is not None:
            assert f.id.isascii() and f.id.isdigit() and str(int(f.id)) == f.id, f.id
        event_id = None if f.id is None else int(f.id)
        assert f.data is not None, f"frame without data: {f!r}"
        if framing is Framing.DEFAULT:
            assert names in (["id", "data"], ["data"]), f"bad field layout {names}"
            envelope = orjson.loads(f.data)
            assert isinstance(envelope, dict) and set(envelope) == {"event", "data"}, envelope
            out.append(Rec(event_id, envelope["event"], envelope["data"]))
        else:
            assert names in (["id", "event", "data"], ["event", "data"]), f"bad layout {names}"
            assert f.event is not None
            if f.event == "done":
                assert f.data == "[DONE]" and f.id is None, f
                out.append(Rec(None, "done", None, done=True))
                continue
            out.append(Rec(event_id, f.event, orjson.loads(f.data)))
    return out


def records_of(
    data: bytes, framing: Framing = Framing.DEFAULT, *, complete: bool = True
) -> list[Rec]:
    return to_records(parse_frames(data, complete=complete), framing)


@dataclass
class SeqResult:
    cursor: int
    """Id of the last real event the subscriber has accounted for."""
    gaps: list[tuple[int, int]] = field(default_factory=list)
    snapshots: list[int] = field(default_factory=list)
    """The ``at`` of each snapshot received (prefix or after a gap)."""
    done_frame: bool = False


SnapshotCallable = Callable[[int], Sequence[tuple[str, Any]]]


def check_sequence(
    recs: Sequence[Rec],
    *,
    published: Sequence[tuple[str, Any]],
    start: int,
    snapshot: SnapshotCallable | None = None,
    snapshot_prefix: bool = False,
    resume_snapshot: SnapshotCallable | None = None,
) -> SeqResult:
    """Check that ``recs`` is exactly ``published`` from cursor ``start`` on, except where
    the broker reported a gap: ``thread.stream.gap`` ``{"from": cursor, "to": …}`` then,
    with a snapshot callback, the snapshot as of ``to - 1`` (only its last event carrying
    an id, ``to - 1``), or without one the buffered tail from ``to``.

    ``snapshot_prefix``: the subscription asked for a snapshot at its cursor, which must
    come first (id-less but for the last, stamped ``start``), made by ``resume_snapshot``
    (default: ``snapshot``).
    """
    result = SeqResult(cursor=start)
    c = start
    i = 0
    n = len(recs)

    def expect_snapshot(at: int, items: Sequence[Rec], fn: SnapshotCallable | None) -> None:
        assert fn is not None
        expected = [(name, norm(p)) for name, p in fn(at)]
        got = [(r.name, r.payload) for r in items]
        assert got == expected, f"snapshot at {at}: got {got}, expected {expected}"
        result.snapshots.append(at)

    if snapshot_prefix:
        prefix_fn = resume_snapshot or snapshot
        assert prefix_fn is not None
        k = len(prefix_fn(start))
        if k:
            items = recs[:k]
            assert len(items) == k, f"snapshot prefix truncated: {recs!r}"
            assert all(r.id is None for r in items[:-1]), items
            assert items[-1].id == start, f"last snapshot event must carry id {start}: {items}"
            expect_snapshot(start, items, prefix_fn)
            i = k

    while i < n:
        r = recs[i]
        if r.done:
            assert i == n - 1, f"[DONE] is not the last frame: {recs[i:]!r}"
            result.done_frame = True
            i += 1
            continue
        if r.name == GAP:
            assert isinstance(r.payload, dict) and set(r.payload) == {"from", "to"}, r.payload
            assert r.payload["from"] == c, f"gap from {r.payload['from']}, cursor is {c}"
            to = r.payload["to"]
            assert to >= c + 2, f"a gap must skip at least one event: {r.payload}"
            result.gaps.append((c, to))
            if snapshot is not None:
                j = i
                while j < n and recs[j].id is None:
                    j += 1
                assert j < n, f"gap and snapshot never stamped with an id: {recs[i:]!r}"
                at = recs[j].id
                assert at == to - 1, f"snapshot stamped {at}, gap says to={to}"
                assert all(x.name != GAP for x in recs[i + 1 : j + 1]), recs[i : j + 1]
                expect_snapshot(at, recs[i + 1 : j + 1], snapshot)
                c = at
                i = j + 1
            else:
                assert r.id is None, f"a gap without snapshot carries no id: {r}"
                c = to - 1
                i += 1
                assert i < n and recs[i].id == to, f"tail after gap must start at {to}"
            continue
        assert r.id == c + 1, f"expected event {c + 1}, got {r} (after {recs[max(0, i - 3) : i]})"
        assert c < len(published), f"event {r.id} was never published"
        name, payload = published[c]
        assert (r.name, r.payload) == (name, norm(payload)), f"event {r.id} differs: {r}"
        c += 1
        i += 1
    result.cursor = c
    return result


# -- a real server and a raw HTTP/1.1 client ---------------------------------------------------


@dataclass
class Server:
    host: str
    port: int
    registry: broker.Registry
    runner: web.AppRunner

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}{path}"

    @property
    def connections(self) -> int:
        """Connections the server still holds (a handler still running keeps its own)."""
        server = self.runner.server
        return 0 if server is None else len(server.connections)


class IncompleteBody(Exception):
    """The connection ended before the body's end (no terminating chunk)."""

    def __init__(self, received: bytes) -> None:
        super().__init__(f"connection ended inside the body after {len(received)} bytes")
        self.received = received


class RawHTTP:
    """One HTTP/1.x request over a raw asyncio connection, read by hand.

    Keeps the decoded body (chunked transfer coding removed) and parses it as SSE as it
    arrives. ``rcvbuf`` shrinks the socket's kernel receive buffer and ``limit`` the
    StreamReader's, so that a client that stops reading stalls the server quickly.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.server: Server | None = None
        self._reset()

    def _reset(self) -> None:
        self.status = 0
        self.version = ""
        self.headers: dict[str, str] = {}
        self.raw_head = b""
        self.body = bytearray()
        self.parser = SSEParser()
        self.frames: list[Frame] = []
        self.ended = False
        self.chunk_sizes: list[int] = []
        self._remaining: int | None = None

    @classmethod
    async def connect(
        cls, server: Server, *, rcvbuf: int | None = None, limit: int = 2**16
    ) -> RawHTTP:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            if rcvbuf is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.setblocking(False)
            await loop.sock_connect(sock, (server.host, server.port))
            reader, writer = await asyncio.open_connection(sock=sock, limit=limit)
        except BaseException:
            sock.close()
            raise
        self = cls(reader, writer)
        self.server = server
        return self

    async def request(
        self, path: str, headers: Mapping[str, str] | None = None, *, version: str = "1.1"
    ) -> RawHTTP:
        """Send a GET and read the response head (a new response: earlier state is reset)."""
        self._reset()
        server = self.server
        assert server is not None
        lines = [f"GET {path} HTTP/{version}", f"Host: {server.host}:{server.port}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        await self.writer.drain()
        await self._read_head()
        return self

    async def _read_head(self) -> None:
        head = await self.reader.readuntil(b"\r\n\r\n")
        self.raw_head = head
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        version, status, *_ = status_line.split(" ", 2)
        self.version = version
        self.status = int(status)
        for line in header_lines:
            if line:
                k, _, v = line.partition(":")
                assert k.lower() not in self.headers, f"duplicate header {k}"
                self.headers[k.lower()] = v.strip()
        if self.status in (204, 304):
            self._remaining = 0
        elif "content-length" in self.headers:
            self._remaining = int(self.headers["content-length"])
        if self._remaining == 0:
            self.ended = True

    @property
    def chunked(self) -> bool:
        return self.headers.get("transfer-encoding", "").lower() == "chunked"

    async def _read_piece(self) -> bytes | None:
        """The next piece of decoded body, or ``None`` at its end."""
        if self.ended:
            return None
        try:
            if self.chunked:
                line = await self.reader.readuntil(b"\r\n")
                size = int(line[:-2].split(b";")[0], 16)
                self.chunk_sizes.append(size)
                if size == 0:
                    while await self.reader.readuntil(b"\r\n") != b"\r\n":
                        pass  # trailers
                    self.ended = True
                    return None
                piece = await self.reader.readexactly(size)
                assert await self.reader.readexactly(2) == b"\r\n", "bad chunk framing"
                return piece
            if self._remaining is not None:
                piece = await self.reader.read(min(self._remaining, 65536))
                if not piece:
                    raise IncompleteBody(bytes(self.body))
                self._remaining -= len(piece)
                if self._remaining == 0:
                    self.ended = True
                return piece
            piece = await self.reader.read(65536)
            if not piece:
                self.ended = True  # a body delimited by the connection's end
                return None
            return piece
        except (asyncio.IncompleteReadError, ConnectionResetError) as exc:
            raise IncompleteBody(bytes(self.body)) from exc

    async def pump(self) -> bool:
        """Read one piece of body and parse it; false at the end of the body."""
        piece = await self._read_piece()
        if piece is None:
            return False
        self.body += piece
        self.frames.extend(self.parser.feed(piece))
        return True

    async def read_until(self, cond: Callable[[list[Frame]], bool]) -> list[Frame]:
        while not cond(self.frames):
            if not await self.pump():
                raise AssertionError(f"body ended before the condition: {self.frames!r}")
        return self.frames

    async def read_events(self, count: int) -> list[Frame]:
        """Read until ``count`` non-comment frames have arrived."""
        return await self.read_until(lambda fs: sum(1 for f in fs if not f.is_comment) >= count)

    async def read_to_end(self) -> bytes:
        while await self.pump():
            pass
        return bytes(self.body)

    async def at_eof(self) -> bool:
        """After the body: true when the server closed the connection."""
        try:
            return await self.reader.read(1) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.writer.close()

    async def aclose(self) -> None:
        self.writer.close()
        try:
            async with within(2):
                await self.writer.wait_closed()
        except (ConnectionError, TimeoutError):
            pass
