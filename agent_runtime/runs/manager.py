"""The runs of one hub: created, tracked, cancelled, and all ended on shutdown.

Concurrency
-----------
Each run is one asyncio task (tracked here, ended on shutdown). Creating a run claims its
thread before the first await, so concurrent requests on one thread get ``409``; a
thread being deleted is held the same way (:meth:`RunManager.deleting`). With
``max_concurrent_runs``, root runs wait ``queued`` for a slot (:class:`.slots.RunSlots`;
child runs fill slots without waiting, see :mod:`.children`), at most
``max_queued_runs`` of them (429 beyond). On several nodes the thread is also claimed
across nodes through the :class:`~agent_runtime.runs.ports.ClusterPort`, and a cancel of
a run live elsewhere is forwarded to its node.

Every live run is checkpointed (:mod:`agent_runtime.checkpoints`) and a final write that
failed is retried (:mod:`agent_runtime.repairs`); both background tasks are stopped by
:meth:`RunManager.shutdown`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import time
from collections import Counter
from collections.abc import Iterator, Sequence

from broker import Registry

from .. import protocol
from ..agents import Agent, AgentCatalog
from ..checkpoints import Checkpointer
from ..config import RunsConfig
from ..errors import Conflict, InvalidRequest, LimitReached, ServiceUnavailable
from ..objects import Message, Run, RunStep, Thread, new_id, now
from ..repairs import Repairs
from ..run_log import RunLog
from ..store import Store, every_page
from . import lifecycle
from .agent_thread import AgentThreads
from .context import RunContext
from .lifecycle import InProcess
from .ports import AgentRunner, ClusterPort, Models, NoCluster
from .slots import RunSlots
from .timings import RunTimings, TimingsTable

__all__ = ["RunManager"]

logger = logging.getLogger(__name__)

_TASK_PREFIX = "run "
"""A run's task is named this and its id (see :meth:`RunManager.run_of_task`)."""


class RunManager:
    """Creates runs, tracks their tasks, cancels them, and ends them all on shutdown."""

    def __init__(
        self,
        *,
        store: Store,
        registry: Registry,
        catalog: AgentCatalog,
        models: Models,
        config: RunsConfig | None = None,
        cluster: ClusterPort | None = None,
        runner: AgentRunner | None = None,
    ) -> None:
        self.store = store
        self.registry = registry
        self.catalog = catalog
        self.models = models
        self.config = config or RunsConfig()
        self._live: dict[str, RunContext] = {}
        self._live_by_thread: dict[str, str] = {}
        self._slots = RunSlots(self.config.max_concurrent_runs)
        self._closing = False
        self.runner: AgentRunner = runner or InProcess()
        """Where agents execute (the hub's process unless isolation says otherwise)."""
        self.cluster: ClusterPort = cluster or NoCluster()
        """Claims and cancels across nodes (:class:`NoCluster` on a single node)."""
        self.finished: Counter[str] = Counter()
        """Runs ended since start, by terminal status (for metrics)."""
        self.started = 0
        self.repairs = Repairs(store)
        """Final writes that failed, retried until the store takes them."""
        self.checkpoints = Checkpointer(store, self.config.checkpoint_interval, self.live_contexts)
        self._deleting: set[str] = set()
        """Threads being deleted: no run may start on them meanwhile."""
        self.agent_threads = AgentThreads()
        """Synchronous agents' threads running agent code, and those orphaned by their run."""
        self.timings = TimingsTable()
        """The start stamps of the runs started here (:mod:`.timings`), the last few."""

    def slot(self) -> RunSlots:
        """What a top-level run holds while it executes (``max_concurrent_runs``); live
        child runs are counted in it too."""
        return self._slots

    @staticmethod
    def run_of_task(task: asyncio.Task[object]) -> str | None:
        """The id of the run whose task this is (by its name), else ``None``. Reads only
        the task's name: safe from another thread (the loop watchdog's)."""
        name = task.get_name()
        return name[len(_TASK_PREFIX) :] if name.startswith(_TASK_PREFIX) else None

    def live(self, run_id: str) -> RunContext | None:
        return self._live.get(run_id)

    def live_on_thread(self, thread_id: str) -> RunContext | None:
        run_id = self._live_by_thread.get(thread_id)
        return None if run_id is None else self._live.get(run_id)

    def knows(self, thread_id: str, run_id: str) -> bool:
        """The run is live here or being created here."""
        return run_id in self._live or self._live_by_thread.get(thread_id) == run_id

    def live_contexts(self) -> list[RunContext]:
        return list(self._live.values())

    @property
    def live_count(self) -> int:
        return len(self._live)

    def live_by_status(self) -> Counter[str]:
        return Counter(ctx.run.status for ctx in self._live.values())

    async def get_run(self, thread_id: str, run_id: str) -> Run:
        """The run as stored, or as it ended if its final write is still pending."""
        run = await self.store.get_run(thread_id, run_id)
        pending = self.repairs.run(run_id)
        return pending if pending is not None and pending.thread_id == thread_id else run

    async def thread_messages(self, thread_id: str) -> list[Message]:
        """Every message of the thread, oldest first."""
        return await every_page(
            lambda after: self.store.list_messages(thread_id, order="asc", limit=1000, after=after)
        )

    async def run_steps(self, thread_id: str, run_id: str) -> list[RunStep]:
        """Every stored step of the run, oldest first."""
        return await every_page(
            lambda after: self.store.list_steps(
                thread_id, run_id, order="asc", limit=1000, after=after
            )
        )

    async def create(
        self,
        thread_id: str,
        assistant_id: str,
        *,
        model: str | None = None,
        instructions: str | None = None,
        additional_messages: Sequence[tuple[str, str]] = (),
        metadata: dict[str, str] | None = None,
        parent: RunContext | None = None,
        thread: Thread | None = None,
        thread_messages: Sequence[Message] = (),
        agent: Agent | None = None,
        accepted_at: float | None = None,
    ) -> RunContext:
        """Start a run. Raises NotFound (thread, agent), Conflict (a live run).
        ``parent``: the run starting this one as its child (``env.run_agent``).
        ``agent``: the agent itself, when it is not the catalog's (a plain-model response).
        ``accepted_at``: ``time.time()`` when the request was accepted (default: now),
        the run's first stamp (:mod:`.timings`).
        ``thread``: a new thread (of id ``thread_id``) to create with the run, holding
        ``thread_messages`` (then the additional messages).

        The thread's check (or creation), the messages, the claim of the thread across
        nodes and the run are one store write (:meth:`ClusterPort.create_run`): on Redis,
        one script and one round trip."""
        timings = RunTimings(accepted_at)
        if self._closing:
            raise ServiceUnavailable("the hub is shutting down; retry on another instance")
        agent = agent or self.catalog.get(assistant_id)
        if thread_id in self._deleting:
            raise Conflict(f"Thread {thread_id} is being deleted.", param="thread_id")
        if thread_id in self._live_by_thread:
            raise Conflict(
                f"Thread {thread_id} already has an active run {self._live_by_thread[thread_id]}.",
                param="thread_id",
            )
        if parent is None:  # a child never waits for a slot (see .children)
            self._check_queue()
        run_id = new_id("run")
        # Claim the thread before the first await, so concurrent requests get the 409.
        self._live_by_thread[thread_id] = run_id
        cluster = self.cluster
        claimed = False
        try:
            messages = [*thread_messages, *_messages(thread_id, additional_messages)]
            ctx = self._context(run_id, thread_id, agent, model, instructions, metadata, parent)
            ctx.timings = timings
            claimed = True  # (attempted: releasing a claim not made changes nothing)
            holder = await cluster.create_run(self.store, ctx.run, messages=messages, thread=thread)
            if holder is not None:
                claimed = False
                raise Conflict(
                    f"Thread {thread_id} already has an active run {holder}.",
                    param="thread_id",
                )
            self._start(ctx)
            return ctx
        except BaseException:
            if self._live_by_thread.get(thread_id) == run_id:
                del self._live_by_thread[thread_id]
            self._live.pop(run_id, None)
            self.registry.discard(run_id)
            if claimed:
                cluster.release_soon(thread_id, run_id)
            raise

    def _check_queue(self) -> None:
        """Refuse a run (429) when ``max_queued_runs`` runs already wait for a slot: the
        runs being created here and the live root runs still ``queued``. Called with no
        await before the thread is claimed, so concurrent requests count each other."""
        slots, limit = self.config.max_concurrent_runs, self.config.max_queued_runs
        if slots is None or limit is None:
            return
        creating = sum(1 for run_id in self._live_by_thread.values() if run_id not in self._live)
        queued = sum(
            1 for c in self._live.values() if c.parent is None and c.run.status == "queued"
        )
        waiting = creating + queued
        if waiting >= limit:
            raise LimitReached(
                f"{max(waiting, 0)} runs are already waiting for one of the "
                f"{slots} run slots; the limit is {limit} waiting runs (set with "
                "--max-queued-runs / max_queued_runs). Retry later.",
                param="max_queued_runs",
                code="queue_full",
                retry_after=1,
            )

    def _context(
        self,
        run_id: str,
        thread_id: str,
        agent: Agent,
        model: str | None,
        instructions: str | None,
        metadata: dict[str, str] | None,
        parent: RunContext | None,
    ) -> RunContext:
        """The new run (``queued``) and its stream: created before the run is stored, so
        a subscriber that finds the run finds its stream here."""
        loop = asyncio.get_running_loop()
        expires_after = self.config.expires_after
        run = Run(
            id=run_id,
            thread_id=thread_id,
            assistant_id=agent.name,
            created_at=now(),
            expires_at=math.ceil(time.time() + expires_after),
            model=self.models.model_for_run(model, agent.defaults.model),
            instructions=instructions,
            metadata=dict(metadata or {}),
        )
        log = RunLog()
        stream = self.registry.create(
            run.id, snapshot=log.snapshot, resume_snapshot=log.resume_snapshot
        )
        ctx = RunContext(self, run, agent, stream, log, deadline=loop.time() + expires_after)
        ctx.parent = parent
        return ctx

    def _start(self, ctx: RunContext) -> None:
        """The run is stored: make it live, publish its first events, start its task."""
        run = ctx.run
        self._live[run.id] = ctx
        ctx.publish(protocol.RUN_CREATED, run.to_dict())
        ctx.publish(protocol.RUN_QUEUED, run.to_dict())
        self.started += 1
        self.checkpoints.start()
        if ctx.parent is not None:
            self._slots.child_started()  # ended by _forget, the task's done callback
        ctx.task = asyncio.create_task(lifecycle.execute(ctx), name=_TASK_PREFIX + run.id)
        ctx.task.add_done_callback(lambda _t: self._forget(ctx))
        ctx.timings.stamp("created")
        self.timings.add(run.id, ctx.timings)

    def _forget(self, ctx: RunContext) -> None:
        self.finished[ctx.run.status] += 1
        self.agent_threads.run_ended(ctx.run.id)
        self._live.pop(ctx.run.id, None)
        if ctx.parent is not None:
            self._slots.child_ended()
        if self._live_by_thread.get(ctx.run.thread_id) == ctx.run.id:
            del self._live_by_thread[ctx.run.thread_id]
        self.cluster.release_soon(ctx.run.thread_id, ctx.run.id)

    @contextlib.contextmanager
    def deleting(self, thread_id: str) -> Iterator[None]:
        """Hold ``thread_id`` while it is deleted: ``Conflict`` if a run is live or being
        created on it; meanwhile no run can start on it (``Conflict``). Checked and held
        in one loop step, so no interleaving of a delete and a run start leaves a run on
        a deleted thread."""
        if thread_id in self._live_by_thread:
            raise Conflict(
                f"Thread {thread_id} has an active run; cancel it before deleting the thread.",
                param="thread_id",
            )
        if thread_id in self._deleting:
            raise Conflict(f"Thread {thread_id} is being deleted.", param="thread_id")
        self._deleting.add(thread_id)
        try:
            yield
        finally:
            self._deleting.discard(thread_id)

    async def cancel(self, thread_id: str, run_id: str, *, local: bool = False) -> Run:
        """Ask a live run to stop: ``cancelling`` now, ``cancelled`` when it has.

        A run live on another node (several hubs on Redis) is cancelled by its owner, to
        which the request is forwarded (unless ``local``: the request came from there).
        """
        ctx = self._live.get(run_id)
        if ctx is None and not local:
            remote = await self.cluster.cancel_remote(thread_id, run_id)
            if remote is not None:
                return remote
        if ctx is None or ctx.run.thread_id != thread_id or ctx.run.terminal:
            run = await self.get_run(thread_id, run_id)
            raise InvalidRequest(f"Cannot cancel run with status '{run.status}'.", param="run_id")
        if ctx.run.status != "cancelling":
            # Publish and end synchronously, so that no ending can slip in between;
            # then persist (the store applies writes in order, the final status last).
            ctx.run.status = "cancelling"
            ctx.publish(protocol.RUN_CANCELLING, ctx.run.to_dict())
            ctx.end("cancelled")
            answer = dataclasses.replace(ctx.run)  # as of the cancel: the run moves on
            await self.store.update_run(ctx.run)
            return answer
        return ctx.run

    def cancel_now(self, ctx: RunContext) -> None:
        """Cancel a live run from the loop without awaiting (a parent cancelling its
        child): ``cancelling`` now, ``cancelled`` when it has stopped. No-op once it ends."""
        if ctx.run.terminal or ctx.finishing or ctx.run.status == "cancelling":
            return
        ctx.run.status = "cancelling"
        ctx.publish(protocol.RUN_CANCELLING, ctx.run.to_dict())
        ctx.end("cancelled")

    async def aclose(self, *, grace: float = 0.0, timeout: float = 5.0) -> None:
        """Stop taking runs; give live runs ``grace`` seconds to finish on their own; then
        end the rest (``failed``, saying the hub shut down, terminal event published) and
        wait for them, at most ``timeout`` more seconds."""
        self._closing = True
        tasks = [ctx.task for ctx in self._live.values() if ctx.task is not None]
        if tasks and grace > 0:
            logger.info("waiting up to %.1fs for %d live runs to finish", grace, len(tasks))
            await asyncio.wait(tasks, timeout=grace)
        contexts = [ctx for ctx in self._live.values() if not ctx.run.terminal]
        for ctx in contexts:
            ctx.end("failed", "the hub shut down before the run finished")
        tasks = [ctx.task for ctx in contexts if ctx.task is not None]
        if tasks:
            logger.warning("ended %d live runs at shutdown", len(tasks))
            _done, pending = await asyncio.wait(tasks, timeout=timeout)
            for task in pending:
                logger.warning("run task %s did not end within %.1fs", task.get_name(), timeout)
        await self.checkpoints.aclose()
        await self.repairs.aclose()


def _messages(thread_id: str, additional: Sequence[tuple[str, str]]) -> list[Message]:
    """A run's ``additional_messages`` (role, content) as messages of its thread."""
    stamp = now()
    return [
        Message(
            id=new_id("msg"),
            thread_id=thread_id,
            role="assistant" if role == "assistant" else "user",
            content=content,
            created_at=stamp,
            completed_at=stamp,
        )
        for role, content in additional
    ]
