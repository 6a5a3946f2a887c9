"""The load generator: many SSE subscribers in one bare asyncio process.

``python -m benchmarks.load [--cpu 1]``, driven by the harness with JSON lines on stdin
(one JSON reply per command on stdout).

Each connection is a raw asyncio protocol (a :class:`asyncio.BufferedProtocol` reading into
one shared buffer; no HTTP library). Two ways of reading:

* ``count`` — counts frames as occurrences of ``b"\\nid: "`` (an id line always follows a
  newline: the previous frame's blank line or an HTTP chunk-size line; the pattern cannot
  occur inside single-line JSON), minding occurrences split across reads; one frame per
  ``sample_reads`` reads is parsed for its publish timestamp. Cheap enough for millions
  of frames per second.
* ``parse`` — every complete frame is matched (one C-level regex over each read) for its
  id and publish timestamp: ids are checked contiguous per subscriber (loss and
  duplicates counted), latencies sampled on ids divisible by ``sample_every``, and the
  first and last receipt of each event across subscribers recorded (``spread``).

A subscriber is logical: it keeps its cursor across reconnections (``chaos``), so a
resumed subscription is checked against the exact published sequence.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from .common import percentile, pin, raise_nofile

ID_PAT = b"\nid: "
# A complete frame: id line, data line whose payload starts with the publish time, blank line
# (looked ahead at, not consumed: its newline starts the next frame's "\nid: ").
# Tolerates the naive server's "\r\n" separators and json.dumps' spaces.
FRAME_RE = re.compile(
    rb'\nid: (\d+)\r?\ndata: \{"event": ?"[^"]*", ?"data": ?\{"ts": ?(\d+),[^\n]*\n(?=\r?\n)'
)
time_ns = time.time_ns


class Agent:
    """Process-wide state of the load generator."""

    def __init__(self) -> None:
        self.mode = "count"
        self.sample_every = 1
        self.sample_reads = 16
        self.spread = False
        self.measuring = False
        self.reads = 0
        self.total = 0  # frames counted (count mode) or matched (parse mode)
        self.lat: list[int] = []
        self.first: dict[str, dict[int, int]] = {}
        self.last: dict[str, dict[int, int]] = {}
        self.subs: list[Sub] = []
        self.errors: list[str] = []
        self.stall_rcvbuf = 0
        self.chaos_tasks: list[asyncio.Task[None]] = []
        self.chaos_on = False
        self.t_first: float | None = None
        self.t_last = 0.0
        """Monotonic times of the first and last frames counted since ``mark``."""


AGENT = Agent()


class Sub:
    """One logical subscriber; survives reconnections."""

    __slots__ = (
        "key",
        "stalled",
        "expect",
        "received",
        "missing",
        "dups",
        "conn",
        "done",
        "reconnects",
        "status",
        "port",
    )

    def __init__(self, key: str, stalled: bool, port: int) -> None:
        self.key = key
        self.port = port  # the server it connects (and reconnects) to
        self.stalled = stalled
        self.expect = 1  # next id expected
        self.received = 0
        self.missing = 0
        self.dups = 0
        self.conn: Conn | None = None
        self.done = False  # got 204 or the server ended the stream
        self.reconnects = 0
        self.status = 0


_RECV_BUF = memoryview(bytearray(256 * 1024))


class Conn(asyncio.BufferedProtocol):
    __slots__ = ("sub", "transport", "ready", "head", "tail", "rest", "lost", "_cursor")

    def __init__(self, sub: Sub, cursor: int | None) -> None:
        self.sub = sub
        self.ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.head = b""
        self.tail = b""
        self.rest = b""
        self.lost = False
        self._cursor = cursor

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        extra = b"" if self._cursor is None else b"Last-Event-ID: %d\r\n" % self._cursor
        key = self.sub.key
        path = key if key.startswith("/") else "/streams/" + key  # a full path: a hub's run
        transport.write(
            b"GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n"
            b"Cache-Control: no-cache\r\nConnection: close\r\n%s\r\n" % (path.encode(), extra)
        )

    def _headers(self, data: bytes) -> bytes | None:
        self.head += data
        end = self.head.find(b"\r\n\r\n")
        if end < 0:
            return None
        status = int(self.head[9:12]) if self.head.startswith(b"HTTP/1.") else -1
        self.sub.status = status
        # keep the header's final "\r\n" so the first id line follows a newline
        body = self.head[end + 2 :]
        self.head = b""
        if not self.ready.done():
            self.ready.set_result(status)
        if status == 204:
            self.sub.done = True
        elif status != 200:
            AGENT.errors.append(f"status {status}")
        if self.sub.stalled:
            self.transport.pause_reading()
        return body

    # asyncio's plain Protocol path calls sock.recv(256 KiB): a fresh 256 KiB allocation per
    # read (mmap + page faults), which dominated this process's time. Reading into one shared
    # buffer avoids it; each read is handled before the next one starts.
    def get_buffer(self, sizehint: int) -> memoryview:
        return _RECV_BUF

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(bytes(_RECV_BUF[:nbytes]))

    def data_received(self, data: bytes) -> None:
        if not self.ready.done():
            body = self._headers(data)
            if body is None:
                return
            data = body
        agent = AGENT
        if agent.mode == "count":
            n = data.count(ID_PAT)
            tail = self.tail
            if tail:
                n += (tail + data[:4]).count(ID_PAT)
            self.tail = data[-4:] if len(data) >= 4 else (tail + data)[-4:]
            agent.total += n
            self.sub.received += n
            agent.reads += 1
            if agent.measuring and n:
                agent.t_last = time.monotonic()
                if agent.t_first is None:
                    agent.t_first = agent.t_last
            if agent.measuring and agent.reads % agent.sample_reads == 0:
                m = FRAME_RE.search(data)
                if m is not None:
                    agent.lat.append(time_ns() - int(m[2]))
            return
        # parse mode
        now = time_ns()
        buf = self.rest + data if self.rest else data
        sub = self.sub
        expect = sub.expect
        pos = 0
        got = 0
        measuring = agent.measuring
        every = agent.sample_every
        lat = agent.lat
        first = last = None
        if agent.spread and measuring:
            first = agent.first.setdefault(sub.key, {})
            last = agent.last.setdefault(sub.key, {})
        for m in FRAME_RE.finditer(buf):
            pos = m.end()
            eid = int(m[1])
            if eid != expect:
                if eid < expect:
                    sub.dups += 1
                    continue
                sub.missing += eid - expect
            expect = eid + 1
            got += 1
            if measuring and eid % every == 0:
                lat.append(now - int(m[2]))
            if first is not None:
                if eid not in first:
                    first[eid] = now
                last[eid] = now  # type: ignore[index]
        sub.expect = expect
        sub.received += got
        agent.total += got
        rest = buf[pos:]
        i = rest.rfind(ID_PAT)
        self.rest = rest[i:] if i >= 0 else rest[-4:]

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if not self.ready.done():
            self.ready.set_result(-1)
        sub = self.sub
        if sub.conn is self:
            sub.conn = None
            if not AGENT.chaos_on or sub.status != 200:
                sub.done = True


async def open_sub(sub: Sub, cursor: int | None = None) -> int:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    if sub.stalled and AGENT.stall_rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, AGENT.stall_rcvbuf)
    try:
        await loop.sock_connect(sock, ("127.0.0.1", sub.port))
        _, conn = await loop.create_connection(lambda: Conn(sub, cursor), sock=sock)
    except OSError as exc:
        sock.close()
        AGENT.errors.append(f"connect: {exc}")
        return -1
    sub.conn = conn
    try:
        return await asyncio.wait_for(asyncio.shield(conn.ready), 30)
    except TimeoutError:
        AGENT.errors.append("no response headers within 30 s")
        return -1


# --------------------------------------------------------------------------------------
# commands


async def cmd_connect(
    port: int,
    plan: list[list[Any]],
    mode: str = "count",
    sample_every: int = 1,
    sample_reads: int = 16,
    spread: bool = False,
    stall_every: int = 0,
    stall_rcvbuf: int = 0,
    batch: int = 250,
) -> dict[str, Any]:
    """Open ``count`` subscribers for each ``[key, count]`` of ``plan``.

    With ``stall_every=k`` every k-th subscriber of the plan (offset k//2) stops reading once
    its response headers arrive.
    """
    a = AGENT
    a.mode, a.sample_every, a.sample_reads, a.spread = (
        mode,
        sample_every,
        sample_reads,
        spread,
    )
    a.stall_rcvbuf = stall_rcvbuf
    new: list[Sub] = []
    for key, count in plan:
        for _ in range(count):
            i = len(new)
            stalled = bool(stall_every) and i % stall_every == stall_every // 2
            new.append(Sub(key, stalled, port))
    t0 = time.monotonic()
    bad = 0
    for i in range(0, len(new), batch):
        results = await asyncio.gather(*(open_sub(s) for s in new[i : i + batch]))
        bad += sum(1 for r in results if r != 200)
    a.subs.extend(new)
    return {
        "connected": len(new) - bad,
        "failed": bad,
        "secs": time.monotonic() - t0,
        "stalled": sum(1 for s in new if s.stalled),
        "errors": a.errors[:5],
    }


async def cmd_mark() -> dict[str, Any]:
    a = AGENT
    a.measuring = True
    a.lat = []
    a.first.clear()
    a.last.clear()
    a._mark = (time.monotonic(), a.total)  # type: ignore[attr-defined]
    a.t_first = None
    return {"ok": True}


async def cmd_drain(timeout: float = 60.0) -> dict[str, Any]:
    """Wait until every subscriber's stream has ended (or ``timeout``); the frames counted
    since ``mark`` and the seconds between the first and the last of them."""
    a = AGENT
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while any(not s.done for s in a.subs) and loop.time() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    a.measuring = False
    _t0, n0 = a._mark  # type: ignore[attr-defined]
    secs = a.t_last - a.t_first if a.t_first is not None else 0.0
    return {
        "frames": a.total - n0,
        "secs": secs,
        "ended": sum(1 for s in a.subs if s.done),
        "subscribers": len(a.subs),
        "errors": a.errors[:5],
    }


async def cmd_snap() -> dict[str, Any]:
    a = AGENT
    t0, n0 = a._mark  # type: ignore[attr-defined]
    dt = time.monotonic() - t0
    return {"frames": a.total - n0, "secs": dt, "rate": (a.total - n0) / dt}


async def _chaos_one(sub: Sub, times: list[float], delay: tuple[float, float]) -> None:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    for t in times:
        await asyncio.sleep(max(0.0, t0 + t - loop.time()))
        conn = sub.conn
        if conn is None or sub.done:
            continue
        conn.transport.abort()
        sub.conn = None
        await asyncio.sleep(random.uniform(*delay))
        sub.reconnects += 1
        cursor = sub.expect - 1
        await open_sub(sub, cursor if cursor > 0 else None)


async def cmd_chaos(
    disconnects: int, duration: float, delay: list[float], seed: int = 1
) -> dict[str, Any]:
    """Every subscriber drops its connection ``disconnects`` times at random moments within
    ``duration`` seconds and reconnects after ``delay`` seconds with ``Last-Event-ID``."""
    rnd = random.Random(seed)
    AGENT.chaos_on = True
    for sub in AGENT.subs:
        times = sorted(rnd.uniform(0.05, 0.95) * duration for _ in range(disconnects))
        AGENT.chaos_tasks.append(asyncio.create_task(_chaos_one(sub, times, (delay[0], delay[1]))))
    return {"ok": True}


def _summary_ms(values_ns: list[int]) -> dict[str, Any]:
    values = sorted(v / 1e6 for v in values_ns)
    return {
        "n": len(values),
        "p50": percentile(values, 0.50),
        "p99": percentile(values, 0.99),
        "max": values[-1] if values else None,
    }


async def cmd_finish(
    expected: dict[str, int], timeout: float = 20.0, dump: str | None = None
) -> dict[str, Any]:
    """Wait until every reading subscriber has id ``expected[key]`` (or ``timeout``), then report.

    ``dump`` names a file to receive the raw latency samples (ns, in order of receipt)."""
    a = AGENT
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    healthy = [s for s in a.subs if not s.stalled]

    def behind() -> list[Sub]:
        return [s for s in healthy if s.expect - 1 < expected.get(s.key, 0)]

    while behind() and loop.time() < deadline:  # noqa: ASYNC110 (polling is the point)
        await asyncio.sleep(0.05)
    a.measuring = False
    if dump:
        Path(dump).write_text("\n".join(map(str, a.lat)))  # noqa: ASYNC240 (debug aid)
    waited = timeout - (deadline - loop.time())
    for t in a.chaos_tasks:
        t.cancel()
    ok = 0
    missing = dups = 0
    for s in healthy:
        short = max(0, expected.get(s.key, 0) - (s.expect - 1))
        m = s.missing + short
        missing += m
        dups += s.dups
        ok += m == 0 and s.dups == 0
    spreads: list[int] = []
    for key, first in a.first.items():
        last = a.last[key]
        spreads.extend(last[i] - first[i] for i in first)
    return {
        "subscribers": len(healthy),
        "ok_subscribers": ok,
        "missing": missing,
        "dups": dups,
        "received": sum(s.received for s in healthy),
        "reconnects": sum(s.reconnects for s in a.subs),
        "latency_ms": _summary_ms(a.lat),
        "spread_ms": _summary_ms(spreads),
        "waited": waited,
        "errors": a.errors[:5],
        "n_errors": len(a.errors),
    }


async def cmd_close() -> dict[str, Any]:
    for s in AGENT.subs:
        if s.conn is not None:
            s.conn.transport.abort()
    return {"ok": True}


COMMANDS: dict[str, Callable[..., Awaitable[dict[str, Any]]]] = {
    "connect": cmd_connect,
    "mark": cmd_mark,
    "snap": cmd_snap,
    "chaos": cmd_chaos,
    "finish": cmd_finish,
    "drain": cmd_drain,
    "close": cmd_close,
}


async def amain() -> None:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        cmd = json.loads(line)
        op = cmd.pop("op")
        if op == "quit":
            break
        try:
            reply = await COMMANDS[op](**cmd)
        except Exception as exc:
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


def main() -> None:
    ap = argparse.ArgumentParser(description="SSE load generator (driven by benchmarks.fanout)")
    ap.add_argument("--cpu", type=int, default=1)
    args = ap.parse_args()
    raise_nofile()
    pin(args.cpu)
    asyncio.run(amain())


if __name__ == "__main__":
    main()
