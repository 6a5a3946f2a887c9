"""The servers under test, each with the same control channel.

``python -m benchmarks.servers broker|naive|raw|redis --port P --ctl-port C [--cpu 0]``

* ``broker`` — ``broker.make_stream_handler(registry)`` on aiohttp (``handler_cancellation=True``).
* ``naive``  — the way aiohttp-sse's examples do it: ``sse_response``, an ``asyncio.Queue`` per
  subscriber drained by the subscriber's own handler task, ``json.dumps`` and
  ``await resp.send()`` per event per subscriber. (A history list makes ``Last-Event-ID``
  resume possible; the replay and the queue registration happen without an await between.)
* ``raw``    — no aiohttp: an ``asyncio.Protocol`` server that writes the same pre-encoded SSE
  bytes to every connection, one write per connection per loop turn (the broker's
  coalescing), with a cursor per connection so a paused connection catches up. The limit
  of what Python's transports can do.
* ``redis``  — the broker on Redis Streams (``broker.RedisRegistry``), same handler:
  ``--redis-url URL --redis-prefix P``; with ``--mirror`` the node publishes nothing and
  serves its subscribers from its mirrors of the streams another node publishes (one
  blocking ``XREAD`` at a time for all of them), as a second node behind a load balancer would.

All three serve ``GET /streams/{key}`` and are driven identically through the control port
(JSON lines): ``setup``, ``saturate``, ``paced``, ``stats``, ``quit``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import socket
import tracemalloc
from collections.abc import Callable
from typing import Any

import orjson

from .common import EVENT_NAME, make_payload, pin, raise_nofile, rss_kib

Publish = Callable[[dict[str, Any]], None]

HIGH_WATER = 256 * 1024  # the broker's default BrokerConfig.high_water, used by raw too


def _cap_sndbuf(transport: Any, sndbuf: int | None) -> None:
    if not sndbuf or transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)


# --------------------------------------------------------------------------------------
# broker


class BrokerBackend:
    def __init__(self) -> None:
        from broker import BrokerConfig, Registry

        self.registry = Registry(BrokerConfig())
        self.streams: dict[str, Any] = {}
        self.sndbuf: int | None = None
        self.runner: Any = None

    async def start(self, port: int) -> None:
        from aiohttp import web

        from broker import make_stream_handler

        async def cap_sndbuf(request: web.Request, response: web.StreamResponse) -> None:
            _cap_sndbuf(request.transport, self.sndbuf)

        app = web.Application()
        # The broker's own handler, unwrapped (a wrapper coroutine would add its frame to
        # every subscriber's footprint); the slow workload's send-buffer cap is applied from
        # the prepare signal instead.
        app.router.add_get("/streams/{key}", make_stream_handler(self.registry))  # type: ignore[arg-type]
        app.on_response_prepare.append(cap_sndbuf)
        self.runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", port, backlog=4096).start()

    def setup(self, keys: list[str]) -> None:
        for key in keys:
            self.streams[key] = self.registry.create(key)

    def publisher(self, key: str) -> Publish:
        publish = self.streams[key].publish

        def pub(payload: dict[str, Any]) -> None:
            publish(EVENT_NAME, payload)

        return pub

    def close(self, key: str) -> None:
        self.streams[key].close()

    def stats(self) -> dict[str, Any]:
        st = self.registry.stats()
        # bytes waiting in the subscribers' transports (a private attribute of the broker's
        # sink; read here only to compare with the other servers)
        transports = [
            getattr(sub.sink, "_transport", None)
            for s in self.registry
            for sub in s.subscriptions()
        ]
        return {
            "subscribers": st.subscribers,
            "paused": sum(s.paused_subscribers for s in st.per_stream),
            "slowest_lag": max((s.slowest_lag for s in st.per_stream), default=0),
            "replay_buffer_bytes": st.buffered_bytes,
            "transport_bytes": sum(t.get_write_buffer_size() for t in transports if t),
        }


class RedisBrokerBackend(BrokerBackend):
    """The broker on Redis Streams: a publishing node, or (``mirror``) a node that only
    serves subscribers from its mirrors of streams published elsewhere."""

    def __init__(self, url: str, prefix: str, mirror: bool) -> None:
        from broker import BrokerConfig
        from broker.redis_streams import RedisRegistry, RedisSettings

        super().__init__()
        self.registry = RedisRegistry(BrokerConfig(), RedisSettings(url, prefix))
        self.mirror = mirror

    async def start(self, port: int) -> None:
        await self.registry.start()
        await super().start(port)

    async def setup(self, keys: list[str]) -> None:  # type: ignore[override]
        if not self.mirror:
            super().setup(keys)
            # created in Redis too before anyone subscribes on another node
            await self.registry.flushed()


# --------------------------------------------------------------------------------------
# naive (aiohttp-sse example style)


class _Channel:
    __slots__ = ("subs", "history", "closed")

    def __init__(self) -> None:
        self.subs: dict[asyncio.Queue[Any], Any] = {}  # queue -> its connection's transport
        self.history: list[tuple[int, str, dict[str, Any]]] = []
        self.closed = False


class NaiveBackend:
    def __init__(self) -> None:
        self.channels: dict[str, _Channel] = {}
        self.sndbuf: int | None = None
        self.runner: Any = None

    async def start(self, port: int) -> None:
        from aiohttp import web
        from aiohttp_sse import sse_response

        channels = self.channels

        async def handler(request: web.Request) -> web.StreamResponse:
            ch = channels.get(request.match_info["key"])
            if ch is None:
                raise web.HTTPNotFound()
            last = request.headers.get("Last-Event-ID")
            start = int(last) if last else 0
            _cap_sndbuf(request.transport, self.sndbuf)
            async with sse_response(request) as resp:
                queue: asyncio.Queue[Any] = asyncio.Queue()
                for ev in ch.history[start:]:
                    queue.put_nowait(ev)
                if ch.closed:
                    queue.put_nowait(None)
                else:
                    ch.subs[queue] = request.transport
                try:
                    while True:
                        ev = await queue.get()
                        if ev is None:
                            break
                        event_id, name, payload = ev
                        await resp.send(
                            json.dumps({"event": name, "data": payload}), id=str(event_id)
                        )
                finally:
                    ch.subs.pop(queue, None)
            return resp

        app = web.Application()
        app.router.add_get("/streams/{key}", handler)
        self.runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", port, backlog=4096).start()

    def setup(self, keys: list[str]) -> None:
        for key in keys:
            self.channels[key] = _Channel()

    def publisher(self, key: str) -> Publish:
        ch = self.channels[key]
        history = ch.history

        def pub(payload: dict[str, Any]) -> None:
            ev = (len(history) + 1, EVENT_NAME, payload)
            history.append(ev)
            for queue in ch.subs:
                queue.put_nowait(ev)

        return pub

    def close(self, key: str) -> None:
        ch = self.channels[key]
        ch.closed = True
        for queue in ch.subs:
            queue.put_nowait(None)

    def stats(self) -> dict[str, Any]:
        sizes = [q.qsize() for ch in self.channels.values() for q in ch.subs]
        transports = [t for ch in self.channels.values() for t in ch.subs.values()]
        return {
            "subscribers": len(sizes),
            "queued_events": sum(sizes),
            "max_queue": max(sizes, default=0),
            "transport_bytes": sum(t.get_write_buffer_size() for t in transports if t),
        }


# --------------------------------------------------------------------------------------
# raw asyncio.Protocol limit

_RAW_HEADERS = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
    b"X-Accel-Buffering: no\r\nConnection: close\r\n\r\n"
)


class _RawStream:
    __slots__ = ("subs", "history", "handle", "closed", "loop")

    def __init__(self) -> None:
        self.subs: dict[_RawConn, None] = {}
        self.history: list[bytes] = []
        self.handle: asyncio.Handle | None = None
        self.closed = False
        self.loop = asyncio.get_running_loop()

    def publish(self, payload: dict[str, Any]) -> None:
        history = self.history
        history.append(
            b'id: %d\ndata: {"event":"%s","data":%s}\n\n'
            % (len(history) + 1, EVENT_NAME.encode(), orjson.dumps(payload))
        )
        if self.handle is None:
            self.handle = self.loop.call_soon(self.flush)

    def flush(self) -> None:
        self.handle = None
        history = self.history
        head = len(history)
        shared: dict[int, bytes] = {}
        for conn in self.subs:
            if conn.paused or conn.cursor >= head:
                continue
            data = shared.get(conn.cursor)
            if data is None:
                data = shared[conn.cursor] = b"".join(history[conn.cursor :])
            conn.transport.write(data)
            conn.cursor = head
        if self.closed:
            for conn in list(self.subs):
                if not conn.paused:
                    conn.transport.close()


class _RawConn(asyncio.Protocol):
    __slots__ = ("backend", "transport", "stream", "cursor", "paused", "_req")

    def __init__(self, backend: RawBackend) -> None:
        self.backend = backend
        self.stream: _RawStream | None = None
        self.cursor = 0
        self.paused = False
        self._req = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.set_write_buffer_limits(high=HIGH_WATER)
        _cap_sndbuf(transport, self.backend.sndbuf)

    def data_received(self, data: bytes) -> None:
        if self.stream is not None:
            return
        self._req += data
        end = self._req.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self._req[:end].decode("latin-1").split("\r\n")
        parts = head[0].split()
        key = parts[1].rsplit("/", 1)[-1] if len(parts) > 1 else ""
        cursor = 0
        for line in head[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "last-event-id" and value.strip():
                cursor = int(value.strip())
        stream = self.backend.streams.get(key)
        if stream is None:
            self.transport.write(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            self.transport.close()
            return
        self.stream = stream
        self.cursor = len(stream.history)
        backlog = b"".join(stream.history[cursor:])
        self.transport.write(_RAW_HEADERS + backlog)
        if stream.closed:
            self.transport.close()
        else:
            stream.subs[self] = None

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        stream = self.stream
        if stream is not None and self.cursor < len(stream.history):
            self.transport.write(b"".join(stream.history[self.cursor :]))
            self.cursor = len(stream.history)
            if stream.closed:
                self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.stream is not None:
            self.stream.subs.pop(self, None)


class RawBackend:
    def __init__(self) -> None:
        self.streams: dict[str, _RawStream] = {}
        self.sndbuf: int | None = None

    async def start(self, port: int) -> None:
        loop = asyncio.get_running_loop()
        await loop.create_server(lambda: _RawConn(self), "127.0.0.1", port, backlog=4096)

    def setup(self, keys: list[str]) -> None:
        for key in keys:
            self.streams[key] = _RawStream()

    def publisher(self, key: str) -> Publish:
        return self.streams[key].publish

    def close(self, key: str) -> None:
        stream = self.streams[key]
        stream.closed = True
        if stream.handle is None:
            stream.handle = stream.loop.call_soon(stream.flush)

    def stats(self) -> dict[str, Any]:
        conns = [c for s in self.streams.values() for c in s.subs]
        return {
            "subscribers": len(conns),
            "paused": sum(1 for c in conns if c.paused),
            "transport_bytes": sum(c.transport.get_write_buffer_size() for c in conns),
        }


BACKENDS: dict[str, Callable[..., BrokerBackend | NaiveBackend | RawBackend]] = {
    "broker": BrokerBackend,
    "naive": NaiveBackend,
    "raw": RawBackend,
    "redis": RedisBrokerBackend,
}


# --------------------------------------------------------------------------------------
# publishers, driven the same way for every backend


async def saturate(
    backend: Any, key: str, duration: float, batch: int, size: int
) -> dict[str, Any]:
    """Publish ``batch`` events, yield one loop turn (``sleep(0)``: the flush runs), repeat."""
    pub = backend.publisher(key)
    loop = asyncio.get_running_loop()
    n = 0
    t0 = loop.time()
    end = t0 + duration
    while loop.time() < end:
        for _ in range(batch):
            pub(make_payload(n, size))
            n += 1
        await asyncio.sleep(0)
    return {"published": n, "secs": loop.time() - t0}


async def _paced_one(
    pub: Publish, rate: float, t0: float, end: float, size: int, phase: float
) -> tuple[int, float]:
    """One stream at ``rate`` events/s on an absolute schedule.

    An event whose time has passed is published at once (a late publisher catches up, so
    the count is always ``rate * duration``). Returns the count and the worst lateness.
    """
    loop = asyncio.get_running_loop()
    interval = 1.0 / rate
    start = t0 + phase * interval  # spread the streams' phases
    k = 0
    late = 0.0
    while start + k * interval < end:
        due = start + k * interval
        now = loop.time()
        if due > now:
            await asyncio.sleep(due - now)
            now = loop.time()
        late = max(late, now - due)
        while start + k * interval <= now and start + k * interval < end:
            pub(make_payload(k, size))
            k += 1
    return k, late


async def paced(
    backend: Any, keys: list[str], rate: float, duration: float, size: int, close: bool
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    results = await asyncio.gather(
        *(
            _paced_one(backend.publisher(k), rate, t0, t0 + duration, size, i / len(keys))
            for i, k in enumerate(keys)
        )
    )
    if close:
        for k in keys:
            backend.close(k)
    return {
        "published": {k: n for k, (n, _) in zip(keys, results, strict=True)},
        "late_ms": max(late for _, late in results) * 1000,
        "secs": loop.time() - t0,
    }


# --------------------------------------------------------------------------------------
# control channel


def _objects_by_type() -> dict[str, tuple[int, int]]:
    """Live GC-tracked objects by type: how many, and their shallow size (``sys.getsizeof``)."""
    import sys

    out: dict[str, list[int]] = {}
    for obj in gc.get_objects():
        t = type(obj)
        entry = out.setdefault(f"{t.__module__}.{t.__qualname__}", [0, 0])
        entry[0] += 1
        entry[1] += sys.getsizeof(obj)
    return {k: (v[0], v[1]) for k, v in out.items()}


async def control(backend: Any, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while line := await reader.readline():
        cmd = json.loads(line)
        op = cmd.pop("op")
        try:
            if op == "setup":
                backend.sndbuf = cmd.get("sndbuf")
                made = backend.setup(cmd["keys"])
                if asyncio.iscoroutine(made):
                    await made
                reply: Any = {"ok": True, "rss_kib": rss_kib()}
            elif op == "saturate":
                reply = await saturate(backend, **cmd)
            elif op == "paced":
                reply = await paced(backend, **cmd)
            elif op == "stats":
                if cmd.get("gc"):
                    gc.collect()
                reply = {"rss_kib": rss_kib(), **backend.stats()}
            elif op == "tm_mark":  # with BENCH_TRACEMALLOC=1: remember allocations now
                backend.tm_snapshot = tracemalloc.take_snapshot()
                reply = {"ok": True}
            elif op == "tm_diff":  # ... and report the top growth since tm_mark
                gc.collect()
                diff = tracemalloc.take_snapshot().compare_to(backend.tm_snapshot, "lineno")
                reply = {
                    "top": [
                        {
                            "where": str(d.traceback[0]),
                            "kib": d.size_diff / 1024,
                            "count": d.count_diff,
                        }
                        for d in diff[: cmd.get("n", 25)]
                    ]
                }
            elif op == "types_mark":  # count live GC-tracked objects by type now
                gc.collect()
                backend.types_snapshot = _objects_by_type()
                reply = {"ok": True}
            elif op == "types_diff":  # ... and report the types that grew since types_mark
                gc.collect()
                now, then = _objects_by_type(), backend.types_snapshot
                grew = []
                for t, (n, b) in now.items():
                    n0, b0 = then.get(t, (0, 0))
                    grew.append({"type": t, "count": n - n0, "kib": (b - b0) / 1024})
                grew.sort(key=lambda g: -g["kib"])
                reply = {"top": grew[: cmd.get("n", 25)]}
            elif op == "quit":
                writer.write(b'{"ok": true}\n')
                await writer.drain()
                raise SystemExit(0)
            else:
                reply = {"error": f"unknown op {op!r}"}
        except (SystemExit, KeyboardInterrupt):
            raise
        except Exception as exc:  # report to the harness rather than die silently
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        writer.write(json.dumps(reply).encode() + b"\n")
        await writer.drain()


async def amain(kind: str, port: int, ctl_port: int, options: dict[str, Any]) -> None:
    backend = BACKENDS[kind](**options)
    await backend.start(port)
    done = asyncio.get_running_loop().create_future()

    async def on_ctl(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            await control(backend, r, w)
        except SystemExit:
            if not done.done():
                done.set_result(None)

    server = await asyncio.start_server(on_ctl, "127.0.0.1", ctl_port)
    async with server:
        await done


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("kind", choices=sorted(BACKENDS))
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--ctl-port", type=int, required=True)
    ap.add_argument("--cpu", type=int, default=0)
    ap.add_argument("--redis-url", help="redis: the Redis URL")
    ap.add_argument("--redis-prefix", default="bench:", help="redis: the key prefix")
    ap.add_argument("--mirror", action="store_true", help="redis: publish nothing, only serve")
    args = ap.parse_args()
    options: dict[str, Any] = {}
    if args.kind == "redis":
        if not args.redis_url:
            ap.error("redis needs --redis-url")
        options = {"url": args.redis_url, "prefix": args.redis_prefix, "mirror": args.mirror}
    raise_nofile()
    pin(args.cpu)
    if os.environ.get("BENCH_TRACEMALLOC"):
        tracemalloc.start(int(os.environ["BENCH_TRACEMALLOC"]))
    try:
        asyncio.run(amain(args.kind, args.port, args.ctl_port, options))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
