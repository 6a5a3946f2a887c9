"""agentstream's broker: in-memory per-key event streams fanned out over Server-Sent Events.

Pure pub/sub. It knows nothing about agents: a publisher creates a stream, publishes
named JSON events into it and closes it; any number of subscribers follow it over SSE,
join late, resume from a cursor, and fall behind without costing anyone else.

Layers, from the inside out:

* ``events``, ``buffer``, ``cursor`` — pure, synchronous (the sans-I/O core);
* ``stream``, ``registry`` — asyncio, no sockets; publishing never awaits;
* ``sse`` — the aiohttp handler;
* ``redis_streams`` — the same registry shared by several nodes through Redis Streams
  (imported on its own: ``from broker.redis_streams import RedisRegistry``).
"""

from .buffer import ByteBudget, Gap, ReplayBuffer
from .config import BrokerConfig
from .cursor import parse_cursor
from .errors import (
    BackendUnavailable,
    BrokerError,
    InvalidCursor,
    InvalidEvent,
    LimitExceeded,
    StreamClosed,
    StreamExists,
    StreamNotFound,
)
from .events import DONE_FRAME, PING_FRAME, Event, Framing, encode_frame
from .registry import Registry, RegistryStats
from .sse import SSE_HEADERS, broker_error_response, make_stream_handler, serve_stream
from .stream import GAP_EVENT, Stream, Subscription, SubState
from .types import Projection, ProjectionFactory, Sink, SnapshotFn, SnapshotItem, StreamStats

__all__ = [
    "DONE_FRAME",
    "GAP_EVENT",
    "PING_FRAME",
    "SSE_HEADERS",
    "BackendUnavailable",
    "BrokerConfig",
    "BrokerError",
    "ByteBudget",
    "Counters",
    "Event",
    "Framing",
    "Gap",
    "InvalidCursor",
    "InvalidEvent",
    "LimitExceeded",
    "Projection",
    "ProjectionFactory",
    "Registry",
    "RegistryStats",
    "ReplayBuffer",
    "Sink",
    "SnapshotFn",
    "SnapshotItem",
    "Stream",
    "StreamClosed",
    "StreamExists",
    "StreamNotFound",
    "StreamStats",
    "SubState",
    "Subscription",
    "broker_error_response",
    "encode_frame",
    "make_stream_handler",
    "parse_cursor",
    "serve_stream",
]
