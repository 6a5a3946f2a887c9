"""Connection hygiene of the hub's HTTP server: head timeout, connection cap, accept errors.

:class:`ConnectionGuard` wraps every connection aiohttp's low-level server makes (a thin
:class:`asyncio.Protocol` in front of aiohttp's ``RequestHandler``) and sees each request
start and end through its middleware (outermost, before authentication). The rules:

* **Request head.** A new connection has ``header_timeout`` seconds to send a complete
  request head; otherwise it is closed. Between two requests of a keep-alive connection
  aiohttp's ``keepalive_timeout`` (``HubConfig.idle_timeout``) bounds both the idle time
  and the time to send the next head. Neither applies while a request is in progress:
  a stream (SSE) is never cut by them.
* **Connection cap.** At most ``max_connections`` connections are open. A new one beyond
  it takes the place of the connection that has waited longest without a request in
  progress (a silent or slow client, or an idle keep-alive one): that one is closed,
  answered ``503`` first if it never completed a request. Requests in progress are never
  cut. Of the ``max_connections``, :func:`health_reserve` are kept for ``/healthz``:
  once ``max_connections - reserve`` requests are in progress, any other request is
  answered ``503`` (code ``connection_limit``, ``x-should-retry: true``). If every
  connection is busy, the new one is answered ``503`` and closed at once. Accepting waits
  while ``max_connections + ACCEPT_SLACK`` are open or being set up (a replaced
  connection's descriptor is released on a later turn of the loop), so the cap holds
  the descriptors in use, bursts included.
* **Accept errors.** When the process runs out of descriptors anyway, ``accept()`` fails:
  :class:`Listener` pauses accepting for a second and logs one line per interval with
  the number of failures (asyncio's own accept loop logs a traceback per failure, at a
  growing rate).

Everything runs on the event loop's thread; nothing here awaits except the middleware,
whose bookkeeping holds whether the request ends, fails or is cancelled.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import resource
import socket
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from .api.errors import error_response

__all__ = [
    "ConnectionGuard",
    "Listener",
    "default_max_connections",
    "health_reserve",
    "open_files_limit",
]

logger = logging.getLogger(__name__)

HEALTH_PATH = "/healthz"
ACCEPT_SLACK = 16
"""Connections accepted beyond ``max_connections`` before accepting waits for closes."""
_LIMIT_CODE = "connection_limit"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def open_files_limit() -> int | None:
    """The process's soft open-files limit (``RLIMIT_NOFILE``); ``None`` if unlimited."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return None if soft == resource.RLIM_INFINITY else int(soft)


def default_max_connections(limit: int | None) -> int | None:
    """Connections allowed under an open-files ``limit``: the limit minus a reserve for
    the hub's own descriptors (store, provider and Redis connections, files): a quarter
    of it, at least 32. ``None`` (no cap) when the limit is unlimited."""
    if limit is None:
        return None
    return max(1, limit - max(32, limit // 4))


def health_reserve(max_connections: int) -> int:
    """Connections kept for ``/healthz`` out of ``max_connections``: an eighth, at most 16."""
    return min(16, max_connections // 8)


def limit_response(max_connections: int) -> web.Response:
    """The ``503`` a request gets at the connection limit (safe to retry: nothing ran)."""
    response = error_response(
        503,
        f"the hub is at its connection limit ({max_connections} connections, "
        "set with --max-connections); retry shortly",
        type="server_error",
        param="max_connections",
        code=_LIMIT_CODE,
    )
    response.headers["x-should-retry"] = "true"
    response.headers["retry-after"] = "1"
    return response


def _raw_response(response: web.Response) -> bytes:
    """``response`` as bytes on the wire, ending the connection (for a connection that
    is refused before any request of it was read)."""
    body = response.body
    assert isinstance(body, bytes)
    lines = [f"HTTP/1.1 {response.status} {response.reason}"]
    lines += [f"{name}: {value}" for name, value in response.headers.items()]
    lines += [f"Content-Length: {len(body)}", "Connection: close", "", ""]
    return "\r\n".join(lines).encode("latin-1") + body


class _Connection(asyncio.Protocol):
    """One client connection: forwards everything to aiohttp's handler, tells the guard
    when it opens and closes, and closes itself if its first head is late."""

    __slots__ = (
        "_guard",
        "_head_tail",
        "_head_timer",
        "busy",
        "closed",
        "inner",
        "served",
        "transport",
    )

    def __init__(self, guard: ConnectionGuard, inner: RequestHandler) -> None:
        self._guard = guard
        self.inner = inner
        self.transport: asyncio.Transport | None = None
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_tail = b""
        """The last bytes received while the first head is awaited (its end may be split)."""
        self.busy = False
        """A request of it is in progress."""
        self.served = False
        """A request of it has started (its first head was complete)."""
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.inner.connection_made(transport)
        if self._guard.opened(self):
            loop = asyncio.get_running_loop()
            self._head_timer = loop.call_later(self._guard.header_timeout, self._head_late)

    def data_received(self, data: bytes) -> None:
        if self._head_timer is not None:
            # The head is complete once its blank line arrived: from then on its timer
            # has nothing to guard, however long a busy loop takes to start the handler.
            seen = self._head_tail + data
            if b"\r\n\r\n" in seen:
                self._cancel_head_timer()
            else:
                self._head_tail = seen[-3:]
        self.inner.data_received(data)

    def eof_received(self) -> None:
        self.inner.eof_received()  # None: the transport closes (aiohttp's behaviour)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._cancel_head_timer()
        self._guard.lost(self)
        self.inner.connection_lost(exc)

    def request_started(self) -> None:
        self.busy = True
        self.served = True
        self._cancel_head_timer()

    def refuse(self, payload: bytes | None) -> None:
        """Close it, writing ``payload`` first (if any)."""
        if self.transport is None or self.closed:
            return
        if payload is not None:
            self.transport.write(payload)
        self.transport.close()

    def _head_late(self) -> None:
        self._head_timer = None
        if not self.served and not self.closed:
            logger.debug("closing a connection that sent no complete request head in time")
            self.refuse(None)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None


class ConnectionGuard:
    """The rules of the module docstring for one server. ``max_connections=None``: no
    cap. Use :meth:`protocol_factory` as the listener's factory and put
    :attr:`middleware` first in the application."""

    def __init__(
        self,
        *,
        max_connections: int | None,
        header_timeout: float,
    ) -> None:
        self.max_connections = max_connections
        self.header_timeout = header_timeout
        self.reserve = 0 if max_connections is None else health_reserve(max_connections)
        self._open: dict[RequestHandler, _Connection] = {}
        self._waiting: dict[_Connection, None] = {}
        """Open connections without a request in progress, longest waiting first."""
        self._busy = 0
        self.on_room: Callable[[], None] | None = None
        """Called when a connection closes (the listener resumes accepting)."""
        self._refusal = (
            None if max_connections is None else _raw_response(limit_response(max_connections))
        )

    @property
    def open_count(self) -> int:
        return len(self._open)

    @property
    def busy_count(self) -> int:
        return self._busy

    def protocol_factory(self, inner: Callable[[], RequestHandler]) -> Callable[[], _Connection]:
        """A protocol factory for ``loop.create_server`` wrapping aiohttp's ``inner``."""

        def make() -> _Connection:
            return _Connection(self, inner())

        return make

    # -- connections ---------------------------------------------------------------------

    def opened(self, conn: _Connection) -> bool:
        """Count a new connection in; at the cap, close the longest-waiting one (or this
        one, if every connection is busy). False if ``conn`` itself was refused."""
        if self.max_connections is not None and len(self._open) >= self.max_connections:
            victim = next(iter(self._waiting), None)
            if victim is None:
                conn.refuse(self._refusal)
                return False
            self._waiting.pop(victim)
            victim.refuse(None if victim.served else self._refusal)
        self._open[conn.inner] = conn
        self._waiting[conn] = None
        return True

    def lost(self, conn: _Connection) -> None:
        self._open.pop(conn.inner, None)
        self._waiting.pop(conn, None)
        if self.on_room is not None:
            self.on_room()

    def may_accept(self, starting: int) -> bool:
        """Whether another connection may be accepted while ``starting`` accepted ones
        are not open yet: fewer than ``max_connections + ACCEPT_SLACK`` in all (the
        extra ones replace others or are refused, whose descriptors are only released
        on a later turn of the loop)."""
        limit = self.max_connections
        return limit is None or len(self._open) + starting < limit + ACCEPT_SLACK

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Marks the connection busy for the request's duration (its head timer stops);
        answers ``503`` beyond ``max_connections - reserve`` requests in progress, except
        ``/healthz``."""
        conn = self._open.get(request.protocol)
        if conn is None:  # not one of ours (the app served by another runner)
            return await handler(request)
        conn.request_started()
        self._waiting.pop(conn, None)
        self._busy += 1
        try:
            limit = self.max_connections
            if (
                limit is not None
                and self._busy > limit - self.reserve
                and request.path != HEALTH_PATH
            ):
                response = limit_response(limit)
                response.force_close()
                return response
            return await handler(request)
        finally:
            self._busy -= 1
            conn.busy = False
            if not conn.closed:
                self._waiting[conn] = None


class Listener:
    """The listening sockets of one server, with an accept loop of its own.

    asyncio's ``create_server`` logs every failed ``accept()`` with its traceback, and on
    Linux schedules one retry per failure (up to the backlog's length per wake-up), so
    that the failures multiply while descriptors are short (tens of thousands a second,
    megabytes of log). Here a failure for lack of resources (``EMFILE``, ``ENFILE``,
    ``ENOBUFS``, ``ENOMEM``) stops accepting on that socket for ``retry_delay`` seconds,
    once, and is logged as one line, then one line per ``log_interval`` with the number
    of failures since. Pending connections wait in the kernel's backlog meanwhile.

    Accepting also waits (the socket unwatched, no spinning) while ``guard`` says there
    are too many connections open or being set up (:meth:`ConnectionGuard.may_accept`),
    and resumes when one closes. Each accepted socket becomes a transport through
    ``loop.connect_accepted_socket`` with ``factory`` as its protocol factory.
    Everything runs on the loop's thread.
    """

    def __init__(
        self,
        factory: Callable[[], asyncio.Protocol],
        guard: ConnectionGuard,
        *,
        backlog: int = 512,
        retry_delay: float = 1.0,
        log_interval: float = 5.0,
    ) -> None:
        self._factory = factory
        self._guard = guard
        self.backlog = backlog
        self.retry_delay = retry_delay
        self.log_interval = log_interval
        self.sockets: list[socket.socket] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._watched: set[socket.socket] = set()
        """Sockets the loop watches for connections to accept."""
        self._paused: dict[socket.socket, asyncio.TimerHandle] = {}
        """Sockets resting after an accept error, with their retry."""
        self._holding = False
        """Accepting waits for connections to close (see ``ConnectionGuard.may_accept``)."""
        self._starting: set[asyncio.Task[object]] = set()
        self._failures = 0
        """Failed accepts not logged yet (while :attr:`_log_timer` runs)."""
        self._last_error = ""
        self._log_timer: asyncio.TimerHandle | None = None

    @property
    def port(self) -> int:
        return int(self.sockets[0].getsockname()[1])

    async def start(self, host: str | None, port: int) -> None:
        """Bind every address ``host`` resolves to (``port`` 0: one free port for all)
        and start accepting."""
        loop = self._loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        try:
            for family, kind, proto, _name, address in dict.fromkeys(infos):
                sock = socket.socket(family, kind, proto)
                self.sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                if port == 0 and len(self.sockets) > 1:
                    address = (address[0], self.port, *address[2:])
                sock.bind(address)
                sock.listen(self.backlog)
                sock.setblocking(False)
        except BaseException:
            self.close()
            raise
        self._guard.on_room = self._room
        for sock in self.sockets:
            self._watch(sock)

    def close(self) -> None:
        """Stop accepting and close the sockets (connections already made stay)."""
        self._guard.on_room = None
        for sock in self.sockets:
            self._unwatch(sock)
            sock.close()
        for handle in self._paused.values():
            handle.cancel()
        self._paused.clear()
        self.sockets = []
        if self._log_timer is not None:
            self._log_timer.cancel()
            self._log_timer = None
            self._log_failures()

    async def aclose(self) -> None:
        """:meth:`close`, then wait until the connections accepted are set up (they are
        then the server's to close)."""
        self.close()
        if self._starting:
            await asyncio.gather(*self._starting, return_exceptions=True)

    def _watch(self, sock: socket.socket) -> None:
        if self._loop is not None and sock not in self._watched and sock.fileno() >= 0:
            self._loop.add_reader(sock.fileno(), self._accept, sock)
            self._watched.add(sock)

    def _unwatch(self, sock: socket.socket) -> None:
        if self._loop is not None and sock in self._watched:
            self._loop.remove_reader(sock.fileno())
            self._watched.discard(sock)

    def _room(self) -> None:
        """A connection closed: resume accepting if it was waiting for that."""
        if self._holding and self._guard.may_accept(len(self._starting)):
            self._holding = False
            for sock in self.sockets:
                if sock not in self._paused:
                    self._watch(sock)

    def _accept(self, sock: socket.socket) -> None:
        loop = self._loop
        assert loop is not None
        for _ in range(self.backlog):
            if not self._guard.may_accept(len(self._starting)):
                self._holding = True
                for listening in self.sockets:
                    self._unwatch(listening)
                return
            try:
                conn, _address = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                self._pause(sock, exc)
                return
            conn.setblocking(False)
            task = loop.create_task(loop.connect_accepted_socket(self._factory, conn))
            self._starting.add(task)
            task.add_done_callback(self._started)

    def _started(self, task: asyncio.Task[object]) -> None:
        self._starting.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.debug("a connection failed as it was made: %s", task.exception())
        self._room()

    def _pause(self, sock: socket.socket, exc: OSError) -> None:
        """Stop accepting on ``sock`` for ``retry_delay`` (the error is counted); errors
        not about resources are logged in full once, as asyncio would."""
        loop = self._loop
        assert loop is not None
        self._unwatch(sock)
        self._paused[sock] = loop.call_later(self.retry_delay, self._resume, sock)
        if exc.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
            logger.error("accept() failed on %s", sock.getsockname(), exc_info=exc)
            return
        self._last_error = str(exc)
        if self._log_timer is not None:
            self._failures += 1
            return
        logger.error(
            "cannot accept connections: %s (%d connections open, max %s): raise the "
            "open-files limit or lower --max-connections; retrying every %g s, further "
            "failures are counted",
            exc,
            self._guard.open_count,
            self._guard.max_connections,
            self.retry_delay,
        )
        self._failures = 0
        self._log_timer = loop.call_later(self.log_interval, self._end_interval)

    def _resume(self, sock: socket.socket) -> None:
        self._paused.pop(sock, None)
        if not self._holding:
            self._watch(sock)

    def _end_interval(self) -> None:
        """Log the interval's failures; keep counting while they go on."""
        self._log_timer = None
        if self._failures and self._loop is not None:
            self._log_failures()
            self._log_timer = self._loop.call_later(self.log_interval, self._end_interval)

    def _log_failures(self) -> None:
        if not self._failures:
            return
        logger.error(
            "cannot accept connections: %s (%d more failed accept() in %g s; "
            "%d connections open, max %s)",
            self._last_error,
            self._failures,
            self.log_interval,
            self._guard.open_count,
            self._guard.max_connections,
        )
        self._failures = 0
