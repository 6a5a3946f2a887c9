"""Two nodes on one Redis behind the one-registry interface the HTTP tests use: streams
are *created and published* on node A and *served* by node B, which mirrors them from
Redis. Running a test written for :class:`broker.Registry` against it checks that a
subscriber on another node sees exactly what a local one would.

The publisher's snapshot functions reach node B through its projection factory (the
tests' snapshots are functions of the event id alone, so no state is folded).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from broker import BrokerConfig, SnapshotFn, SnapshotItem, Stream
from broker.redis_streams import RedisRegistry, RedisSettings

__all__ = ["SplitRegistry"]


class _Recorded:
    """A projection answering with the publisher's own snapshot functions."""

    def __init__(self, snapshot: SnapshotFn | None, resume: SnapshotFn | None) -> None:
        self._snapshot = snapshot
        self._resume = resume or snapshot

    def record(self, event_id: int, name: str, payload: Any) -> None:
        pass

    def snapshot(self, at: int) -> Sequence[SnapshotItem]:
        return self._snapshot(at) if self._snapshot is not None else []

    def resume_snapshot(self, at: int) -> Sequence[SnapshotItem]:
        return self._resume(at) if self._resume is not None else []


class SplitRegistry:
    def __init__(self, config: BrokerConfig | None, *, url: str, prefix: str) -> None:
        self._fns: dict[str, tuple[SnapshotFn | None, SnapshotFn | None]] = {}
        settings = RedisSettings(url, prefix=prefix, block=0.5)
        self.publisher = RedisRegistry(config, settings)
        self.server = RedisRegistry(
            config, settings, projection=lambda key: _Recorded(*self._fns.get(key, (None, None)))
        )
        self.config = self.server.config

    def create(
        self,
        key: str,
        *,
        snapshot: SnapshotFn | None = None,
        resume_snapshot: SnapshotFn | None = None,
    ) -> Stream:
        self._fns[key] = (snapshot, resume_snapshot)
        return self.publisher.create(key, snapshot=snapshot, resume_snapshot=resume_snapshot)

    async def open(
        self, key: str, *, expected: bool = False, cursor: int | None = None
    ) -> Stream | None:
        # What node A published before the request was sent is in Redis by then.
        await self.publisher.flushed()
        return await self.server.open(key, expected=expected, cursor=cursor)

    def discard(self, key: str) -> None:
        self.publisher.discard(key)
        self.server.discard(key)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.server, name)

    def shutdown(self) -> None:
        self.publisher.shutdown()
        self.server.shutdown()

    async def aclose(self, timeout: float = 5.0) -> None:
        await self.publisher.aclose(timeout)
        await self.server.aclose(timeout)
