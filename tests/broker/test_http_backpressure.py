"""Slow subscribers over a real socket: a client that stops reading must not delay anyone,
is paused (bounded memory), catches up exactly or with gap + snapshot when it reads again,
and is disconnected when it stays stalled past ``stall_timeout``.

A stalled client is a raw socket with a tiny kernel receive buffer (``SO_RCVBUF``) and a
tiny StreamReader limit that simply stops reading; events are 8 KiB so that the server's
transport buffer passes a ``high_water`` of 4 KiB after a few of them.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any

import pytest

from broker.config import BrokerConfig
from broker.registry import Registry
from broker.stream import Stream, SubState

from .conftest import OpenRaw, Serve
from .helpers import (
    UNIT,
    IncompleteBody,
    RawHTTP,
    check_sequence,
    eventually,
    records_of,
    within,
)
from .sse_parse import Frame

PAD = 8 * 1024
STALLED = {"rcvbuf": 2048, "limit": 1024}


def snap(at: int) -> list[tuple[str, Any]]:
    return [("thread.run", {"at": at}), ("thread.message.delta", {"text": f"upto {at}"})]


def publish_n(stream: Stream, n: int, published: list[tuple[str, Any]]) -> None:
    for _ in range(n):
        payload = {"i": stream.head + 1, "pad": "p" * PAD}
        stream.publish("thread.message.delta", payload)
        published.append(("thread.message.delta", payload))


def last_id(frames: list[Frame]) -> int:
    ids = [int(f.id) for f in frames if f.id is not None]
    return ids[-1] if ids else 0


def paused(registry: Registry, key: str = "k") -> int:
    stream = registry.get(key)
    return 0 if stream is None else stream.stats().paused_subscribers


async def stall(registry: Registry, stream: Stream, published: list[tuple[str, Any]]) -> None:
    """Publish until a subscriber is paused (bounded)."""
    async with within(5):
        while paused(registry) == 0:
            publish_n(stream, 4, published)
            await asyncio.sleep(0)  # a loop turn: the flush writes, the transport fills


async def run_healthy_alongside_stalled(
    serve: Serve, open_raw: OpenRaw, *, max_events: int
) -> tuple[Registry, Stream, RawHTTP, RawHTTP, list[tuple[str, Any]]]:
    registry = Registry(
        BrokerConfig(
            high_water=4096,
            max_events_per_stream=max_events,
            max_bytes_per_stream=64 * 1024 * 1024,
            stall_timeout=60 * UNIT,
        )
    )
    server = await serve(registry)
    stream = registry.create("k", snapshot=snap)
    published: list[tuple[str, Any]] = []
    slow = await open_raw(server, "/s/k", **STALLED)
    healthy = await open_raw(server, "/s/k")
    assert slow.status == healthy.status == 200
    await stall(registry, stream, published)
    slow_sub, healthy_sub = stream.subscriptions()  # in the order the clients connected
    assert slow_sub.state is SubState.PAUSED
    # The healthy subscriber keeps receiving everything, batch after batch, promptly. (A
    # batch is smaller than the buffer: a reader that keeps up never falls out of it.)
    started = time.monotonic()
    async with within(10):
        for _ in range(50):
            publish_n(stream, 4, published)
            target = stream.head
            await healthy.read_until(lambda fs, target=target: last_id(fs) >= target)
            assert slow_sub.state is SubState.PAUSED
    elapsed = time.monotonic() - started
    assert elapsed < 5 * UNIT, f"healthy subscriber took {elapsed:.2f}s"
    assert healthy_sub.cursor == stream.head
    stats = stream.stats()
    assert stats.subscribers == 2 and stats.paused_subscribers >= 1
    assert stats.slowest_lag >= 200
    return registry, stream, slow, healthy, published


async def test_a_stalled_subscriber_delays_nobody_and_resumes_with_gap_and_snapshot(
    serve: Serve, open_raw: OpenRaw
) -> None:
    registry, stream, slow, healthy, published = await run_healthy_alongside_stalled(
        serve, open_raw, max_events=8
    )
    # Memory stays bounded: only the newest events are buffered.
    assert len(stream.buffer) <= 8
    # The stalled client reads again: it catches up with a gap and a snapshot, then live.
    async with within(10):
        await slow.read_until(lambda fs: last_id(fs) >= stream.head)
        await eventually(lambda: paused(registry) == 0, what="slow subscriber resumed")
        publish_n(stream, 3, published)
        stream.close()
        await slow.read_to_end()
        await healthy.read_to_end()
    healthy_result = check_sequence(records_of(healthy.body), published=published, start=0)
    assert healthy_result.gaps == [] and healthy_result.cursor == stream.head
    slow_result = check_sequence(records_of(slow.body), published=published, start=0, snapshot=snap)
    assert slow_result.gaps, "the stalled subscriber should have fallen out of the buffer"
    assert slow_result.cursor == stream.head
    assert registry.subscriber_count == 0


async def test_a_stalled_subscriber_within_the_buffer_resumes_exactly(
    serve: Serve, open_raw: OpenRaw
) -> None:
    _registry, stream, slow, healthy, published = await run_healthy_alongside_stalled(
        serve, open_raw, max_events=100_000
    )
    async with within(10):
        stream.close()
        await slow.read_to_end()
        await healthy.read_to_end()
    for client in (healthy, slow):
        result = check_sequence(records_of(client.body), published=published, start=0)
        assert result.gaps == [] and result.cursor == stream.head
    assert bytes(slow.body) == bytes(healthy.body)


async def test_a_subscriber_stalled_past_stall_timeout_is_disconnected(
    serve: Serve, open_raw: OpenRaw
) -> None:
    registry = Registry(
        BrokerConfig(high_water=4096, stall_timeout=0.3 * UNIT, keepalive=0.05 * UNIT)
    )
    server = await serve(registry)
    stream = registry.create("k")
    published: list[tuple[str, Any]] = []
    slow = await open_raw(server, "/s/k", **STALLED)
    healthy = await open_raw(server, "/s/k")
    await stall(registry, stream, published)
    await eventually(
        lambda: stream.subscriber_count == 1, units=3, what="stalled subscriber disconnected"
    )
    # The healthy one (kept busy by keepalives) stays connected and gets everything.
    async with within(5):
        await healthy.read_until(lambda fs: last_id(fs) >= stream.head)
        assert stream.subscriber_count == 1
        publish_n(stream, 2, published)
        stream.close()
        await healthy.read_to_end()
        # The stalled client finds its body cut short: no terminating chunk.
        with pytest.raises(IncompleteBody) as info:
            await slow.read_to_end()
    got = check_sequence(
        records_of(info.value.received, complete=False), published=published, start=0
    )
    assert got.cursor < stream.head
    assert (
        check_sequence(records_of(healthy.body), published=published, start=0).cursor == stream.head
    )
    assert registry.subscriber_count == 0
    assert registry.counters.stalled_disconnects == 1  # the stalled one, not the healthy one


async def test_a_stalled_client_leaving_releases_its_subscription(
    serve: Serve, open_raw: OpenRaw
) -> None:
    registry = Registry(BrokerConfig(high_water=4096, stall_timeout=60 * UNIT))
    server = await serve(registry)
    stream = registry.create("k")
    published: list[tuple[str, Any]] = []
    slow = await open_raw(server, "/s/k", **STALLED)
    await stall(registry, stream, published)
    await slow.aclose()
    await eventually(lambda: registry.subscriber_count == 0, what="paused subscriber released")
    assert registry.counters.stalled_disconnects == 0  # it left: nobody dropped it


@pytest.mark.skipif(sys.platform != "linux", reason="relies on TCP_USER_TIMEOUT")
async def test_a_finished_subscriber_that_stops_reading_does_not_hold_its_connection(
    serve: Serve, open_raw: OpenRaw
) -> None:
    """A paused subscriber drains a little, is resumed, gets the rest of a closed stream
    in one write (it is DONE) and stops reading again with megabytes in the transport's
    buffer. ``serve_stream`` awaits ``write_eof()`` (which drains) without a timeout of
    its own; what bounds it is the ``TCP_USER_TIMEOUT`` (= ``stall_timeout``) that
    aiohttp-sse sets on the socket, so this holds on Linux only."""
    registry = Registry(
        BrokerConfig(
            high_water=4096,
            stall_timeout=0.2 * UNIT,
            max_events_per_stream=100_000,
            max_bytes_per_stream=64 * 1024 * 1024,
        )
    )
    server = await serve(registry)
    stream = registry.create("k")
    published: list[tuple[str, Any]] = []
    slow = await open_raw(server, "/s/k", **STALLED)
    (sub,) = stream.subscriptions()
    await stall(registry, stream, published)
    for _ in range(80):
        payload = {"i": stream.head + 1, "pad": "q" * 65536}
        stream.publish("thread.message.delta", payload)
        published.append(("thread.message.delta", payload))
    stream.close()
    async with within(5):
        while sub.state is SubState.PAUSED:  # read just enough for the handler to resume
            assert await slow.reader.read(4096)
    assert sub.state is SubState.DONE
    assert server.runner.server is not None
    (conn,) = server.runner.server.connections
    assert conn.transport is not None
    assert conn.transport.get_write_buffer_size() > 1024 * 1024
    await eventually(lambda: server.connections == 0, units=5, what="stalled connection dropped")
