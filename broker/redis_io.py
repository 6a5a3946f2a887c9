"""The two I/O paths between a node and Redis: the outbox (its writes) and the stream
reader (one blocking reader per mirrored stream). :mod:`broker.redis_streams` decides
what to write and what to do with what is read; this module only moves it.

Both are built for the cost per event, which is mostly the client's own (building
commands and parsing replies in Python, waking tasks), not Redis's: each keeps one
connection of its own for its whole life (:class:`Link`) and sends commands encoded here,
once per write or read; the outbox sends everything queued as one pipeline, a loop
turn's events as one batch command. redis-py still connects (URL, auth, TLS, database)
and parses the replies (hiredis).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeout

from .events import Event

__all__ = ["Link", "Outbox", "bulk", "pack", "pack_args"]

logger = logging.getLogger("broker.redis_streams")

_END = b"end"

# Append a batch of events, to any number of streams, in order: ARGV[1] is MAXLEN, then
# four arguments per event (index into KEYS, entry id, name, data). An entry whose id is
# not above its stream's last (a batch retried after a lost reply, or a stream another node
# ended for its dead owner) is skipped, so a batch can be replayed safely; any other error
# stops the batch and is returned (the outbox retries it). Returns how many were skipped.
# One command per batch rather than one XADD per event: the publisher's cost per event is
# mostly the client's, in packing commands and parsing replies.
_APPEND_BATCH = """
local maxlen = ARGV[1]
local skipped = 0
for i = 2, #ARGV, 4 do
  local r = redis.pcall('XADD', KEYS[tonumber(ARGV[i])], 'MAXLEN', '~', maxlen,
                        ARGV[i + 1], 'n', ARGV[i + 2], 'd', ARGV[i + 3])
  if type(r) == 'table' and r.err then
    if not string.find(r.err, 'equal or smaller', 1, true) then return r end
    skipped = skipped + 1
  end
end
return skipped
"""
_BATCH = 1000
"""Events per batch command at most (a script holds Redis while it runs)."""


def bulk(value: bytes) -> bytes:
    """One argument in Redis's protocol (RESP)."""
    return b"$%d\r\n%s\r\n" % (len(value), value)


def _encode(value: bytes | str | int) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    return b"%d" % value


def pack_args(*args: bytes | str | int) -> bytes:
    """Arguments in RESP, without the command's header (see :func:`pack`)."""
    return b"".join([bulk(_encode(a)) for a in args])


def pack(*args: bytes | str | int) -> bytes:
    """One command in RESP: ``pack("GET", "k")``."""
    return b"*%d\r\n" % len(args) + pack_args(*args)


class Link:
    """One connection of ``pool``, kept by one user (the outbox, a reader) for its life.

    :meth:`call` sends packed commands and returns their replies, an error reply as its
    :class:`~redis.exceptions.ResponseError` (the connection is still in step). ``pool``
    must have no socket timeout: each call has its own, ``timeout`` (a blocking read must
    be shorter). A call that times out, fails or is cancelled drops the connection (its
    replies may still come) and the next call takes another.
    """

    def __init__(self, pool: aioredis.ConnectionPool, timeout: float) -> None:
        self._pool = pool
        self._timeout = timeout
        self._conn: Any = None
        self.fresh = True
        """True from when the link takes a new connection (the user may reset it, to know
        when its connection changed: its ``CLIENT ID``, say)."""

    async def call(self, packed: bytes, replies: int = 1) -> list[Any]:
        if self._conn is None:
            self._conn = await self._pool.get_connection()  # type: ignore[no-untyped-call]
            self.fresh = True
        conn = self._conn
        out: list[Any] = []
        try:
            async with asyncio.timeout(self._timeout):
                await conn.send_packed_command(packed, check_health=False)
                for _ in range(replies):
                    try:
                        out.append(await conn.read_response())
                    except ResponseError as exc:
                        out.append(exc)
        except BaseException as exc:
            await conn.disconnect(nowait=True)
            if self._conn is conn:  # (not given back by a close() meanwhile)
                self._conn = None
                await self._pool.release(conn)
            if isinstance(exc, TimeoutError):
                raise RedisTimeout(f"no reply from Redis in {self._timeout:g}s") from exc
            raise
        return out

    async def close(self) -> None:
        """Give the connection back to the pool. Idempotent."""
        conn, self._conn = self._conn, None
        if conn is not None:
            await self._pool.release(conn)


class Outbox:
    """Everything the node publishes, queued and written to Redis in order by one task,
    on one :class:`Link`, everything queued as one pipeline. ``put`` never awaits.

    Operations (tuples): ``("new", key)`` creates the empty stream, ``("x", key, event)``
    appends an event, ``("ckpt", key, at, snapshot)`` writes a checkpoint (``snapshot(at)``
    runs when the write goes out), ``("end", key, head)`` writes the end marker and starts
    the retention expiry, ``("del", key)`` deletes the stream. Consecutive events, of any
    streams, go out as one batch command.

    Writes are at least ``linger`` seconds apart: the first event after a quiet spell goes
    out at once, and under load each write carries all that was published meanwhile.

    Backpressure: none; while Redis is unreachable the queue grows and the task retries
    with backoff (a replayed batch is harmless: see ``_APPEND_BATCH``). Cancellation:
    :meth:`cancel` stops the task; :meth:`drain` waits for the queue to empty.
    """

    def __init__(
        self,
        pool: aioredis.ConnectionPool,
        *,
        timeout: float,
        prefix: str,
        maxlen: int,
        open_ttl: float,
        retention: float,
        linger: float = 0.0,
    ) -> None:
        self._link = Link(pool, timeout)
        self._linger = linger
        self._prefix = prefix
        self._maxlen = maxlen
        self._open_ttl = max(1, int(open_ttl))
        self._retention_ms = max(1, int(retention * 1000))
        self._ops: list[tuple[Any, ...]] = []
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="redis outbox")

    def put(self, *op: Any) -> None:
        self._ops.append(op)
        self._idle.clear()
        self._wake.set()

    async def drain(self, timeout: float) -> bool:
        """Wait until everything queued is written (or ``timeout``); returns whether it was."""
        try:
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True

    @property
    def task(self) -> asyncio.Task[None]:
        return self._task

    def cancel(self) -> None:
        self._task.cancel()

    async def close(self) -> None:
        """Give the connection back (once the task has ended)."""
        await self._link.close()

    async def _run(self) -> None:
        failures = 0
        loop = asyncio.get_running_loop()
        last_write = -self._linger
        while True:
            await self._wake.wait()
            # At most one write per ``linger``: under load each write carries more events
            # (the cost is per write, not per event); a lone event goes out at once.
            wait = last_write + self._linger - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            last_write = loop.time()
            self._wake.clear()
            ops, self._ops = self._ops, []
            if not ops:
                self._idle.set()
                continue
            try:
                await self._write(ops)
            except (RedisError, OSError) as exc:
                failures += 1
                delay = min(2.0, 0.05 * 2**failures)
                logger.warning(
                    "redis outbox: %s; retrying %d writes in %.2fs", exc, len(ops), delay
                )
                self._ops[:0] = ops
                await asyncio.sleep(delay)
                self._wake.set()
                continue
            failures = 0
            if not self._ops:
                self._idle.set()

    async def _write(self, ops: list[tuple[Any, ...]]) -> None:
        prefix, maxlen, open_ttl, retention = (
            self._prefix,
            self._maxlen,
            self._open_ttl,
            self._retention_ms,
        )
        commands: list[bytes] = []
        batches: set[int] = set()  # which replies are batches'
        # The current batch of events: its streams (key -> the bulk of its index in KEYS)
        # and its events, four arguments each, encoded here (per event, one formatting).
        keys: dict[str, bytes] = {}
        events: list[bytes] = []
        names: dict[str, bytes] = {}  # an event name -> its bulk

        def flush_batch() -> None:
            if keys:
                batches.add(len(commands))
                head = pack_args("EVAL", _APPEND_BATCH, len(keys), *keys, maxlen)
                count = 4 + len(keys) + 4 * len(events)
                commands.append(b"*%d\r\n%s%s" % (count, head, b"".join(events)))
                keys.clear()
                events.clear()

        for op in ops:
            kind, key = op[0], f"{prefix}s:{op[1]}"
            if kind == "x":
                event: Event = op[2]
                index = keys.get(key)
                if index is None:
                    index = keys[key] = bulk(b"%d" % (len(keys) + 1))
                name = names.get(event.name)
                if name is None:
                    name = names[event.name] = bulk(event.name.encode())
                entry_id = b"0-%d" % cast(int, event.id)
                data = event.data
                events.append(
                    b"%s$%d\r\n%s\r\n%s$%d\r\n%s\r\n"
                    % (index, len(entry_id), entry_id, name, len(data), data)
                )
                if len(events) >= _BATCH:
                    flush_batch()
                continue
            flush_batch()  # everything else goes after the events queued before it
            if kind == "new":  # an empty stream, visible to every node at once
                commands.append(pack("XGROUP", "CREATE", key, "agentstream", "0", "MKSTREAM"))
                commands.append(pack("EXPIRE", key, open_ttl))
            elif kind == "end":
                commands.append(pack("XADD", key, b"0-%d" % (op[2] + 1), _END, b"1"))
                commands.append(pack("PEXPIRE", key, retention))
                commands.append(pack("PEXPIRE", key + ":ckpt", retention))
            elif kind == "ckpt":
                at, snapshot = op[2], op[3]
                items = [[name, payload] for name, payload in snapshot(at)]
                saved = orjson.dumps({"at": at, "items": items})
                commands.append(pack("SET", key + ":ckpt", saved, "EX", open_ttl))
            elif kind == "del":
                commands.append(pack("DEL", key, key + ":ckpt"))
        flush_batch()
        results = await self._link.call(b"".join(commands), len(commands))
        for i, result in enumerate(results):
            if isinstance(result, ResponseError) and i not in batches:
                # A stream created already or an end marker written already (a retried
                # write), or a stream ended by another node (its owner presumed dead).
                logger.debug("redis outbox: %s", result)
            elif isinstance(result, (RedisError, OSError)):
                raise result
            elif i in batches and result:
                logger.debug("redis outbox: %d events were in Redis already", result)
