"""A watchdog on the event loop: stalls (the loop running no callback for too long) are
counted, timed, attributed to a run when that can be known, and logged.

Two parts:

* :class:`StallTracker`, the sans-I/O core: fed heartbeat timestamps (and, from the
  watcher, the time it looks), it decides when a stall is under way, how long it lasted,
  and the worst stall of a recent window. Plain synchronous code on a clock given by the
  caller; not thread-safe on its own (:class:`LoopWatchdog` guards it with a lock).
* :class:`LoopWatchdog`, the thin layer: a heartbeat callback re-armed on the loop every
  ``threshold / 4`` seconds, and a daemon watcher thread that notices a heartbeat older
  than ``threshold`` *while the stall is happening*, so it can see which task is current
  and which agent code is at the top of the loop thread's stack, and log it. The stall's
  full duration is recorded when the heartbeat resumes.

A stall's duration is the time between two heartbeats: an upper bound of the time the
loop ran no callback, at most ``threshold / 4`` longer than the blocking call itself.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType

__all__ = ["STALL_BUCKETS", "LoopWatchdog", "Stall", "StallTracker"]

logger = logging.getLogger(__name__)

STALL_BUCKETS: tuple[float, ...] = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
"""Upper bounds (seconds) of the stall-duration histogram's buckets (``+Inf`` is implied)."""

RECENT_WINDOW = 300.0
"""Seconds over which :meth:`StallTracker.worst_recent` looks back."""


@dataclass(frozen=True, slots=True)
class Culprit:
    """What the loop was running when the watcher looked (each part may be unknown)."""

    run_id: str | None = None
    task: str | None = None
    """The current task's name."""
    where: str | None = None
    """``file:line`` of the agent code at the top of the loop thread's stack."""

    def describe(self) -> str:
        parts = []
        if self.run_id is not None:
            parts.append(f"in run {self.run_id}")
        elif self.task is not None:
            parts.append(f"in task {self.task!r}")
        else:
            parts.append("in no known run")
        if self.where is not None:
            parts.append(f"agent code at {self.where}")
        return ", ".join(parts)


@dataclass(frozen=True, slots=True)
class Stall:
    """One stall that has ended."""

    ended: float
    """Clock time its end was observed (the heartbeat that resumed)."""
    duration: float
    culprit: Culprit | None
    """What the watcher saw during it (``None``: it did not look in time)."""


@dataclass(slots=True)
class StallTracker:
    """Decides stalls from heartbeats. Times are seconds on one monotonic clock.

    ``beat(now)`` is called by each heartbeat; a gap since the previous one longer than
    ``threshold`` is a stall, returned (and counted) by that beat. ``overdue(now)`` tells
    the watcher that a stall is under way and has not been looked at yet; ``noticed``
    records what it saw, which the stall carries when it ends.
    """

    threshold: float
    last_beat: float
    window: float = RECENT_WINDOW
    buckets: tuple[float, ...] = STALL_BUCKETS
    count: int = 0
    """Stalls ended so far."""
    total_seconds: float = 0.0
    bucket_counts: list[int] = field(default_factory=list)
    """Stalls per bucket (not cumulative); one more than ``buckets``, for ``+Inf``."""
    _recent: deque[Stall] = field(default_factory=deque)
    _culprit: Culprit | None = None

    def __post_init__(self) -> None:
        if self.threshold <= 0:
            raise ValueError("threshold must be positive")
        self.bucket_counts = [0] * (len(self.buckets) + 1)

    @property
    def interval(self) -> float:
        """How often the heartbeat should run."""
        return self.threshold / 4

    def beat(self, now: float) -> Stall | None:
        """A heartbeat ran at ``now``: the stall it ends, if the gap was one."""
        gap = now - self.last_beat
        self.last_beat = now
        culprit, self._culprit = self._culprit, None
        if gap <= self.threshold:
            return None
        stall = Stall(ended=now, duration=gap, culprit=culprit)
        self.count += 1
        self.total_seconds += gap
        self.bucket_counts[bisect.bisect_left(self.buckets, gap)] += 1
        self._recent.append(stall)
        self._prune(now)
        return stall

    def deadline(self) -> float:
        """When the current gap becomes a stall."""
        return self.last_beat + self.threshold

    def overdue(self, now: float) -> bool:
        """A stall is under way at ``now`` and nothing has been noticed about it yet."""
        return self._culprit is None and now - self.last_beat > self.threshold

    def noticed(self, culprit: Culprit) -> None:
        """Record what the loop was running during the stall under way."""
        self._culprit = culprit

    def cumulative_buckets(self) -> list[tuple[float, int]]:
        """``(upper bound, stalls at most that long)``, ending with ``+Inf``."""
        result, running = [], 0
        for bound, n in zip((*self.buckets, float("inf")), self.bucket_counts, strict=True):
            running += n
            result.append((bound, running))
        return result

    def worst_recent(self, now: float) -> float:
        """The longest stall of the last ``window`` seconds, one under way included."""
        self._prune(now)
        worst = max((s.duration for s in self._recent), default=0.0)
        ongoing = now - self.last_beat
        return max(worst, ongoing) if ongoing > self.threshold else worst

    def _prune(self, now: float) -> None:
        while self._recent and self._recent[0].ended < now - self.window:
            self._recent.popleft()


RunOfTask = Callable[["asyncio.Task[object]"], "str | None"]
IsAgentFile = Callable[[str], bool]


class LoopWatchdog:
    """Watches one event loop from a daemon thread (see the module's docstring).

    ``run_of_task`` maps a task to its run's id (``None``: not a run's), and
    ``is_agent_file`` tells agent code from the hub's by a frame's file name; both are
    called from the watcher thread while the loop is blocked and must only read.

    :meth:`start` must be called on the loop; :meth:`stop` (idempotent) cancels the
    heartbeat and joins the thread. Counters are read from any thread under the lock.
    """

    def __init__(
        self,
        threshold: float,
        *,
        run_of_task: RunOfTask,
        is_agent_file: IsAgentFile,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._threshold = threshold
        self._run_of_task = run_of_task
        self._is_agent_file = is_agent_file
        self._clock = clock
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._tracker: StallTracker | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._thread: threading.Thread | None = None

    @property
    def enabled(self) -> bool:
        return self._threshold > 0

    @property
    def running(self) -> bool:
        """Its watcher thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Arm the heartbeat on the running loop and start the watcher thread (no-op if
        the threshold is 0 or it is already started)."""
        if not self.enabled or self._thread is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._tracker = StallTracker(self._threshold, self._clock())
        self._handle = self._loop.call_later(self._tracker.interval, self._beat)
        self._thread = threading.Thread(
            target=self._watch, name="agentstream loop watchdog", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Cancel the heartbeat and join the watcher thread. Idempotent."""
        self._stopping.set()
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            if self._thread.is_alive():  # a log handler stuck: it is a daemon thread
                logger.warning("the event-loop watchdog thread did not stop")

    # -- figures (any thread) ------------------------------------------------------------

    def stalls(self) -> int:
        with self._lock:
            return 0 if self._tracker is None else self._tracker.count

    def histogram(self) -> tuple[list[tuple[float, int]], float]:
        """Cumulative buckets and the sum of durations."""
        with self._lock:
            tracker = self._tracker
            if tracker is None:
                return [(b, 0) for b in (*STALL_BUCKETS, float("inf"))], 0.0
            return tracker.cumulative_buckets(), tracker.total_seconds

    def worst_recent(self) -> float:
        with self._lock:
            return 0.0 if self._tracker is None else self._tracker.worst_recent(self._clock())

    # -- the loop side -------------------------------------------------------------------

    def _beat(self) -> None:
        tracker, loop = self._tracker, self._loop
        assert tracker is not None and loop is not None
        if self._stopping.is_set():
            return
        with self._lock:
            stall = tracker.beat(self._clock())
        self._handle = loop.call_later(tracker.interval, self._beat)
        if stall is None:
            return
        if stall.culprit is None:  # the watcher did not see it: say it now
            logger.warning("the event loop was blocked for %.3fs", stall.duration)
        else:
            logger.info(
                "the event loop was blocked for %.3fs (%s)",
                stall.duration,
                stall.culprit.describe(),
            )

    # -- the watcher thread --------------------------------------------------------------

    def _watch(self) -> None:
        tracker = self._tracker
        assert tracker is not None
        while True:
            with self._lock:
                now = self._clock()
                wait = tracker.deadline() - now
                overdue = tracker.overdue(now)
            if overdue:
                culprit: Culprit | None = self._inspect()
                with self._lock:
                    if tracker.overdue(self._clock()) and culprit is not None:
                        tracker.noticed(culprit)  # still the same stall
                    else:
                        culprit = None  # it ended meanwhile: what was read is stale
                if culprit is not None:
                    logger.warning(
                        "the event loop has been blocked for over %.0f ms, %s",
                        self._threshold * 1000,
                        culprit.describe(),
                    )
            if wait <= 0:  # a stall under way: look again once it may have ended
                wait = tracker.interval
            if self._stopping.wait(wait):
                return

    def _inspect(self) -> Culprit:
        """What the blocked loop is running. Best effort: the loop's current task is read
        from asyncio's private ``_current_tasks`` and the loop thread's stack from
        ``sys._current_frames()``, both without the loop's cooperation; the loop may move
        on while they are read (then the stall is over and what was read is dropped)."""
        task: asyncio.Task[object] | None = None
        try:
            task = asyncio.tasks._current_tasks.get(self._loop)  # type: ignore[attr-defined]
        except Exception:  # a private API: never let it break the watcher
            task = None
        run_id = name = None
        if task is not None:
            name = task.get_name()
            run_id = self._run_of_task(task)
        where = None
        assert self._loop_thread is not None
        frame: FrameType | None = sys._current_frames().get(self._loop_thread)
        while frame is not None:
            filename = frame.f_code.co_filename
            if self._is_agent_file(filename):
                where = f"{filename}:{frame.f_lineno}"
                break
            frame = frame.f_back
        return Culprit(run_id=run_id, task=name, where=where)
