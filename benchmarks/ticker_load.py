"""Subscribers of one run, for ``benchmarks.replies``: stamp -> receipt latencies.

``python -m benchmarks.ticker_load --port P --path /v1/threads/T/stream/R --subscribers N
--cpu 1``: opens N SSE subscriptions to the run (raw asyncio protocols reading into one
shared buffer, as :mod:`benchmarks.load` does: no HTTP library), prints one JSON line
``{"connected": n, "at": wall-clock}`` once all are connected, then reads until every
stream ends (or ``--timeout``) and prints one JSON line of results.

For every ``thread.message.completed`` whose text is a wall-clock stamp (the ticker
agents' replies), and every ``thread.agent.tick`` (``{"stamp": ...}``), the latency is the
receipt time minus the stamp; only stamps after all subscribers connected count. It also
counts, per completed message, whether its ``thread.message.created`` arrived in the same
read (``one_read``: the reply's events reached the subscriber in one write).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import socket
import sys
import time
from typing import Any

from .common import percentile, pin, raise_nofile

STAMPED = re.compile(
    rb'"event":"(thread\.message\.completed|thread\.agent\.tick)","data":\{[^\n]*?'
    rb'(?:"value":"|"stamp":)(\d{9,11}\.\d+)'
)
CREATED = b'"event":"thread.message.created"'
END = b"\n\n"
_RECV_BUF = memoryview(bytearray(256 * 1024))


class Stats:
    def __init__(self) -> None:
        self.since = float("inf")
        self.lat: list[float] = []
        self.one_read = 0
        self.replies = 0
        self.ended = 0
        self.errors: list[str] = []
        self.all_done: asyncio.Future[None] | None = None
        self.open = 0


STATS = Stats()


class Conn(asyncio.BufferedProtocol):
    """One subscriber: frames are matched on complete frames (a split one waits)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.ready: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.head = b""
        self.rest = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(
            b"GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n"
            b"Connection: close\r\n\r\n" % self.path.encode()
        )

    def get_buffer(self, sizehint: int) -> memoryview:
        return _RECV_BUF

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(bytes(_RECV_BUF[:nbytes]))

    def data_received(self, data: bytes) -> None:
        now = time.time()
        if not self.ready.done():
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            status = int(self.head[9:12]) if self.head.startswith(b"HTTP/1.") else -1
            data, self.head = self.head[end + 4 :], b""
            self.ready.set_result(status)
            if status != 200:
                STATS.errors.append(f"status {status}")
        buf = self.rest + data if self.rest else data
        cut = buf.rfind(END)
        if cut < 0:
            self.rest = buf
            return
        self.rest = buf[cut + 2 :]
        frames = buf[: cut + 2]
        stats = STATS
        since = stats.since
        has_created = CREATED in frames
        for m in STAMPED.finditer(frames):
            stamp = float(m[2])
            if stamp < since:
                continue
            stats.lat.append(now - stamp)
            if m[1] == b"thread.message.completed":
                stats.replies += 1
                stats.one_read += has_created

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_result(-1)
        STATS.ended += 1
        STATS.open -= 1
        if STATS.open == 0 and STATS.all_done is not None and not STATS.all_done.done():
            STATS.all_done.set_result(None)


async def open_one(port: int, path: str) -> int:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        await loop.sock_connect(sock, ("127.0.0.1", port))
        _, conn = await loop.create_connection(lambda: Conn(path), sock=sock)
    except OSError as exc:
        sock.close()
        STATS.errors.append(f"connect: {exc}")
        return -1
    STATS.open += 1
    return await asyncio.wait_for(asyncio.shield(conn.ready), 30)


def _ms(values: list[float]) -> dict[str, Any]:
    ordered = sorted(v * 1000 for v in values)
    return {
        "n": len(ordered),
        "p50": percentile(ordered, 0.5),
        "p90": percentile(ordered, 0.9),
        "p99": percentile(ordered, 0.99),
        "max": ordered[-1] if ordered else None,
    }


async def amain(args: argparse.Namespace) -> dict[str, Any]:
    STATS.all_done = asyncio.get_running_loop().create_future()
    ok = 0
    for i in range(0, args.subscribers, 250):
        batch = min(250, args.subscribers - i)
        got = await asyncio.gather(*(open_one(args.port, args.path) for _ in range(batch)))
        ok += sum(1 for status in got if status == 200)
    STATS.since = time.time()
    print(json.dumps({"connected": ok, "at": STATS.since}), flush=True)
    try:
        await asyncio.wait_for(STATS.all_done, args.timeout)
    except TimeoutError:
        STATS.errors.append(f"{STATS.open} streams still open after {args.timeout}s")
    return {
        "connected": ok,
        "latency_ms": _ms(STATS.lat),
        "replies_received": STATS.replies,
        "one_read": STATS.one_read,
        "errors": STATS.errors[:5],
        "n_errors": len(STATS.errors),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description="subscribers of one ticker run")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--path", required=True)
    ap.add_argument("--subscribers", type=int, default=1000)
    ap.add_argument("--timeout", type=float, default=120.0)
    ap.add_argument("--cpu", type=int, default=1)
    args = ap.parse_args()
    raise_nofile()
    pin(args.cpu)
    result = asyncio.run(amain(args))
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
