"""A synchronous agent's own thread, and how an agent's exit or exception is described.

Cancellation: awaiting :func:`in_daemon_thread` can be cancelled; the thread itself stops
at the agent's next Environment call (which raises ``RunCancelled``), never before.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Callable
from typing import TypeVar

from ..errors import AgentRuntimeError
from ..objects import RunStatus

__all__ = ["AgentExit", "describe", "exit_outcome", "in_daemon_thread"]

E = TypeVar("E")


async def in_daemon_thread(fn: Callable[[E], None], env: E, name: str) -> None:
    """Run a synchronous agent in its own daemon thread and await its end.

    A daemon thread, not an executor's: an agent stuck outside any Environment call must
    not keep the process alive at exit. Cancelling the await leaves the thread to stop at
    its next Environment call (which raises ``RunCancelled``).
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def settle(error: BaseException | None) -> None:
        if done.done():
            return
        if error is None:
            done.set_result(None)
        else:
            done.set_exception(error)

    def target() -> None:
        error: BaseException | None = None
        try:
            fn(env)
        except (SystemExit, KeyboardInterrupt) as exc:
            error = AgentExit(exc)
        except BaseException as exc:  # handed to the loop, which decides the run's end
            error = exc
        try:
            loop.call_soon_threadsafe(settle, error)
        except RuntimeError:  # the loop is closed: the process is exiting
            pass

    context = contextvars.copy_context()  # the run's ids follow it into the thread
    threading.Thread(target=context.run, args=(target,), name=f"agent {name}", daemon=True).start()
    await done


class AgentExit(Exception):
    """A synchronous agent's ``SystemExit``/``KeyboardInterrupt``, carried to the loop as an
    ordinary exception (raised there as itself it would stop the event loop)."""

    def __init__(self, original: BaseException) -> None:
        super().__init__(original)
        self.original = original


def exit_outcome(exc: BaseException) -> tuple[RunStatus, str | None]:
    """How an agent's exit ends its run: status 0 or ``None`` completes it."""
    original = exc.original if isinstance(exc, AgentExit) else exc
    if isinstance(original, SystemExit) and original.code in (0, None):
        return "completed", None
    return "failed", f"the agent exited ({describe(original)})"


def describe(exc: BaseException) -> str:
    """An exception as a run's ``last_error`` message (never a traceback)."""
    try:
        text = str(exc)
    except Exception:  # an exception that cannot be printed still ends its run
        text = f"<unprintable {type(exc).__name__}>"
    if isinstance(exc, AgentRuntimeError):
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
