"""Mirrors of streams published on other nodes, and the readers that feed them.

A :class:`Mirror` is the local copy of one stream another node publishes; a
:class:`MirrorReader` reads up to ``capacity`` mirrored streams with one blocking
``XREAD … STREAMS k1 k2 … id1 id2 …`` at a time, on a connection of its own. So each
stream has exactly one reader on a node, whatever its number of subscribers, and a node
pays one wake-up, one command and one reply per *read*, not per stream: a read returns
what arrived on every stream it covers. After a read that returned events the reader
waits ``linger`` before the next one, so that under load each read carries more (at most
that much more latency).

Adding a stream to a reader blocked in Redis: the registry calls :meth:`MirrorReader.add`,
which sends ``CLIENT UNBLOCK`` for the reader's connection; the read returns at once and
the next one covers the new stream. (The blocked read may not have reached Redis yet:
the unblock is repeated, a millisecond apart, until the read returns.)

Housekeeping, every ``block`` seconds per reader: a mirror whose stream ended or was
discarded leaves its reader; one nobody has watched for ``mirror_idle`` is dropped; one
whose stream is gone from Redis before its end (expired, deleted) is dropped.

Concurrency: everything runs on one event loop; a reader's task is the only one to read
its connection. Cancellation: :meth:`MirrorReader.cancel` stops the task; the connection
goes back to the pool as the task ends. A reader without mirrors gives its connection
back and sleeps until one is added.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from .redis_io import Link, bulk, pack, pack_args
from .stream import Stream
from .types import Projection

__all__ = ["UNWATCHED", "Mirror", "MirrorReader"]

logger = logging.getLogger("broker.redis_streams")

Entries = Sequence[tuple[bytes, dict[bytes, bytes]]]

UNWATCHED = "nobody watches it"
"""The reason a reader gives for dropping a mirror without subscribers."""


class Mirror:
    """One mirrored stream: its local :class:`Stream`, its projection and read position."""

    __slots__ = (
        "key",
        "rkey",
        "stream",
        "projection",
        "last",
        "waiters",
        "reader",
        "unwatched_since",
        "fed",
        "done",
    )

    def __init__(self, key: str, rkey: str, stream: Stream, projection: Projection | None):
        self.key = key
        self.rkey = rkey.encode()
        self.stream = stream
        self.projection = projection
        self.last = b"0-0"
        """The id of the last entry read from Redis."""
        self.waiters: list[asyncio.Future[None]] = []
        self.reader: MirrorReader | None = None
        self.unwatched_since: float | None = None
        self.fed = False  # read something since the last housekeeping
        self.done = asyncio.Event()
        """Set once the mirror has left its reader (ended, discarded or dropped)."""

    def progressed(self) -> None:
        waiters, self.waiters = self.waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    async def reach(self, cursor: int, timeout: float) -> None:
        """Wait until the mirror holds event ``cursor`` or has ended (at most ``timeout``)."""
        stream = self.stream
        try:
            async with asyncio.timeout(timeout):
                while stream.head < cursor and not stream.closed and not stream.discarded:
                    fut = asyncio.get_running_loop().create_future()
                    self.waiters.append(fut)
                    await fut
        except TimeoutError:
            pass


class MirrorReader:
    """One task reading many mirrored streams (see the module docs).

    ``apply(mirror, entries)`` takes what was read for a mirror; ``drop(mirror, why)``
    removes a mirror from the registry (the reader has let it go already).
    """

    def __init__(
        self,
        *,
        pool: aioredis.ConnectionPool,
        client: aioredis.Redis,
        capacity: int,
        block: float,
        timeout: float,
        linger: float,
        mirror_idle: float,
        apply: Callable[[Mirror, Entries], None],
        drop: Callable[[Mirror, str], None],
    ) -> None:
        self.capacity = capacity
        self._pool = pool
        self._client = client
        self._block = block
        self._timeout = timeout
        self._linger = linger
        self._mirror_idle = mirror_idle
        self._apply = apply
        self._drop = drop
        self._mirrors: dict[bytes, Mirror] = {}
        block_ms = max(1, int(block * 1000))
        self._head = pack_args("XREAD", "COUNT", 1000, "BLOCK", block_ms, "STREAMS")
        self._client_id: int | None = None
        self._reads = 0
        self._reading = 0  # the number of the read in flight (0: none)
        self._stale = 0  # the number of a read in flight that misses a mirror added since
        self._unblocking: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self._mirrors)

    @property
    def full(self) -> bool:
        return len(self._mirrors) >= self.capacity

    def add(self, mirror: Mirror) -> None:
        """Read ``mirror`` from now on (starting after ``mirror.last``)."""
        mirror.reader = self
        self._mirrors[mirror.rkey] = mirror
        self._wake.set()
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(
                self._run(), name="redis mirror reader"
            )
        elif self._reading:
            self._stale = self._reading
            if self._unblocking is None:
                self._unblocking = asyncio.get_running_loop().create_task(
                    self._unblock(), name="redis mirror reader unblock"
                )

    def remove(self, mirror: Mirror) -> None:
        """Stop reading ``mirror`` (a read in flight may still cover it: ignored)."""
        if self._mirrors.get(mirror.rkey) is mirror:
            del self._mirrors[mirror.rkey]
        mirror.reader = None
        mirror.done.set()

    def cancel(self) -> None:
        for task in (self.task, self._unblocking):
            if task is not None:
                task.cancel()

    def tasks(self) -> list[asyncio.Task[None]]:
        return [t for t in (self.task, self._unblocking) if t is not None]

    async def _unblock(self) -> None:
        """Make the read in flight return now, if it misses a mirror (it is blocked in
        Redis, or about to be: then again a millisecond later)."""
        try:
            while self._reading and self._stale == self._reading:
                if self._client_id is not None:
                    if await self._client.client_unblock(self._client_id):
                        return
                await asyncio.sleep(0.001)  # the read is on its way to Redis: poll
        except (RedisError, OSError) as exc:
            logger.debug("mirror reader: unblock failed: %s", exc)  # the read ends by itself
        finally:
            self._unblocking = None

    def _command(self) -> bytes:
        """``XREAD COUNT 1000 BLOCK block STREAMS`` every mirror's key, then its last id."""
        mirrors = self._mirrors.values()
        keys = [bulk(m.rkey) for m in mirrors]
        return b"".join(
            [b"*%d\r\n" % (6 + 2 * len(keys)), self._head, *keys, *[bulk(m.last) for m in mirrors]]
        )

    async def _run(self) -> None:
        link = Link(self._pool, self._timeout)
        loop = asyncio.get_running_loop()
        next_check = loop.time() + self._block
        failures = 0
        try:
            while True:
                if not self._mirrors:  # idle: no connection held, no task woken
                    await link.close()
                    self._wake.clear()
                    await self._wake.wait()
                    continue
                try:
                    if link.fresh:
                        (client_id,) = await link.call(pack("CLIENT", "ID"))
                        self._client_id, link.fresh = int(client_id), False
                    self._reads += 1
                    self._reading = self._reads
                    try:
                        (reply,) = await link.call(self._command())
                    finally:
                        self._reading = 0
                    if isinstance(reply, ResponseError):
                        raise reply
                except (RedisError, OSError) as exc:
                    failures += 1
                    delay = min(2.0, 0.05 * 2**failures)
                    logger.warning(
                        "mirror reader: reading Redis failed: %s; retry in %.2fs", exc, delay
                    )
                    await asyncio.sleep(delay)
                    continue
                failures = 0
                for rkey, entries in reply or ():
                    mirror = self._mirrors.get(rkey)
                    if mirror is not None:
                        mirror.fed = True
                        self._apply(mirror, [
                            (raw_id, dict(zip(flat[::2], flat[1::2], strict=True)))
                            for raw_id, flat in entries
                        ])  # fmt: skip
                        if mirror.stream.closed:  # its end was among the entries
                            self.remove(mirror)
                if loop.time() >= next_check:
                    await self._housekeep(loop.time())
                    next_check = loop.time() + self._block
                if reply and self._linger:
                    await asyncio.sleep(self._linger)
        finally:
            await link.close()

    async def _housekeep(self, now: float) -> None:
        quiet: list[Mirror] = []
        for mirror in list(self._mirrors.values()):
            stream = mirror.stream
            if stream.closed or stream.discarded:
                self.remove(mirror)
                continue
            if stream.watched:
                mirror.unwatched_since = None
            elif mirror.unwatched_since is None:
                mirror.unwatched_since = now
            elif now - mirror.unwatched_since >= self._mirror_idle:
                self.remove(mirror)
                self._drop(mirror, UNWATCHED)
                continue
            if not mirror.fed:
                quiet.append(mirror)
            mirror.fed = False
        if not quiet:
            return
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                for mirror in quiet:
                    pipe.exists(mirror.rkey)
                there: list[Any] = await pipe.execute()
        except (RedisError, OSError) as exc:
            logger.debug("mirror reader: checking quiet streams failed: %s", exc)
            return
        for mirror, exists in zip(quiet, there, strict=True):
            if not exists and mirror.reader is self:
                self.remove(mirror)
                self._drop(mirror, "gone from Redis before its end")
