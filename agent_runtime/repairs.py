"""Store writes that failed when a run ended, retried until the store takes them.

A run ends whatever its store does (see :meth:`agent_runtime.runs.RunContext._finish`):
its terminal event is published and its stream closed even when the final write fails
(a full disk, a store that hangs). What could not be written is queued here, by run, and
written again once the store can be written: at a growing interval (1 s, doubling, at
most 30 s) by one background task, and once more at shutdown. A write whose thread was
deleted meanwhile is dropped. A process that dies with repairs pending leaves the run
live in the store: the next start marks it failed (:mod:`agent_runtime.checkpoints`).

Concurrency: loop-side only; one task, started when the first repair is queued, tracked
and cancelled by :meth:`Repairs.aclose`. Writes of one run are applied in order (messages,
then the run, then its log), never concurrently with a newer queueing of the same run.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import NotFound
from .objects import Message, Run
from .store import Store

__all__ = ["Repairs"]

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class _Pending:
    thread_id: str
    run_id: str
    messages: dict[str, Message] = field(default_factory=dict)
    run: Run | None = None
    log: dict[str, Any] | None = None


class Repairs:
    """The queue of store writes to apply again (see the module docstring)."""

    def __init__(self, store: Store, *, first_delay: float = 1.0, max_delay: float = 30.0):
        self.store = store
        self.first_delay = first_delay
        self.max_delay = max_delay
        self._pending: dict[str, _Pending] = {}
        self._task: asyncio.Task[None] | None = None
        self.applied = 0
        """Repairs written since start (for metrics and tests)."""

    def __len__(self) -> int:
        return len(self._pending)

    def run(self, run_id: str) -> Run | None:
        """The final state of a run not yet written (what a read should answer)."""
        pending = self._pending.get(run_id)
        return None if pending is None else pending.run

    def add(
        self,
        thread_id: str,
        run_id: str,
        *,
        messages: Sequence[Message] = (),
        run: Run | None = None,
        log: dict[str, Any] | None = None,
    ) -> None:
        """Queue writes for a run (later ones of the same object replace earlier ones)."""
        pending = self._pending.setdefault(run_id, _Pending(thread_id, run_id))
        for message in messages:
            pending.messages[message.id] = message
        if run is not None:
            pending.run = run
        if log is not None:
            pending.log = log
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._retry(), name="store repairs")

    async def attempt(self) -> bool:
        """Write everything pending once; whether nothing is left."""
        for run_id, pending in list(self._pending.items()):
            try:
                for message in list(pending.messages.values()):
                    await self.store.add_message(message)
                    pending.messages.pop(message.id, None)
                if pending.run is not None:
                    await self.store.update_run(pending.run)
                    pending.run = None
                if pending.log is not None:
                    await self.store.save_run_log(pending.thread_id, run_id, pending.log)
                    pending.log = None
            except NotFound:
                logger.info("run %s: its thread was deleted; nothing left to store", run_id)
            except Exception as exc:
                logger.warning("run %s: the store still cannot be written: %s", run_id, exc)
                return False
            self._pending.pop(run_id, None)
            self.applied += 1
            logger.info("run %s: its final state is now stored", run_id)
        return not self._pending

    async def _retry(self) -> None:
        delay = self.first_delay
        try:
            while self._pending:
                await asyncio.sleep(delay)
                if await self.attempt():
                    break
                delay = min(delay * 2, self.max_delay)
        finally:
            self._task = None

    async def aclose(self) -> None:
        """Stop retrying, after one last attempt; log what is left unwritten."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self._pending and not await self.attempt():
            logger.error(
                "%d runs' final state could not be stored before shutdown; they will be "
                "marked failed at the next start",
                len(self._pending),
            )
