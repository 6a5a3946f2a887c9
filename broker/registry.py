"""The registry: every stream of a process by key, with retention, limits and budget.

Runs on the event loop thread. Closed streams are retained for ``config.retention``
seconds (one ``call_later`` timer each, cancelled by :meth:`Registry.shutdown`), then
discarded. Memory is bounded three ways: each stream's replay buffer (events and bytes),
the process-wide byte budget, and the optional count of streams.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from .buffer import ByteBudget
from .config import BrokerConfig
from .errors import LimitExceeded, StreamExists
from .events import Event
from .stream import Stream, SubscriberTotal
from .types import Counters, SnapshotFn, StreamStats

__all__ = ["Registry", "RegistryStats"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RegistryStats:
    streams: int
    open_streams: int
    subscribers: int
    buffered_bytes: int
    per_stream: tuple[StreamStats, ...]


class Registry:
    """Creates, finds, retains and drops streams. One per process (passed around, not global)."""

    def __init__(self, config: BrokerConfig | None = None) -> None:
        self.config = config or BrokerConfig()
        self.budget = ByteBudget(self.config.max_total_bytes)
        self._streams: dict[str, Stream] = {}
        self._expiry: dict[str, asyncio.TimerHandle] = {}
        self._subscribers = SubscriberTotal()
        self._reserved = 0
        self.counters = Counters()
        """Totals over every stream this registry has held (published, delivered, …)."""
        self._keepalive_task: asyncio.Task[None] | None = None
        self._shut = False

    # -- streams ---------------------------------------------------------------------

    def create(
        self,
        key: str,
        *,
        snapshot: SnapshotFn | None = None,
        resume_snapshot: SnapshotFn | None = None,
    ) -> Stream:
        """Register a new open stream under ``key``.

        Raises :class:`StreamExists` for a key in use and :class:`LimitExceeded` when
        ``max_streams`` are open (retained closed streams are dropped first to make room).
        """
        self._check_new(key)
        return self._add(key, snapshot=snapshot, resume_snapshot=resume_snapshot)

    def _check_new(self, key: str) -> None:
        """Raise unless a stream ``key`` may be registered now (see :meth:`create`)."""
        if self._shut:
            raise LimitExceeded("the broker is shutting down", limit="shutdown")
        if key in self._streams:
            raise StreamExists(f"stream {key!r} already exists")
        limit = self.config.max_streams
        if limit is not None and len(self._streams) >= limit:
            self._drop_retained(until=lambda: len(self._streams) < limit)
            if len(self._streams) >= limit:
                raise LimitExceeded(
                    f"{limit} streams are open; raise max_streams to allow more",
                    limit="max_streams",
                )

    def _add(
        self,
        key: str,
        *,
        snapshot: SnapshotFn | None,
        resume_snapshot: SnapshotFn | None,
        tap: Callable[[Event], None] | None = None,
    ) -> Stream:
        """Make and register a stream (limits already checked)."""
        stream = Stream(
            key,
            self.config,
            snapshot=snapshot,
            resume_snapshot=resume_snapshot,
            counters=self.counters,
            budget=self.budget,
            on_over_budget=self._relieve_budget,
            on_close=self._retain,
            subscriber_total=self._subscribers,
            tap=tap,
        )
        self._streams[key] = stream
        if self._keepalive_task is None:
            self._keepalive_task = asyncio.get_running_loop().create_task(
                self._keepalive(), name="broker keepalive"
            )
        return stream

    async def open(
        self, key: str, *, expected: bool = False, cursor: int | None = None
    ) -> Stream | None:
        """The stream to serve a subscriber of ``key``, if there is one.

        In memory that is :meth:`get`. A registry shared between nodes (see
        :class:`broker.redis_streams.RedisRegistry`) may have to find the stream
        elsewhere first: ``expected`` says the caller knows the stream is live (so a
        stream with no event yet is waited for rather than missing), and ``cursor`` is
        the subscriber's, which a mirror catches up to before answering.
        """
        return self._streams.get(key)

    async def start(self) -> None:
        """Connect to whatever the registry needs (nothing, in memory)."""

    async def aclose(self, timeout: float = 5.0) -> None:
        """Shut down (see :meth:`shutdown`); a shared registry first hands what it still
        holds to its backend, for at most ``timeout`` seconds."""
        self.shutdown()

    def get(self, key: str) -> Stream | None:
        """The open or retained stream under ``key``, if any."""
        return self._streams.get(key)

    def __contains__(self, key: str) -> bool:
        return key in self._streams

    def __iter__(self) -> Iterator[Stream]:
        return iter(list(self._streams.values()))

    def discard(self, key: str) -> None:
        """Drop a stream now, whatever its state (subscribers are dropped; they may resume)."""
        stream = self._streams.pop(key, None)
        handle = self._expiry.pop(key, None)
        if handle is not None:
            handle.cancel()
        if stream is not None:
            stream.discard()

    def check_subscribe(self, stream: Stream) -> None:
        """Raise :class:`LimitExceeded` if one more subscriber would break a limit
        (subscribers counted with the slots reserved by requests still starting)."""
        per_stream = self.config.max_subscribers_per_stream
        if per_stream is not None and stream.subscriber_count + stream.reserved >= per_stream:
            raise LimitExceeded(
                f"stream has {per_stream} subscribers; raise max_subscribers_per_stream",
                limit="max_subscribers_per_stream",
            )
        total = self.config.max_subscribers
        if total is not None and self._subscribers.n + self._reserved >= total:
            raise LimitExceeded(
                f"{total} subscribers are connected; raise max_subscribers",
                limit="max_subscribers",
            )

    def reserve(self, stream: Stream) -> Callable[[], None]:
        """Check the limits and hold one subscriber slot; returns its (idempotent) release.

        The SSE handler holds the slot while it sends headers (which may await), and
        releases it once the subscription exists or the request failed.
        """
        self.check_subscribe(stream)
        stream.reserved += 1
        self._reserved += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                stream.reserved -= 1
                self._reserved -= 1

        return release

    # -- retention and budget ----------------------------------------------------------

    def _retain(self, stream: Stream) -> None:
        if self._streams.get(stream.key) is not stream or self._shut:
            return
        loop = asyncio.get_running_loop()
        self._expiry[stream.key] = loop.call_later(self.config.retention, self._expire, stream.key)

    def _expire(self, key: str) -> None:
        self._expiry.pop(key, None)
        stream = self._streams.pop(key, None)
        if stream is not None:
            logger.debug("stream %r: retention over, dropped", key)
            stream.discard()

    def _drop_retained(self, until: Callable[[], bool]) -> None:
        """Drop closed streams, the longest-closed first, until ``until()`` is true."""
        retained = sorted(
            (s for s in self._streams.values() if s.closed and s.closed_at is not None),
            key=lambda s: s.closed_at or 0.0,
        )
        for stream in retained:
            if until():
                return
            self.discard(stream.key)

    def _relieve_budget(self, publishing: Stream) -> None:
        budget = self.budget
        self._drop_retained(until=lambda: not budget.over)
        if budget.over:
            # Live streams pay for their own growth: the publisher trims its oldest events.
            buffer = publishing.buffer
            while budget.over and len(buffer) > 1:
                buffer.evict(max(1, len(buffer) // 8))

    # -- introspection and lifecycle ---------------------------------------------------

    @property
    def subscriber_count(self) -> int:
        return self._subscribers.n

    def stats(self) -> RegistryStats:
        per_stream = tuple(s.stats() for s in self._streams.values())
        return RegistryStats(
            streams=len(per_stream),
            open_streams=sum(1 for s in per_stream if not s.closed),
            subscribers=self._subscribers.n,
            buffered_bytes=self.budget.used,
            per_stream=per_stream,
        )

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no subscriber is connected, at most ``timeout`` seconds.

        Used by graceful shutdown: once every stream is closed, subscribers finish on
        their own as they read the rest; a stalled one is cut off by the timeout.
        Returns whether the registry became idle.
        """
        try:
            async with asyncio.timeout(timeout):
                await self._subscribers.wait_zero()
        except TimeoutError:
            return False
        return True

    async def _keepalive(self) -> None:
        """One task for every subscriber of every stream: each interval, a ``: ping`` to
        the subscribers that were sent nothing during the previous one (no task or timer
        per subscriber)."""
        interval = self.config.keepalive
        while True:
            await asyncio.sleep(interval)
            for stream in list(self._streams.values()):
                stream.keepalive()

    def shutdown(self) -> None:
        """Cancel the keepalive task and every retention timer, and drop every stream.
        Idempotent."""
        self._shut = True
        if self._keepalive_task is not None:
            self._keepalive_task.cancel()
            self._keepalive_task = None
        for handle in self._expiry.values():
            handle.cancel()
        self._expiry.clear()
        for key in list(self._streams):
            self.discard(key)
