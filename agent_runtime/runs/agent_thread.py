"""A synchronous agent's own thread, and how an agent's exit or exception is described.

Cancellation: awaiting :func:`in_daemon_thread` can be cancelled; the thread itself stops
at the agent's next Environment call (which raises ``RunCancelled``), never before. An agent
that never makes one keeps its thread running after its run ended: :class:`AgentThreads`
reports such *orphaned* threads (nothing in this process can stop them).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from ..errors import AgentRuntimeError
from ..objects import RunStatus

__all__ = [
    "AgentExit",
    "AgentThreads",
    "Orphan",
    "describe",
    "exit_outcome",
    "in_daemon_thread",
]

logger = logging.getLogger(__name__)

E = TypeVar("E")


@dataclass(slots=True)
class _Entry:
    agent: str
    ended_at: float | None = None
    """Monotonic time the run ended while the thread still ran agent code."""


@dataclass(frozen=True, slots=True)
class Orphan:
    """An agent thread still running agent code after its run ended."""

    run_id: str
    agent: str
    seconds_since_run_ended: float


class AgentThreads:
    """The synchronous agents' threads that are running agent code, by run id.

    Thread-safe: a thread enters before it starts and leaves (from itself) as soon as the
    agent's code returns or raises, before its run is told; the loop calls
    :meth:`run_ended` once the run has ended. A thread still in here then is *orphaned*
    (it ignored the cancel, or the run expired or the hub is shutting down): logged once,
    and counted by :meth:`orphans` until it leaves.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._running: dict[str, _Entry] = {}

    def enter(self, run_id: str, agent: str) -> None:
        with self._lock:
            self._running[run_id] = _Entry(agent)

    def leave(self, run_id: str) -> None:
        with self._lock:
            entry = self._running.pop(run_id, None)
        if entry is not None and entry.ended_at is not None:
            logger.info(
                "run %s: the orphaned thread of agent %s returned %.1fs after its run ended",
                run_id,
                entry.agent,
                self._clock() - entry.ended_at,
            )

    def run_ended(self, run_id: str) -> bool:
        """The run has ended: is its agent's thread orphaned (then logged)?"""
        with self._lock:
            entry = self._running.get(run_id)
            if entry is None or entry.ended_at is not None:
                return False
            entry.ended_at = self._clock()
        logger.warning(
            "run %s ended but its agent %s is still running in its thread: the agent's "
            "thread ignores the cancel (it makes no Environment call); only --isolation "
            "process can stop it",
            run_id,
            entry.agent,
        )
        return True

    def orphans(self) -> list[Orphan]:
        """The orphaned threads, longest orphaned first."""
        now = self._clock()
        with self._lock:
            found = [
                Orphan(run_id, e.agent, now - e.ended_at)
                for run_id, e in self._running.items()
                if e.ended_at is not None
            ]
        return sorted(found, key=lambda o: -o.seconds_since_run_ended)


async def in_daemon_thread(
    fn: Callable[[E], None],
    env: E,
    name: str,
    *,
    threads: AgentThreads | None = None,
    agent: str = "",
) -> None:
    """Run a synchronous agent in its own daemon thread and await its end.

    A daemon thread, not an executor's: an agent stuck outside any Environment call must
    not keep the process alive at exit. Cancelling the await leaves the thread to stop at
    its next Environment call (which raises ``RunCancelled``). ``threads``: where the
    thread is tracked (under ``name``, the run's id) while it runs ``agent``'s code.
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
        finally:
            if threads is not None:  # before the run hears of it: never a false orphan
                threads.leave(name)
        try:
            loop.call_soon_threadsafe(settle, error)
        except RuntimeError:  # the loop is closed: the process is exiting
            pass

    context = contextvars.copy_context()  # the run's ids follow it into the thread
    thread = threading.Thread(target=context.run, args=(target,), name=f"agent {name}", daemon=True)
    if threads is not None:
        threads.enter(name, agent)
    try:
        thread.start()
    except BaseException:
        if threads is not None:
            threads.leave(name)
        raise
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
