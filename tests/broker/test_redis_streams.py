"""The broker on Redis Streams (a real ``redis-server``): two registries on one Redis
stand for two nodes; one publishes, the other mirrors and serves."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from broker import BackendUnavailable, Event, InvalidCursor, StreamExists, StreamMoved
from broker.config import BrokerConfig
from broker.redis_io import Link, pack
from broker.redis_streams import RedisRegistry, RedisSettings

from .helpers import GAP, UNIT, CollectingSink, records_of, within

MakeNode = Callable[..., Awaitable[RedisRegistry]]


class Counting:
    """A projection: the number of events and the last text seen (its snapshot says so)."""

    def __init__(self) -> None:
        self.seen: list[tuple[int, str, Any]] = []

    def record(self, event_id: int, name: str, payload: Any) -> None:
        if name == "state":  # its own snapshot, read back from a checkpoint
            name, payload = "tick", payload["last"]
        self.seen.append((event_id, name, payload))

    def snapshot(self, at: int) -> list[tuple[str, Any]]:
        upto = [p for i, _n, p in self.seen if i <= at]
        return [("state", {"last": upto[-1] if upto else None})]

    def resume_snapshot(self, at: int) -> list[tuple[str, Any]]:
        return self.snapshot(at)


@pytest.fixture
async def node(redis_url: str, redis_prefix: str) -> AsyncIterator[MakeNode]:
    made: list[RedisRegistry] = []

    async def make(config: BrokerConfig | None = None, **settings: Any) -> RedisRegistry:
        settings.setdefault("block", 0.2 * UNIT)
        registry = RedisRegistry(
            config,
            RedisSettings(redis_url, prefix=redis_prefix, **settings),
            projection=lambda _key: Counting(),
        )
        await registry.start()
        made.append(registry)
        return registry

    yield make
    for registry in made:
        await registry.aclose()


def publish(stream: Any, n: int) -> list[tuple[str, Any]]:
    out = []
    for _ in range(n):
        payload = {"i": stream.head + 1}
        stream.publish("tick", payload)
        out.append(("tick", payload))
    return out


async def blocked_in_redis(client: aioredis.Redis) -> None:
    """Until Redis holds an ``XREAD`` blocked (the state of another process: polled)."""
    async with within():
        for _attempt in range(100_000):
            clients = await client.client_list()
            if any(c["cmd"] == "xread" and "b" in c["flags"] for c in clients):
                return
            await asyncio.sleep(0.01)


async def collect(stream: Any, cursor: int | None = None) -> list[Event]:
    return [event async for event in stream.follow(cursor)]


async def test_a_stream_published_on_one_node_is_followed_on_another(node: MakeNode) -> None:
    a, b = await node(), await node()
    stream = a.create("k")
    publish(stream, 3)
    assert await a.flushed()
    mirror = await b.open("k")
    assert mirror is not None and mirror is not stream
    assert mirror.head == 3
    publish(stream, 2)
    stream.close()
    async with within():
        events = await collect(mirror)
    assert [(e.id, e.name, e.payload()) for e in events] == [
        (i, "tick", {"i": i}) for i in range(1, 6)
    ]
    # The bytes are the publisher's: every node frames an event identically.
    assert events == [stream.buffer.get(i) for i in range(1, 6)]
    assert mirror.closed


async def test_late_join_and_resume_on_the_mirror(node: MakeNode) -> None:
    a, b = await node(), await node()
    stream = a.create("k")
    publish(stream, 10)
    stream.close()
    assert await a.flushed()
    mirror = await b.open("k")
    assert mirror is not None and mirror.closed and mirror.head == 10
    sink = CollectingSink()
    mirror.subscribe(sink, 7)
    assert [r.id for r in records_of(sink.data)] == [8, 9, 10]
    assert mirror.at_end(10)
    with pytest.raises(InvalidCursor):
        mirror.check_cursor(11)


async def test_one_reader_per_stream_per_node(node: MakeNode) -> None:
    a, b = await node(), await node()
    stream = a.create("k")
    publish(stream, 1)
    assert await a.flushed()
    first, second = await b.open("k"), await b.open("k")
    assert first is second
    assert len(b._mirrors) == 1


async def test_one_reader_follows_many_streams_and_takes_new_ones_at_once(
    node: MakeNode,
) -> None:
    """A node's reader covers every stream it mirrors with each blocking read; a stream
    opened while that read is blocked in Redis is followed at once, not a block later."""
    a, b = await node(), await node(block=30 * UNIT, socket_timeout=60 * UNIT)
    one, two = a.create("one"), a.create("two")
    assert await a.flushed()
    first = await b.open("one")
    assert first is not None
    publish(one, 1)
    async with within():
        await b._mirrors["one"].reach(1, 10 * UNIT)
    await blocked_in_redis(a.client)
    second = await b.open("two")  # the reader is blocked reading "one" only
    assert second is not None
    publish(two, 2)
    async with within():
        await b._mirrors["two"].reach(2, 10 * UNIT)
    publish(one, 1)
    async with within():
        await b._mirrors["one"].reach(2, 10 * UNIT)
    assert (first.head, second.head) == (2, 2)
    assert len(b._readers) == 1 and len(b._readers[0]) == 2


async def test_an_unknown_stream_is_none_unless_expected(node: MakeNode) -> None:
    a, b = await node(), await node()
    assert await b.open("nothing") is None
    expected = await b.open("later", expected=True)
    assert expected is not None and expected.head == 0
    stream = a.create("later")
    publish(stream, 2)
    stream.close()
    async with within():
        events = await collect(expected)
    assert [e.id for e in events] == [1, 2]


async def test_a_cursor_ahead_of_the_mirror_waits_for_it(node: MakeNode) -> None:
    a, b = await node(), await node()
    stream = a.create("k")
    publish(stream, 2)
    assert await a.flushed()
    assert await b.open("k") is not None
    publish(stream, 3)  # the publisher's subscribers saw event 5; Redis may not have it yet
    async with within():
        mirror = await b.open("k", cursor=5)
    assert mirror is not None and mirror.head >= 5


async def test_trimmed_stream_starts_at_the_checkpoint_with_gap_and_snapshot(
    node: MakeNode,
) -> None:
    config = BrokerConfig(max_events_per_stream=10)
    a, b = await node(config), await node(config)
    log = Counting()
    stream = a.create("k", snapshot=log.snapshot, resume_snapshot=log.resume_snapshot)
    for _ in range(250):
        event = stream.publish("tick", {"i": stream.head + 1})
        assert event.id is not None
        log.record(event.id, "tick", event.payload())
    assert await a.flushed()
    raw = await a.client.xrange(a.redis_key("k"), "-", "+")
    assert 10 <= len(raw) < 250  # trimmed by Redis, approximately
    checkpoint = orjson.loads(await a.client.get(a.redis_key("k") + ":ckpt"))
    assert checkpoint["at"] == 250  # every max_events // 2 events
    mirror = await b.open("k")
    assert mirror is not None and mirror.head == 250
    stream.close()
    async with within():
        events = await collect(mirror, 0)
    assert events[0].name == GAP
    assert events[1].name == "state" and events[1].payload() == {"last": {"i": 250}}
    assert events[1].id == 250


async def test_append_final_ends_a_stream_whose_publisher_died(node: MakeNode) -> None:
    a, b = await node(), await node()
    stream = a.create("k")
    publish(stream, 4)
    assert await a.flushed()
    mirror = await b.open("k")
    assert mirror is not None
    # Node A is gone without closing the stream: node B ends it.
    assert await b.append_final("k", "thread.run.failed", {"why": "node died"}) == 5
    assert await b.append_final("k", "thread.run.failed", {"why": "again"}) is None
    async with within():
        events = await collect(mirror, 3)
    assert [(e.id, e.name) for e in events] == [(4, "tick"), (5, "thread.run.failed")]
    assert mirror.closed
    ttl = await b.client.ttl(b.redis_key("k"))
    assert 0 < ttl <= 300


async def test_append_final_after_an_expected_event_and_tail(node: MakeNode) -> None:
    a, b = await node(), await node()
    assert await b.tail("k") == (0, False)  # no such stream yet
    stream = a.create("k")
    publish(stream, 3)
    assert await a.flushed()
    mirror = await b.open("k")
    assert mirror is not None
    assert await b.tail("k") == (3, False)
    # Expecting another last event: nothing appended; the error says where the stream is.
    for wrong in (0, 2, 4):
        with pytest.raises(StreamMoved) as raised:
            await b.append_final("k", "final", {"at": wrong}, expect_after=wrong)
        assert raised.value.last == 3 and raised.value.key == "k"
    assert await b.tail("k") == (3, False)
    assert await b.append_final("k", "final", {"at": 3}, expect_after=3) == 4
    assert await b.tail("k") == (4, True)
    assert await b.append_final("k", "final", {"at": 4}, expect_after=4) is None  # ended
    async with within():
        events = await collect(mirror, 2)
    assert [(e.id, e.name, e.payload()) for e in events] == [
        (3, "tick", events[0].payload()),
        (4, "final", {"at": 3}),
    ]
    assert mirror.closed


async def test_replayed_writes_and_writes_after_a_foreign_end_add_nothing(
    node: MakeNode,
) -> None:
    a, b = await node(), await node()
    stream = a.create("k")
    publish(stream, 3)
    assert await a.flushed()
    # As if the reply to that write was lost and the outbox wrote it all again.
    await a._out()._write([("x", "k", stream.buffer.get(i)) for i in (1, 2, 3)])
    # Node B ends the stream of an A it presumed dead; A, alive after all, publishes on.
    assert await b.append_final("k", "thread.run.failed", {"why": "presumed dead"}) == 4
    publish(stream, 2)
    assert await a.flushed()
    entries = await a.client.xrange(a.redis_key("k"))
    assert [raw_id for raw_id, _ in entries] == [b"0-%d" % i for i in range(1, 6)]
    assert entries[3][1][b"n"] == b"thread.run.failed" and b"end" in entries[4][1]
    # Any other error is the outbox's to retry, not a skipped event.
    await a.client.set(a.redis_key("w"), "not a stream")
    with pytest.raises(ResponseError, match="WRONGTYPE"):
        await a._out()._write([("x", "w", stream.buffer.get(1))])


async def test_closed_streams_expire_after_retention(node: MakeNode) -> None:
    a = await node(BrokerConfig(retention=7))
    stream = a.create("k")
    publish(stream, 1)
    assert await a.flushed()
    assert await a.client.ttl(a.redis_key("k")) > 3600  # open: the long safety expiry
    stream.close()
    assert await a.flushed()
    assert 0 < await a.client.ttl(a.redis_key("k")) <= 7


async def test_a_failed_start_deletes_the_stream(node: MakeNode) -> None:
    a = await node()
    stream = a.create("k")
    publish(stream, 1)
    with pytest.raises(StreamExists):
        a.create("k")
    a.discard("k")
    assert await a.flushed()
    assert not await a.client.exists(a.redis_key("k"))


async def test_a_mirror_nobody_watches_is_dropped(node: MakeNode) -> None:
    a, b = await node(), await node(mirror_idle=0.1 * UNIT, block=0.05 * UNIT)
    stream = a.create("k")
    publish(stream, 1)
    assert await a.flushed()
    mirror = await b.open("k")
    assert mirror is not None
    state = b._mirrors["k"]
    async with within():
        await state.done.wait()
    assert b.get("k") is None and mirror.discarded


async def test_unreachable_redis_is_a_clear_error() -> None:
    registry = RedisRegistry(None, RedisSettings("redis://127.0.0.1:1/0"))
    try:
        with pytest.raises(BackendUnavailable, match=r"redis://127\.0\.0\.1:1/0"):
            async with within():
                await registry.start()
    finally:
        await registry.aclose()


async def test_idle_blocking_reads_outlast_the_socket_timeout(
    node: MakeNode, caplog: pytest.LogCaptureFixture
) -> None:
    """A mirror of a quiet stream blocks again and again, longer in all than the client's
    socket timeout, without the client cutting its reads (and the mirror logging it)."""
    with pytest.raises(ValueError, match="below socket_timeout"):
        RedisRegistry(None, RedisSettings("redis://127.0.0.1:1/0", block=5, socket_timeout=5))
    a, b = await node(), await node(block=0.3 * UNIT, socket_timeout=0.5 * UNIT)
    stream = a.create("k")
    publish(stream, 1)
    assert await a.flushed()
    mirror = await b.open("k")
    assert mirror is not None
    sink = CollectingSink()
    mirror.subscribe(sink, 0)
    await asyncio.sleep(3 * 0.5 * UNIT)  # quiet: several blocking reads time out in Redis
    publish(stream, 1)
    async with within():
        await b._mirrors["k"].reach(2, 10 * UNIT)
    assert mirror.head == 2
    assert [r.levelname for r in caplog.records if r.name == "broker.redis_streams"] == []


async def test_a_busy_mirror_nobody_watches_is_dropped_too(node: MakeNode) -> None:
    a, b = await node(), await node(mirror_idle=0.1 * UNIT)
    stream = a.create("k")
    publish(stream, 1)
    assert await a.flushed()
    assert await b.open("k") is not None
    state = b._mirrors["k"]

    async def keep_publishing() -> None:
        while True:
            publish(stream, 1)
            await asyncio.sleep(0.01)  # a paced publisher

    publisher = asyncio.create_task(keep_publishing())
    try:
        async with within():
            await state.done.wait()
    finally:
        publisher.cancel()
    assert b.get("k") is None


async def test_a_reader_cancelled_mid_read_never_takes_its_stale_reply(
    redis_url: str, redis_prefix: str
) -> None:
    """The reply to a cancelled blocking read may still come: that connection is dropped,
    so the next read gets its own reply."""
    key = f"{redis_prefix}s:direct"
    client = aioredis.Redis.from_url(redis_url, protocol=2)
    pool = aioredis.ConnectionPool.from_url(redis_url, protocol=2)
    link = Link(pool, timeout=60 * UNIT)

    def xread(last: bytes) -> Any:
        return link.call(pack("XREAD", "BLOCK", int(30_000 * UNIT), "STREAMS", key, last))

    try:
        for n in (1, 2):
            await client.xadd(key, {"n": "tick", "d": str(n)}, id=f"0-{n}")
        blocked = asyncio.create_task(xread(b"0-2"))
        await blocked_in_redis(client)
        blocked.cancel()
        with pytest.raises(asyncio.CancelledError):
            await blocked
        await client.xadd(key, {"n": "tick", "d": "3"}, id="0-3")
        async with within():
            ((_key, got),) = (await xread(b"0-0"))[0]
        assert [(raw_id, fields[3]) for raw_id, fields in got] == [
            (b"0-1", b"1"),
            (b"0-2", b"2"),
            (b"0-3", b"3"),
        ]
    finally:
        await link.close()
        await pool.aclose()
        await client.aclose()
