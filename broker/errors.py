"""Exceptions raised by the broker. Every one derives from :class:`BrokerError`."""

from __future__ import annotations


class BrokerError(Exception):
    """Base class of every error the broker raises."""


class InvalidCursor(BrokerError):
    """A cursor (``Last-Event-ID`` / ``last_event_id``) is not an event id of the stream.

    Either it is not a non-negative integer, or it is ahead of the stream's head.
    ``param`` names the parameter at fault (also ``format`` for an unknown framing).
    """

    def __init__(self, message: str, *, param: str = "last_event_id") -> None:
        super().__init__(message)
        self.param = param


class StreamNotFound(BrokerError):
    """No stream is registered (or retained) under the requested key."""


class StreamExists(BrokerError):
    """A stream with this key is already registered."""


class StreamClosed(BrokerError):
    """Publishing to a stream that has been closed."""


class InvalidEvent(BrokerError):
    """An event name or payload that cannot be framed safely as SSE."""


class LimitExceeded(BrokerError):
    """A limit of the broker (a :class:`~broker.config.BrokerConfig` setting) refused a
    subscription or a stream; applications keep their own limits' errors to themselves.

    ``limit`` names the setting that refused it, so the answer can say how to raise it.
    """

    def __init__(self, message: str, *, limit: str) -> None:
        super().__init__(message)
        self.limit = limit


class StreamMoved(BrokerError):
    """A conditional append found the stream elsewhere than expected: ``last`` is the id
    of the last event it holds (see ``RedisRegistry.append_final``'s ``expect_after``)."""

    def __init__(self, key: str, last: int) -> None:
        super().__init__(f"stream {key!r} holds events up to {last}")
        self.key = key
        self.last = last


class BackendUnavailable(BrokerError):
    """The shared backend (Redis) cannot be reached; retrying later may succeed."""
