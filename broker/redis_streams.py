"""The broker on Redis Streams: the same streams, shared by every node on one Redis.

:class:`RedisRegistry` is a :class:`~broker.registry.Registry` whose streams are also
written to, and read from, Redis Streams, so that a subscriber on any node can follow,
join late and resume a stream published on another.

Layout (every key under ``prefix``)
-----------------------------------
* ``{prefix}s:{key}`` — a Redis stream; event ``n`` is the entry with id ``0-n`` and the
  fields ``n`` (name) and ``d`` (JSON data), so a contract event id *is* an entry id and
  cursors work on every node. The end of the stream is one more entry, ``0-(head+1)``,
  with the field ``end``. ``XADD … MAXLEN ~ max_events_per_stream`` trims it like the
  in-memory replay buffer (Redis trims by count only; each node's own buffer also keeps
  the byte cap). The stream is created empty (``XGROUP CREATE … MKSTREAM``) when the
  publisher creates it, so every node sees it before its first event. The key expires
  ``retention`` seconds after the end (``open_ttl`` while open, so that a stream nobody
  ends cannot stay forever).
* ``{prefix}s:{key}:ckpt`` — a checkpoint of the publisher's state (its snapshot at some
  event id), written every ``max_events_per_stream // 2`` events, so a node that starts
  mirroring a stream Redis has already trimmed can still answer gap snapshots.

Publishing
----------
The publishing node serves its own subscribers from its local stream, exactly as in
memory. Publishing still never awaits: each event is also queued on the node's *outbox*,
whose one task writes everything queued in one pipeline, in order, at most once per
``linger`` (see :mod:`broker.redis_io`).
If Redis is unreachable the outbox keeps the events and retries with backoff (local
subscribers are unaffected; the queue is not bounded).

Reading (one reader per stream per node)
----------------------------------------
A node asked for a stream it does not publish opens a *mirror*: a local stream that
first loads what Redis holds (``XRANGE``, atomically with the checkpoint), then is fed by
the node's one reader of that stream: a :class:`~broker.redis_mirrors.MirrorReader`
follows up to ``streams_per_reader`` streams with one blocking ``XREAD`` at a time, so a
node reads each stream once, whatever its subscribers, and pays per read rather than per
stream. Every local subscriber of a mirror is served with the same encode-once fan-out,
backpressure, gap and snapshot rules as in memory; a
:data:`~broker.types.ProjectionFactory` gives the mirror the publisher's snapshots (the
mirror folds every event it reads into it). A mirror ends with its stream, or is dropped
after ``mirror_idle`` seconds without a subscriber, or when its key is gone from Redis.

Cancellation: every task is tracked; :meth:`RedisRegistry.aclose` drains the outbox
(bounded) and cancels the readers.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, cast

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from .config import BrokerConfig, RedisSettings
from .errors import BackendUnavailable, StreamMoved
from .events import Event
from .redis_io import _END, Outbox
from .redis_mirrors import UNWATCHED, Entries, Mirror, MirrorReader
from .registry import Registry
from .stream import Stream
from .types import ProjectionFactory, SnapshotFn

__all__ = ["RedisRegistry", "RedisSettings"]

logger = logging.getLogger(__name__)

# Append one event and the end marker after whatever the stream holds, unless it has
# ended already (-1) or, when ARGV[5] is not empty, its last event is not ARGV[5]
# (-2 - its last event id): used to end the stream of a node that died (see append_final).
_APPEND_FINAL = """
local last = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local n = 0
if #last > 0 then
  local fields = last[1][2]
  for i = 1, #fields, 2 do
    if fields[i] == 'end' then return -1 end
  end
  n = tonumber(string.match(last[1][1], '-(%d+)$'))
end
if ARGV[5] ~= '' and tonumber(ARGV[5]) ~= n then return -2 - n end
n = n + 1
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '0-' .. n, 'n', ARGV[1], 'd', ARGV[2])
redis.call('XADD', KEYS[1], '0-' .. (n + 1), 'end', '1')
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return n
"""


def _entry_id(raw: bytes) -> int:
    return int(raw.rsplit(b"-", 1)[1])


class RedisRegistry(Registry):
    """A registry whose streams live in Redis too: publish on one node, serve on any.

    Same interface and guarantees as :class:`Registry`; call :meth:`start` before use and
    :meth:`aclose` at the end. See the module docstring for the layout and tasks.
    """

    def __init__(
        self,
        config: BrokerConfig | None,
        settings: RedisSettings,
        *,
        projection: ProjectionFactory | None = None,
    ) -> None:
        super().__init__(config)
        self.settings = settings
        self._projection = projection
        if not 0 < settings.block < settings.socket_timeout:
            raise ValueError(
                f"block ({settings.block:g}s) must be positive and below socket_timeout "
                f"({settings.socket_timeout:g}s)"
            )
        # Commands of many requests at once share this pool; beyond its size they wait
        # for a connection (up to socket_timeout) rather than fail.
        self._client = aioredis.Redis.from_pool(
            aioredis.BlockingConnectionPool.from_url(
                settings.url,
                max_connections=settings.max_connections,
                timeout=settings.socket_timeout,
                protocol=2,
                socket_timeout=settings.socket_timeout,
                socket_connect_timeout=settings.connect_timeout,
            )
        )
        # The outbox's and the mirrors' own connections: no socket timeout (each call has
        # its own; see redis_io.Link)
        self._link_pool = aioredis.ConnectionPool.from_url(
            settings.url,
            protocol=2,
            socket_timeout=None,
            socket_connect_timeout=settings.connect_timeout,
        )
        self._outbox: Outbox | None = None
        self._owned: set[str] = set()
        self._mirrors: dict[str, Mirror] = {}
        self._readers: list[MirrorReader] = []
        self._opening: dict[str, asyncio.Task[Stream | None]] = {}
        self._append_final = self._client.register_script(_APPEND_FINAL)
        self._checkpoint_every = max(1, self.config.max_events_per_stream // 2)

    @property
    def client(self) -> aioredis.Redis:
        return self._client

    def redis_key(self, key: str) -> str:
        """The Redis key of the stream ``key``."""
        return f"{self.settings.prefix}s:{key}"

    async def start(self) -> None:
        """Connect (raises :class:`BackendUnavailable` naming the URL) and start the outbox."""
        try:
            await self._client.ping()
        except (RedisError, OSError) as exc:
            raise BackendUnavailable(f"cannot reach Redis at {self.settings.url}: {exc}") from exc
        self._out()

    def _out(self) -> Outbox:
        if self._outbox is None:  # start() not awaited: begin without the reachability check
            self._outbox = Outbox(
                self._link_pool,
                timeout=self.settings.socket_timeout,
                prefix=self.settings.prefix,
                maxlen=self.config.max_events_per_stream,
                open_ttl=self.settings.open_ttl,
                retention=self.config.retention,
                linger=self.settings.linger,
            )
        return self._outbox

    async def flushed(self, timeout: float = 5.0) -> bool:
        """Wait until everything published so far is in Redis (at most ``timeout``)."""
        return self._outbox is None or await self._outbox.drain(timeout)

    # -- publishing ----------------------------------------------------------------------

    def create(
        self,
        key: str,
        *,
        snapshot: SnapshotFn | None = None,
        resume_snapshot: SnapshotFn | None = None,
    ) -> Stream:
        self._check_new(key)
        outbox = self._out()
        every = self._checkpoint_every

        def tap(event: Event) -> None:
            outbox.put("x", key, event)
            if snapshot is not None and event.id is not None and event.id % every == 0:
                outbox.put("ckpt", key, event.id, snapshot)

        stream = self._add(key, snapshot=snapshot, resume_snapshot=resume_snapshot, tap=tap)
        self._owned.add(key)
        outbox.put("new", key)
        return stream

    def _retain(self, stream: Stream) -> None:
        if stream.key in self._owned and self._streams.get(stream.key) is stream:
            self._out().put("end", stream.key, stream.head)
        super()._retain(stream)

    def discard(self, key: str) -> None:
        stream = self._streams.get(key)
        if key in self._owned:
            self._owned.discard(key)
            if stream is not None and not stream.closed and self._outbox is not None:
                self._outbox.put("del", key)  # never finished: a failed start
        self._let_go(key)
        super().discard(key)

    def _expire(self, key: str) -> None:
        self._owned.discard(key)
        self._let_go(key)
        super()._expire(key)

    def _let_go(self, key: str) -> None:
        mirror = self._mirrors.pop(key, None)
        if mirror is not None:
            if mirror.reader is not None:
                mirror.reader.remove(mirror)
            mirror.done.set()

    async def append_final(
        self, key: str, name: str, payload: Any, *, expect_after: int | None = None
    ) -> int | None:
        """End a stream another node was publishing (it died): append ``name`` and the
        end marker after what Redis holds. Returns the event's id, or ``None`` if the
        stream had already ended. Atomic (one script).

        ``expect_after``: append only if the stream's last event id in Redis is exactly
        that (0: no event), else raise :class:`StreamMoved` carrying the id it has, and
        append nothing; for a payload that names its own position (the caller reads
        :meth:`tail`, builds the payload for the next id, and retries on ``StreamMoved``).
        """
        data = orjson.dumps(payload)
        retention = max(1, int(self.config.retention * 1000))  # ms
        expect = "" if expect_after is None else str(expect_after)
        result = await self._append_final(
            keys=[self.redis_key(key)],
            args=[name, data, self.config.max_events_per_stream, retention, expect],
        )
        n = int(result)
        if n <= -2:
            raise StreamMoved(key, -2 - n)
        return None if n < 0 else n

    async def tail(self, key: str) -> tuple[int, bool]:
        """What Redis holds of stream ``key``: ``(the id of its last event, whether it has
        ended)``; ``(0, False)`` for a stream with no event (or no key). One read."""
        last = await self._client.xrevrange(self.redis_key(key), "+", "-", count=1)
        if not last:
            return 0, False
        raw_id, fields = cast("tuple[bytes, dict[bytes, bytes]]", last[0])
        if _END in fields:
            return _entry_id(raw_id) - 1, True  # the marker takes the id after the last
        return _entry_id(raw_id), False

    # -- reading -------------------------------------------------------------------------

    async def open(
        self, key: str, *, expected: bool = False, cursor: int | None = None
    ) -> Stream | None:
        stream = self._streams.get(key)
        if stream is None:
            task = self._opening.get(key)
            if task is None:
                task = asyncio.get_running_loop().create_task(
                    self._open_mirror(key, expected), name=f"open mirror {key}"
                )
                self._opening[key] = task
                task.add_done_callback(lambda _t: self._opening.pop(key, None))
            stream = await asyncio.shield(task)
            if stream is None:
                return None
        mirror = self._mirrors.get(key)
        if mirror is not None and cursor is not None and cursor > stream.head:
            await mirror.reach(cursor, self.settings.catch_up)
        return stream

    async def _open_mirror(self, key: str, expected: bool) -> Stream | None:
        rkey = self.redis_key(key)
        try:
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.exists(rkey)
                pipe.xrange(rkey, "-", "+")
                pipe.get(rkey + ":ckpt")
                exists, entries, checkpoint = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise BackendUnavailable(f"cannot read stream {key!r} from Redis: {exc}") from exc
        if not exists and not expected:
            return None
        if key in self._streams:  # created locally meanwhile
            return self._streams[key]
        self._check_new(key)
        projection = self._projection(key) if self._projection is not None else None
        stream = self._add(
            key,
            snapshot=projection.snapshot if projection is not None else None,
            resume_snapshot=projection.resume_snapshot if projection is not None else None,
        )
        mirror = self._mirrors[key] = Mirror(key, rkey, stream, projection)
        if entries and _entry_id(entries[0][0]) > 1:
            # Redis has trimmed the start: begin at the checkpoint (its state folded into
            # the projection) and keep only what follows it.
            at = _entry_id(entries[0][0]) - 1
            if checkpoint is not None:
                saved = orjson.loads(checkpoint)
                if saved["at"] >= at:
                    at = saved["at"]
                    if projection is not None:
                        for name, payload in saved["items"]:
                            projection.record(at, name, payload)
            entries = [e for e in entries if _entry_id(e[0]) > at]
            stream.buffer.restart_after(at)
        if entries:
            self._apply(mirror, entries)
        if stream.closed:
            mirror.done.set()
        else:
            self._reader_for().add(mirror)
        return stream

    def _reader_for(self) -> MirrorReader:
        """A reader with room for one more mirror."""
        for reader in self._readers:
            if not reader.full:
                return reader
        reader = MirrorReader(
            pool=self._link_pool,
            client=self._client,
            capacity=self.settings.streams_per_reader,
            block=self.settings.block,
            timeout=self.settings.socket_timeout,
            linger=self.settings.linger,
            mirror_idle=self.settings.mirror_idle,
            apply=self._apply,
            drop=self._drop,
        )
        self._readers.append(reader)
        return reader

    def _drop(self, mirror: Mirror, why: str) -> None:
        """A reader let ``mirror`` go (``why``): forget it and its stream."""
        # Routine when its watchers left before the run ended; worth telling otherwise.
        level = logging.DEBUG if why == UNWATCHED else logging.INFO
        logger.log(level, "stream %r: %s; mirror dropped", mirror.key, why)
        if self._mirrors.get(mirror.key) is mirror:
            del self._mirrors[mirror.key]
            super().discard(mirror.key)

    def _apply(self, mirror: Mirror, entries: Entries) -> None:
        """Append entries read from Redis to the mirror."""
        key = mirror.key
        stream = mirror.stream
        projection = mirror.projection
        for raw_id, fields in entries:
            mirror.last = raw_id
            if stream.closed:
                break
            if _END in fields:
                stream.close()
                break
            event_id = _entry_id(raw_id)
            if event_id <= stream.head:
                continue
            if event_id != stream.head + 1:
                logger.error(
                    "stream %r: Redis jumped from event %d to %d; dropping the mirror",
                    key,
                    stream.head,
                    event_id,
                )
                self.discard(key)
                break
            name = fields[b"n"].decode()
            data = fields[b"d"]
            if projection is not None:
                projection.record(event_id, name, orjson.loads(data))
            stream.append(Event(event_id, name, data))
        mirror.progressed()

    # -- lifecycle -------------------------------------------------------------------------

    def shutdown(self) -> None:
        for reader in self._readers:
            reader.cancel()
        for mirror in self._mirrors.values():
            mirror.done.set()
        self._mirrors.clear()
        for task in self._opening.values():
            task.cancel()
        if self._outbox is not None:
            self._outbox.cancel()
        super().shutdown()

    async def aclose(self, timeout: float = 5.0) -> None:
        if self._outbox is not None and not await self._outbox.drain(timeout):
            logger.warning("redis outbox: writes still queued at shutdown were dropped")
        tasks: list[asyncio.Task[Any]] = [t for r in self._readers for t in r.tasks()]
        tasks += self._opening.values()
        outbox = self._outbox
        self.shutdown()
        if outbox is not None:
            tasks.append(outbox.task)
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if outbox is not None:
            await outbox.close()
        await self._client.aclose()
        await self._link_pool.aclose()
