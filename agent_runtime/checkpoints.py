"""Checkpoints of live runs, and the ending of runs a crash interrupted.

While a run streams, its state is written to the store every ``checkpoint_interval``
seconds (when it changed): its compacted event log (:meth:`RunLog.compact`: each message
with its text so far, each step, every kept event with its original id) and the stream's
head. So at most one interval of text is lost when the process is killed (``kill -9``, an
out-of-memory kill, a power cut within SQLite's durability).

At the next start, :func:`end_interrupted` ends each run that was live when the previous
process died, from its last checkpoint: each message still streaming is stored
``incomplete`` with its text so far, each open step ends ``failed``, and the run's log
gets those endings and ``thread.run.failed``. They are numbered past the checkpoint's
*reserve*: ids a client may have seen published after the checkpoint (twice as many as
in the interval before it, at least :data:`MIN_RESERVE`), so a client holding such a
cursor still gets the endings. A stream rebuilt from that log keeps the run's
numbering, so a client's cursor still works; a cursor at or past the recovered end is
at the end (``204``).

Concurrency: one loop-side task per hub writes every changed run at each interval,
queued :data:`CHUNK` at a time in one loop turn, each chunk awaited together. A
checkpoint is queued only while its run is not ending, and stores apply writes in call
order, so a checkpoint never lands after the run's final state.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from . import protocol
from .errors import NotFound
from .objects import Message, Run, now
from .run_log import RunLog
from .store import Store, every_page

__all__ = ["Checkpointer", "end_interrupted"]

logger = logging.getLogger(__name__)

MIN_RESERVE = 1000
"""Ids left unused after a checkpoint's head before a crashed run's endings: events a
client may have seen after the last checkpoint (at least this many, or twice as many as
were published in the interval before it)."""

CHUNK = 32
"""Checkpoints queued together (see :meth:`Checkpointer.write_changed`)."""

FIRST_EVENTS = 2
"""Every run's stream starts with ``thread.run.created`` and ``thread.run.queued``: a run
interrupted before its first checkpoint had published at least those."""


class Checkpointed(Protocol):
    """What the checkpointer needs of a live run (:class:`~agent_runtime.runs.RunContext`)."""

    @property
    def run(self) -> Run: ...

    @property
    def finishing(self) -> bool: ...

    @property
    def head(self) -> int: ...

    def stored_log(self) -> dict[str, Any]: ...


class Checkpointer:
    """Writes the changed state of every live run at an interval (module docstring)."""

    def __init__(
        self, store: Store, interval: float, live: Callable[[], Sequence[Checkpointed]]
    ) -> None:
        self.store = store
        self.interval = interval
        self._live = live
        self._saved: dict[str, int] = {}
        self._task: asyncio.Task[None] | None = None
        self._failing = False
        self.written = 0
        """Checkpoints written since start (for metrics and tests)."""

    def start(self) -> None:
        """Start the background task (idempotent; nothing if checkpoints are off)."""
        if self._task is None and self.interval > 0:
            self._task = asyncio.get_running_loop().create_task(
                self._loop(), name="run checkpoints"
            )

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.write_changed()

    async def write_changed(self) -> int:
        """Write a checkpoint of every live run that changed since its last; how many.

        One task per run checks it and queues its write in the same step (so never
        after the run started ending and queued its final state), :data:`CHUNK` runs in
        one loop turn, awaited together: a store that batches its writes (Redis) sends
        each chunk in one round trip, not one per live run, and other writes (a run's
        creation) wait behind one chunk at most, not every live run's log."""
        live = list(self._live())
        alive = {ctx.run.id for ctx in live}
        contexts = [ctx for ctx in live if self._changed(ctx)]
        writes: list[asyncio.Task[int]] = []
        for start in range(0, len(contexts), CHUNK):
            chunk = [
                asyncio.ensure_future(self._checkpoint(c)) for c in contexts[start : start + CHUNK]
            ]
            writes += chunk
            try:
                await asyncio.wait(chunk)
            except asyncio.CancelledError:  # (queued writes still happen: stores shield them)
                for task in chunk:
                    task.cancel()
                raise
        count = 0
        failed = 0
        for ctx, write in zip(contexts, writes, strict=True):
            exc = write.exception()
            if exc is None:
                count += write.result()
            elif not isinstance(exc, NotFound):
                failed += 1
                if not self._failing:  # once until checkpoints are written again
                    self._failing = True
                    logger.warning("checkpoints cannot be written (run %s): %s", ctx.run.id, exc)
        for gone in set(self._saved) - alive:
            del self._saved[gone]
        if self._failing and count and not failed:
            self._failing = False
            logger.info("checkpoints are written again")
        self.written += count
        return count

    def _changed(self, ctx: Checkpointed) -> bool:
        """The run is not ending and has events since its last checkpoint."""
        return not (ctx.finishing or ctx.run.terminal or self._saved.get(ctx.run.id) == ctx.head)

    async def _checkpoint(self, ctx: Checkpointed) -> int:
        """Write the run's checkpoint if it changed (1), else nothing (0)."""
        run_id = ctx.run.id
        head = ctx.head
        # Checked right before the write is queued, in the same loop step.
        if not self._changed(ctx):
            return 0
        log = ctx.stored_log()
        # Ids a crash may have used past this checkpoint: twice the last interval's.
        log["reserve"] = head + max(MIN_RESERVE, 2 * (head - self._saved.get(run_id, 0)))
        await self.store.save_run_log(ctx.run.thread_id, run_id, log)
        self._saved[run_id] = head
        return 1

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


async def end_interrupted(store: Store, runs: Sequence[Run]) -> None:
    """End runs a crash interrupted (already marked ``failed`` by the store) from their
    last checkpoints; see the module docstring. A run that cannot be ended is logged."""
    for run in runs:
        try:
            await _end_one(store, run)
        except Exception as exc:
            logger.error("run %s: could not be ended from its checkpoint: %s", run.id, exc)


async def _end_one(store: Store, run: Run) -> None:
    stored = await store.get_run_log(run.thread_id, run.id) or {}
    items = list(stored.get("items") or [])
    head = int(stored.get("head") or FIRST_EVENTS)
    reserve = int(stored.get("reserve") or 0)
    log = RunLog.from_compacted(items)
    next_id = max(head + MIN_RESERVE, reserve) + 1
    if not items and run.started_at is not None:
        # No checkpoint: the run had published created, queued and in_progress (id 3).
        live = run.to_dict() | {"status": "in_progress", "failed_at": None, "last_error": None}
        log.record(FIRST_EVENTS + 1, protocol.run_event("in_progress"), live)
    stamp = now()
    # Steps stored after the last checkpoint: shown as created then failed, after it.
    known = {item[3].get("id") for item in items if item[2] == protocol.STEP_CREATED}
    stored_steps = await every_page(
        lambda after: store.list_steps(run.thread_id, run.id, order="asc", limit=1000, after=after)
    )
    for stored_step in stored_steps:
        if stored_step.id in known:
            continue
        body = stored_step.to_dict()
        created = body | {"status": "in_progress", "failed_at": None, "last_error": None}
        log.record(next_id, protocol.STEP_CREATED, created)
        next_id += 1
    open_messages, open_steps = log.open_items()
    for created in open_messages:
        text = str(created.get("_text") or "")
        message = Message(
            id=created["id"],
            thread_id=run.thread_id,
            role="user" if created.get("role") == "user" else "assistant",
            content=text,
            created_at=int(created.get("created_at") or stamp),
            status="incomplete",
            run_id=run.id,
            assistant_id=created.get("assistant_id"),
            metadata=dict(created.get("metadata") or {}),
            incomplete_at=stamp,
            incomplete_reason="run_failed",
        )
        if text:
            await store.add_message(message)
        log.record(next_id, protocol.MESSAGE_INCOMPLETE, message.to_dict())
        next_id += 1
    error = (run.last_error or {}).get("message") or "the run was interrupted"
    for open_step in open_steps:
        final = open_step | {"status": "failed", "failed_at": stamp}
        final["last_error"] = {"code": "server_error", "message": error}
        log.record(next_id, protocol.step_event("failed"), final)
        next_id += 1
    run.last_event_id = next_id
    log.record(next_id, protocol.run_event("failed"), run.to_dict())
    await store.update_run(run)
    await store.save_run_log(
        run.thread_id,
        run.id,
        {"head": next_id, "items": log.compact(), "recovered": True},
    )
    logger.warning(
        "run %s on thread %s was live at the last stop: ended failed from its checkpoint "
        "(%d messages kept incomplete)",
        run.id,
        run.thread_id,
        sum(1 for m in open_messages if m.get("_text")),
    )
