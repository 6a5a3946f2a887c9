"""The hub's pool of agent worker processes.

:meth:`WorkerPool.start` starts ``warm`` workers and waits until they are ready, so the
first runs do not pay for a Python start. :meth:`WorkerPool.acquire` hands out an idle
worker, starts one more if fewer than ``max_workers`` exist, or waits for one to be
released (runs past that wait ``queued``). A worker runs one run at a time.
:meth:`WorkerPool.release` takes it back, or kills it when it should not be reused (it
died, was killed, or its run hit a limit); a pool below ``warm`` workers starts a
replacement in the background.

Workers get one end of a socket pair (see :mod:`agent_runtime.isolation.channel`), run in
a session of their own (a terminal's Ctrl-C reaches only the hub, which ends them in
order) and die with the hub even when it is killed (``PR_SET_PDEATHSIG``). Their stdout
and stderr are the hub's.

Every background task (replacements, process reapers) is tracked and cancelled by
:meth:`WorkerPool.aclose`, which kills every worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import IsolationConfig
from ..errors import AgentProcessError, ServiceUnavailable
from .channel import Channel, open_channel

__all__ = ["Worker", "WorkerPool", "describe_exit", "first_of"]

logger = logging.getLogger(__name__)

READY_TIMEOUT = 60.0
"""Seconds a new worker has to import the runtime and say it is ready (counted from its
start: workers start at most one per core at a time, see :func:`_start_slots`)."""

_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])


def _start_slots() -> int:
    """How many workers may be starting at once: one per core this process may use (a
    start is a Python import, about a second of CPU; started all at once on one core,
    a hundred would each take a hundred seconds and miss :data:`READY_TIMEOUT`)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


async def first_of(*futures: asyncio.Future[Any]) -> None:
    """Wait until one of ``futures`` is done (none is cancelled)."""
    await asyncio.wait(futures, return_when=asyncio.FIRST_COMPLETED)


def describe_exit(returncode: int | None) -> str:
    """How a worker process ended, for a run's ``last_error``."""
    if returncode is None:
        return "the agent's process stopped answering"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"the agent's process was killed by {name}"
    return f"the agent's process exited with status {returncode}"


class Worker:
    """One worker process, as the hub sees it. Loop thread only."""

    def __init__(self, process: asyncio.subprocess.Process, channel: Channel) -> None:
        self.process = process
        self.channel = channel
        self.pid = process.pid
        self.handler: Callable[[dict[str, Any]], None] | None = None
        """Where the current run's messages go (its session's dispatcher)."""
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.killed = False
        self.runs = 0

    def on_message(self, message: dict[str, Any]) -> None:
        if message.get("op") == "ready":
            if not self.ready.done():
                self.ready.set_result(None)
            return
        if self.handler is not None:
            self.handler(message)
        else:
            logger.warning("worker %d sent %r outside a run", self.pid, message.get("op"))

    @property
    def alive(self) -> bool:
        return not self.exited.done() and not self.killed

    def send(self, message: dict[str, Any]) -> None:
        self.channel.send(message)

    def kill(self) -> None:
        """SIGKILL the worker (idempotent); :attr:`exited` resolves when it is reaped."""
        self.killed = True
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
        self.channel.close("killed")


class WorkerPool:
    """Worker processes for agent runs (see the module docstring)."""

    def __init__(self, config: IsolationConfig) -> None:
        self.config = config
        self.warm = config.warm_workers
        self._all: set[Worker] = set()
        self._idle: list[Worker] = []
        self._starting = 0
        self._start_slots = asyncio.Semaphore(_start_slots())
        """Starts in progress at most (the others wait their turn before starting)."""
        self._freed = asyncio.Condition()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False
        self.started = 0
        """Workers started since the pool started."""
        self.replaced = 0
        """Workers that died or were killed (and were replaced when below ``warm``)."""

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Start the warm workers; returns once they are ready."""
        workers = await asyncio.gather(*(self._spawn() for _ in range(self.warm)))
        self._idle.extend(workers)
        logger.info(
            "process isolation: %d workers ready (at most %d)", self.warm, self.config.max_workers
        )

    async def aclose(self) -> None:
        """Kill every worker, wait until they are reaped, and cancel the pool's tasks.

        The reapers (which resolve each worker's ``exited``) are cancelled only after the
        wait: cancelled first, nothing would resolve it and every close would last the
        whole timeout. A worker still starting is killed when it comes up (the pool is
        closed), or at the end here if its start was cancelled."""
        self._closed = True
        for worker in list(self._all):
            worker.kill()
        waits = [w.exited for w in self._all]
        if waits:
            await asyncio.wait(waits, timeout=5.0)
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for worker in list(self._all):
            worker.kill()
        self._idle.clear()

    @property
    def size(self) -> int:
        return len(self._all)

    @property
    def busy(self) -> int:
        return len(self._all) - len(self._idle)

    # -- workers ---------------------------------------------------------------------

    async def _spawn(self) -> Worker:
        """Start one worker and wait until it says it is ready: when a start slot is free
        (cancellable while it waits)."""
        self._starting += 1
        try:
            async with self._start_slots:
                return await self._start_one()
        finally:
            self._starting -= 1

    async def _start_one(self) -> Worker:
        parent, child = socket.socketpair()
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_PACKAGE_ROOT, env.get("PYTHONPATH")) if p)
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "agent_runtime.isolation.worker",
                str(child.fileno()),
                str(self.config.worker_nice),
                pass_fds=(child.fileno(),),
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env=env,
            )
        finally:
            child.close()
        holder: list[Worker] = []
        channel = await open_channel(parent, lambda m: holder[0].on_message(m))
        worker = Worker(process, channel)
        holder.append(worker)
        self._all.add(worker)
        self.started += 1
        self._track(self._reap(worker))
        try:
            async with asyncio.timeout(READY_TIMEOUT):
                await first_of(worker.ready, worker.exited)
        except TimeoutError:
            worker.kill()
            raise ServiceUnavailable("an agent worker did not start in time") from None
        if not worker.ready.done():
            raise ServiceUnavailable(
                f"an agent worker failed to start ({describe_exit(process.returncode)})"
            )
        return worker

    async def _reap(self, worker: Worker) -> None:
        """Wait for the worker's exit; forget it; top the pool up."""
        returncode = await worker.process.wait()
        worker.channel.close("exited")
        worker.exited.set_result(returncode)
        self._all.discard(worker)
        if worker in self._idle:
            self._idle.remove(worker)
        if not worker.killed:
            logger.warning("agent worker %d ended: %s", worker.pid, describe_exit(returncode))
        self.replaced += 1
        async with self._freed:
            self._freed.notify()
        if not self._closed and len(self._all) + self._starting < self.warm:
            self._track(self._replace())

    async def _replace(self) -> None:
        try:
            worker = await self._spawn()
        except (ServiceUnavailable, OSError) as exc:
            logger.error("could not replace an agent worker: %s", exc)
            return
        await self._put_back(worker)

    def _track(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _put_back(self, worker: Worker) -> None:
        if self._closed:
            worker.kill()
            return
        self._idle.append(worker)
        async with self._freed:
            self._freed.notify()

    # -- runs ------------------------------------------------------------------------

    async def acquire(self) -> Worker:
        """An idle worker for one run (started if none is idle and the pool may grow);
        waits while ``max_workers`` are busy. Cancellable."""
        while True:
            if self._closed:
                raise ServiceUnavailable("the hub is shutting down")
            while self._idle:
                worker = self._idle.pop()
                if worker.alive:
                    return worker
            if len(self._all) + self._starting < self.config.max_workers:
                try:
                    return await self._spawn()
                except OSError as exc:
                    raise AgentProcessError(f"could not start an agent worker: {exc}") from exc
            async with self._freed:
                await self._freed.wait()

    async def release(self, worker: Worker, *, reuse: bool) -> None:
        """Take a worker back after its run: idle again if ``reuse`` and it is healthy,
        otherwise killed (and replaced when the pool is below ``warm``)."""
        worker.handler = None
        worker.runs += 1
        if reuse and worker.alive and not self._closed:
            await self._put_back(worker)
        else:
            worker.kill()
