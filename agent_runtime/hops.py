"""Calls handed to an event loop from other threads (synchronous agents), batched.

Every Environment call of a synchronous agent crosses from the agent's thread to the
loop that owns the run. :func:`submit` is ``asyncio.run_coroutine_threadsafe`` with one
difference: the calls of every thread go into the loop's :class:`LoopInbox`, and only
the first call into an empty inbox wakes the loop (``call_soon_threadsafe``); the loop
then takes everything waiting in one turn. Many agent threads calling at once (a burst
of runs, a worker's notes) cost one wakeup and one loop turn per batch, not one per call.

Concurrency: :meth:`LoopInbox.call` and :func:`submit` are thread-safe and never block
on the loop (they take a short lock). Calls run on the loop in the order they were put.
Each coroutine runs as a task in a copy of its caller's context (its run's logging
context), as with ``run_coroutine_threadsafe``. Cancellation is that of
``run_coroutine_threadsafe``: cancelling the returned
``concurrent.futures.Future`` cancels the task running the coroutine (on the loop); a
future cancelled before the loop took it never starts its coroutine. A call that raises
is logged and does not stop the others.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import logging
import threading
import weakref
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["LoopInbox", "inbox", "submit"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

_inboxes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LoopInbox] = (
    weakref.WeakKeyDictionary()
)
_inboxes_lock = threading.Lock()


class LoopInbox:
    """Callables waiting to run on one loop; drained all at once, in one loop turn."""

    __slots__ = ("_loop", "_lock", "_items", "_scheduled", "drains", "__weakref__")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = weakref.ref(loop)  # (the table of inboxes lets go of a dropped loop)
        self._lock = threading.Lock()
        self._items: list[tuple[Callable[..., object], tuple[Any, ...]]] = []
        self._scheduled = False
        self.drains = 0
        """Loop turns that took calls (for tests and metrics)."""

    def call(self, fn: Callable[..., object], *args: Any) -> None:
        """Run ``fn(*args)`` on the loop soon (from any thread). Raises ``RuntimeError``
        if the loop is closed (nothing is queued then)."""
        with self._lock:
            self._items.append((fn, args))
            if self._scheduled:
                return
            self._scheduled = True
        try:
            loop = self._loop()
            if loop is None:
                raise RuntimeError("the event loop is gone")
            loop.call_soon_threadsafe(self._drain)
        except RuntimeError:  # the loop is closed
            with self._lock:
                self._scheduled = False
                self._items.clear()
            raise

    def _drain(self) -> None:
        with self._lock:
            items, self._items = self._items, []
            self._scheduled = False
        self.drains += 1
        for fn, args in items:
            try:
                fn(*args)
            except Exception:
                logger.exception("a call handed to the event loop failed")


def inbox(loop: asyncio.AbstractEventLoop) -> LoopInbox:
    """The inbox of ``loop`` (one per loop, made on first use; from any thread)."""
    found = _inboxes.get(loop)
    if found is None:
        with _inboxes_lock:
            found = _inboxes.get(loop)
            if found is None:
                found = _inboxes[loop] = LoopInbox(loop)
    return found


def submit(
    coro: Coroutine[Any, Any, T], loop: asyncio.AbstractEventLoop
) -> concurrent.futures.Future[T]:
    """Run ``coro`` on ``loop`` (called from another thread); its future (see the module
    docstring for batching and cancellation)."""
    future: concurrent.futures.Future[T] = concurrent.futures.Future()
    context = contextvars.copy_context()  # the caller's (its run's logging context)
    try:
        inbox(loop).call(_start, coro, future, loop, context)
    except RuntimeError:
        coro.close()
        raise
    return future


def _start(
    coro: Coroutine[Any, Any, T],
    future: concurrent.futures.Future[T],
    loop: asyncio.AbstractEventLoop,
    context: contextvars.Context,
) -> None:
    if future.cancelled():
        coro.close()
        return
    try:
        task = loop.create_task(coro, context=context)
    except BaseException as exc:
        coro.close()
        if future.set_running_or_notify_cancel():
            future.set_exception(exc)
        raise

    def settle(done: asyncio.Task[T]) -> None:
        if future.cancelled():
            return
        if done.cancelled():
            future.cancel()
            future.set_running_or_notify_cancel()
            return
        if not future.set_running_or_notify_cancel():
            return
        error = done.exception()
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(done.result())

    def cancel_task(cancelled: concurrent.futures.Future[T]) -> None:
        if cancelled.cancelled() and not task.done():
            loop.call_soon_threadsafe(task.cancel)

    task.add_done_callback(settle)
    future.add_done_callback(cancel_task)
