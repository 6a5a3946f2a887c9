"""The loop-side state of one live run: what it has published, what is open, how it ends.

:class:`RunContext` is the run's one object: it owns the run's stream and its
:class:`~agent_runtime.run_log.RunLog`, and knows its host only through the
:class:`~agent_runtime.runs.ports.RunHost` port. The work of each seam lives in a module
of its own that acts on a context: :mod:`.pump` (completions), :mod:`.replies` (its
thread), :mod:`.children` (child runs), :mod:`.lifecycle` (its task and ending), and
:mod:`.agent_side` (what its agent's Environment calls).

Concurrency: every method runs on the event loop. :meth:`publish` appends to the stream
(never awaiting a subscriber) and records the event in the run log in the same step.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from collections.abc import Callable
from typing import Any

import orjson

from broker import Stream

from .. import protocol
from ..agents import Agent
from ..errors import ChildRunLimitReached, InvalidRequest, RunCancelled
from ..objects import Run, RunStatus, RunStep, now
from ..run_log import RunLog
from ..stream_handler import StreamHandler
from .agent_thread import describe
from .ports import RunHost
from .timings import RunTimings

__all__ = ["RunContext"]

logger = logging.getLogger(__name__)


class RunContext:
    """The loop-side state of one live run. Environment methods land here."""

    def __init__(
        self,
        manager: RunHost[RunContext],
        run: Run,
        agent: Agent,
        stream: Stream,
        log: RunLog,
        *,
        deadline: float,
    ) -> None:
        self.manager = manager
        self.deadline = deadline
        """Loop time at which the run expires (queue time included)."""
        self.run = run
        self.agent = agent
        self.stream = stream
        self.runlog = log
        self.loop = asyncio.get_running_loop()
        self.loop_thread = threading.get_ident()
        self.cancel_requested = False
        self.finishing = False
        """The run is writing its ending: it can no longer be cancelled or ended otherwise."""
        self.task: asyncio.Task[None] | None = None
        self.started = False
        """Its task has begun (a task cancelled before it begins would never run its
        ending: :meth:`end` leaves such a task to find the ending when it begins)."""
        self.ending: tuple[RunStatus, str | None] | None = None
        """How the run was told to end (:meth:`end`), if it was."""
        self.outcome: tuple[RunStatus, str | None] | None = None
        """How the run ends when its agent returns (:meth:`set_outcome`)."""
        self.parent: RunContext | None = None
        """The run that started this one with ``env.run_agent`` (a child run), if any."""
        self.relay: tuple[RunContext, str] | None = None
        """(parent, step id) when this child's message deltas are relayed to its parent."""
        self.children: dict[str, RunContext] = {}
        """Child runs whose step is still open, by step id."""
        self.live_descendants = 0
        """On a root run: its child runs live or being started, every generation
        (``max_descendants``; see :mod:`.children`)."""
        self.refused: ChildRunLimitReached | None = None
        """The child-run limit error this run's agent was last refused with, if any."""
        self.handlers: list[StreamHandler] = []
        """The run's streamed completions."""
        self.open_steps: dict[str, dict[str, Any]] = {}
        """Run steps created and not yet ended, by id (tool calls, child runs)."""
        self.pumps: set[asyncio.Task[None]] = set()
        self._step_writes: set[asyncio.Task[None]] = set()
        """Store writes of steps not yet done (awaited before the run's end)."""
        self._thread_futures: set[concurrent.futures.Future[Any]] = set()
        self.done = asyncio.Event()
        self.observer: Callable[[str, dict[str, Any]], None] | None = None
        """Called with every event the run publishes, in the same loop step (the
        Responses projection, :mod:`agent_runtime.responses`); must not await or raise."""
        self.timings = RunTimings()
        """Where its start spent its time (:mod:`.timings`)."""
        self._delta_published = False

    @property
    def depth(self) -> int:
        """0 for a root run, its parent's depth + 1 for a child run."""
        depth, ctx = 0, self
        while ctx.parent is not None:
            depth, ctx = depth + 1, ctx.parent
        return depth

    @property
    def root(self) -> RunContext:
        """The root run of this run's tree (itself for a root run)."""
        ctx = self
        while ctx.parent is not None:
            ctx = ctx.parent
        return ctx

    # -- events ----------------------------------------------------------------------

    def publish(self, name: str, payload: dict[str, Any], *, text: str | None = None) -> int:
        """Append an event to the run's stream and record it in its log; its id.
        ``text``: a delta's text, handed to the log as it is (not read back)."""
        event = self.stream.publish(name, payload)
        assert event.id is not None
        self.runlog.record(event.id, name, payload, text)
        if self.observer is not None:
            self.observer(name, payload)
        if self.relay is not None and name == protocol.MESSAGE_DELTA:
            self._relay(payload["id"], protocol.delta_text(payload) if text is None else text)
        return event.id

    def _relay(self, message_id: str, text: str) -> None:
        """Relay this child's message delta into its parent's stream (``relay=True``)."""
        assert self.relay is not None
        parent, step_id = self.relay
        if parent.run.terminal or step_id not in parent.open_steps:
            return
        parent.publish(
            protocol.AGENT_CHILD_DELTA,
            protocol.child_delta_payload(
                run_id=parent.run.id,
                step_id=step_id,
                child_thread_id=self.run.thread_id,
                child_run_id=self.run.id,
                message_id=message_id,
                text=text,
            ),
        )

    def publish_delta(self, message_id: str, text: str) -> int:
        """Publish a ``thread.message.delta`` carrying ``text``."""
        event_id = self.publish(
            protocol.MESSAGE_DELTA, protocol.delta_payload(message_id, text), text=text
        )
        if not self._delta_published:
            self._delta_published = True
            self.timings.stamp("first_delta_published")
        return event_id

    def publish_created(self, handler: StreamHandler) -> None:
        """Publish a streamed message's ``created`` and ``in_progress``, once."""
        if handler.published:
            return
        handler.published = True
        self.publish(protocol.MESSAGE_CREATED, handler.message.to_dict())
        self.publish(protocol.MESSAGE_IN_PROGRESS, handler.message.to_dict())

    @property
    def head(self) -> int:
        """The id of the run's last published event."""
        return self.stream.head

    def stored_log(self) -> dict[str, Any]:
        """The run's state as the store keeps it: its compacted event log (see
        :meth:`RunLog.compact`) and the stream's head when it was taken."""
        return {"head": self.stream.head, "items": self.runlog.compact()}

    # -- steps -----------------------------------------------------------------------

    def new_step(self, kind: str, details: dict[str, Any]) -> dict[str, Any]:
        """Publish ``thread.run.step.created`` and ``.in_progress`` of a new step."""
        step = protocol.step_object(
            run_id=self.run.id,
            thread_id=self.run.thread_id,
            assistant_id=self.agent.name,
            kind=kind,
            details=details,
        )
        self.open_steps[step["id"]] = step
        # Copies: the run log keeps the published payloads, and the step changes later.
        self.publish(protocol.STEP_CREATED, dict(step))
        self.publish(protocol.STEP_IN_PROGRESS, dict(step))
        self._store_step(step)
        return step

    def end_step(
        self,
        step: dict[str, Any],
        status: str,
        details: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> None:
        """Publish the step's final event (``thread.run.step.<status>``), once."""
        if self.open_steps.pop(step["id"], None) is None:
            return
        step["status"] = status
        if details is not None:
            step["step_details"] = details
        stamp_field = {
            "completed": "completed_at",
            "cancelled": "cancelled_at",
            "failed": "failed_at",
            "expired": "expired_at",
        }[status]
        step[stamp_field] = now()
        if status == "failed":
            step["last_error"] = {"code": "server_error", "message": error or "the step failed"}
        self.publish(protocol.step_event(status), dict(step))
        self._store_step(step)

    def _store_step(self, step: dict[str, Any]) -> None:
        """Store the step as it is now, without waiting: a task, started after those
        scheduled before it (so its write is queued after theirs), tracked until done."""
        write = self.loop.create_task(
            self.manager.store.put_step(RunStep.of(step)), name=f"store step {step['id']}"
        )
        self._step_writes.add(write)
        write.add_done_callback(self._step_written)

    def _step_written(self, write: asyncio.Task[None]) -> None:
        self._step_writes.discard(write)
        if write.cancelled():
            logger.warning("run %s: a step's store write was cancelled", self.run.id)
        elif (error := write.exception()) is not None:
            logger.warning("run %s: storing a step failed: %s", self.run.id, describe(error))

    async def steps_stored(self) -> None:
        """Wait for every pending step write (they are not cancelled if this wait is;
        their failures are logged)."""
        if self._step_writes:
            await asyncio.wait(list(self._step_writes))

    # -- agent-written events --------------------------------------------------------

    def _agent_event(self, name: str, payload: dict[str, Any]) -> int:
        if self.cancel_requested or self.finishing or self.run.terminal:
            raise RunCancelled("the run was cancelled")
        try:
            size = len(orjson.dumps(payload))
        except TypeError as exc:
            raise InvalidRequest(f"the data of {name} is not JSON-serialisable: {exc}") from None
        if size > protocol.MAX_AGENT_EVENT_BYTES:
            raise InvalidRequest(
                f"{name} is {size} bytes of JSON; the limit is {protocol.MAX_AGENT_EVENT_BYTES}"
            )
        return self.publish(name, payload)

    def progress(self, text: str) -> int:
        """Publish an agent-written progress line (``thread.agent.progress``); its id."""
        if not isinstance(text, str):
            raise InvalidRequest(f"stream_text takes a str, not {type(text).__name__}")
        payload = protocol.progress_payload(self.run.id, self.run.thread_id, text)
        return self._agent_event(protocol.AGENT_PROGRESS, payload)

    def emit(self, name: str, data: Any) -> int:
        """Publish an agent-written event ``thread.agent.<name>``; its id."""
        if not isinstance(name, str) or not protocol.AGENT_EVENT_NAME.match(name):
            raise InvalidRequest(
                f"event name {name!r} must be 1-64 letters, digits, '_', '.' or '-' "
                "(it is sent as thread.agent.<name>)"
            )
        if name in protocol.RESERVED_AGENT_EVENTS:
            raise InvalidRequest(
                f"thread.agent.{name} is written by agentstream itself; pick another name"
            )
        payload = protocol.agent_event_payload(self.run.id, self.run.thread_id, name, data)
        return self._agent_event(protocol.agent_event(name), payload)

    def agent_log(self, line: str, level: int) -> None:
        """A log line of the agent's (``env.add_system_log``)."""
        logging.getLogger(f"agent_runtime.agent.{self.agent.name}").log(level, "%s", line)

    @property
    def agent_name(self) -> str:
        return self.agent.name

    # -- ending ----------------------------------------------------------------------

    def end(self, status: RunStatus, message: str | None = None) -> None:
        """Stop the run now with ``status`` (cancel, expiry, provider failure, shutdown)."""
        if self.ending is not None or self.run.terminal or self.finishing:
            return
        self.ending = (status, message)
        self.cancel_requested = True
        for handler in self.handlers:
            handler.interrupt()
        for future in list(self._thread_futures):
            future.cancel()
        if self.task is not None and self.started:
            self.task.cancel()

    def set_outcome(self, status: RunStatus, message: str | None = None) -> None:
        """How the run ends when the agent returns (``mark_done``, ``mark_failed``…)."""
        self.outcome = (status, message)

    def track_thread_future(self, future: concurrent.futures.Future[Any]) -> None:
        self._thread_futures.add(future)

    def untrack_thread_future(self, future: concurrent.futures.Future[Any]) -> None:
        self._thread_futures.discard(future)
