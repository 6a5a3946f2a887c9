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

from .config import BrokerConfig
from .cursor import check_cursor
from .errors import (
    BackendUnavailable,
    BrokerError,
    InvalidCursor,
    InvalidEvent,
    LimitExceeded,
    StreamClosed,
    StreamExists,
    StreamMoved,
    StreamNotFound,
)
from .events import Event, Framing
from .registry import Registry
from .sse import (
    SSE_HEADERS,
    StreamQuery,
    at_end_response,
    make_stream_handler,
    parse_stream_query,
    replay_response,
    serve_stream,
)
from .stream import Stream
from .types import Counters, SnapshotFn, SnapshotItem

# What callers use: the registry and its streams, events and their framing, the SSE
# handler, the errors the broker raises. Internals (buffers, frames, subscriptions, …)
# are imported from their modules.
__all__ = [
    "SSE_HEADERS",
    "BackendUnavailable",
    "BrokerConfig",
    "BrokerError",
    "Counters",
    "Event",
    "Framing",
    "InvalidCursor",
    "InvalidEvent",
    "LimitExceeded",
    "Registry",
    "SnapshotFn",
    "SnapshotItem",
    "Stream",
    "StreamClosed",
    "StreamExists",
    "StreamMoved",
    "StreamNotFound",
    "StreamQuery",
    "at_end_response",
    "check_cursor",
    "make_stream_handler",
    "parse_stream_query",
    "replay_response",
    "serve_stream",
]
