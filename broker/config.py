"""Broker settings, one immutable object passed to the registry and the SSE handler."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import InvalidEvent
from .events import check_name

__all__ = ["DEFAULT_GAP_EVENT", "BrokerConfig", "RedisSettings"]

KiB = 1024
MiB = 1024 * KiB

DEFAULT_GAP_EVENT = "stream.gap"
"""The gap event's name unless the embedding application names its own."""


@dataclass(frozen=True, slots=True)
class BrokerConfig:
    """Limits and timings of the broker. Every field has a sensible default."""

    max_events_per_stream: int = 10_000
    """Replay buffer cap, in events, of each stream."""
    max_bytes_per_stream: int = 8 * MiB
    """Replay buffer cap, in bytes, of each stream."""
    max_total_bytes: int | None = 512 * MiB
    """Process-wide cap on bytes held by all replay buffers (``None``: unbounded). When it
    is exceeded, retained (closed) streams are dropped oldest first, then the publishing
    stream evicts its own oldest events."""
    retention: float = 300.0
    """Seconds a closed stream stays available for late joiners and resumes."""
    max_streams: int | None = None
    """Streams open or retained at once (``None``: unbounded). Retained streams are
    dropped oldest first to make room before a new stream is refused."""
    max_subscribers_per_stream: int | None = None
    max_subscribers: int | None = None
    """Subscribers across all streams (``None``: unbounded)."""
    keepalive: float = 15.0
    """Seconds without a write after which a subscriber is sent a ``: ping`` comment."""
    retry_ms: int | None = 1000
    """Sent as the SSE ``retry:`` field at the start of every subscription: how long a
    browser ``EventSource`` waits before reconnecting (browsers default to ~3 s). A line
    that joins the first frame's block, so parsers that cannot take a lone ``retry:``
    block (the openai SDK's) are unaffected. ``None`` sends none."""
    high_water: int = 256 * KiB
    """A subscriber whose transport buffer holds more than this is paused until it drains."""
    stall_timeout: float = 30.0
    """A paused subscriber that does not drain within this many seconds is disconnected
    (it can resume with its cursor)."""

    gap_event: str = DEFAULT_GAP_EVENT
    """Name of the synthetic event that tells a subscriber it fell behind the replay
    buffer (payload ``{"from": <its cursor>, "to": <first id it gets next>}``), followed
    by the publisher's snapshot. The application names it in its own vocabulary."""

    def __post_init__(self) -> None:
        try:
            check_name(self.gap_event)
        except InvalidEvent as exc:
            raise ValueError(f"gap_event: {exc}") from None
        for name in ("max_events_per_stream", "max_bytes_per_stream", "high_water"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        for name in ("retention", "keepalive", "stall_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")


@dataclass(frozen=True, slots=True)
class RedisSettings:
    """Where and how a :class:`~broker.redis_streams.RedisRegistry` uses Redis."""

    url: str
    prefix: str = "agentstream:"
    block: float = 5.0
    """Seconds one blocking read (a mirror's ``XREAD``, a node's inbox) waits before its
    reader checks on itself. Must be below ``socket_timeout``."""
    socket_timeout: float = 30.0
    """Seconds the client waits for any reply before it counts the connection as dead
    (redis-py's own default, 5 s, would cut every idle 5 s blocking read)."""
    connect_timeout: float = 5.0
    """Seconds to connect to Redis."""
    max_connections: int = 100
    """Connections of the node's shared client at most (its own readers and outbox have
    theirs); a command finding none free waits for one."""
    linger: float = 0.001
    """The publisher writes to Redis at most once per ``linger`` seconds (everything
    published meanwhile in one write), and a mirror reader waits as long after a read that
    returned events: a bound on the cost under load, for at most twice this much more
    latency on other nodes. The publisher's own subscribers are served at once."""
    streams_per_reader: int = 256
    """Streams one mirror reader covers with each blocking read (a node starts as many
    readers as it needs)."""
    open_ttl: float = 24 * 3600.0
    """Expiry of an open stream's key (refreshed by nothing: a stream should end first)."""
    mirror_idle: float = 30.0
    """A mirror without subscribers for this long stops reading and is dropped."""
    catch_up: float = 2.0
    """Seconds a subscriber whose cursor is ahead of a mirror waits for it (the publisher
    serves its own subscribers before its outbox reaches Redis) before a 400."""
