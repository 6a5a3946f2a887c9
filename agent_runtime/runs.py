"""Runs: an agent executing on a thread, its lifecycle, and the events it publishes.

Concurrency
-----------
Each run is one asyncio task (tracked by the :class:`RunManager`, cancelled on
shutdown). An asynchronous agent runs inside that task; a synchronous agent runs in a
daemon worker thread of its own while the task awaits it, and every one of its
Environment calls is handed back to the loop. Streamed completions are pumped by their
own tasks, which publish deltas the moment chunks arrive.

Every event goes through :meth:`RunContext.publish`, which appends it to the run's broker
stream (never awaiting a subscriber) and records it in the run's :class:`RunLog`, from
which the broker's late-join and resume snapshots are rebuilt.

Run steps are stored too, when created and when ended, without holding back publishing:
each write is a task started in call order (each store queues its writes in the order
they start), tracked by the run, and awaited before the run's final status is written;
a failed step write is logged, never raised.

Endings
-------
Exactly one terminal event ends every run, whatever happens: ``completed`` (the agent
returned), ``failed`` (it raised, a provider failed, or it called ``mark_failed``; the
``last_error`` carries the message, not a traceback), ``cancelled`` (a cancel request:
an async agent's task is cancelled at once, a sync agent stops at its next Environment
call), ``expired`` (past ``expires_at``, queue time included), ``requires_action``
(``request_user_input``). The stream is closed right after it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import dataclasses
import logging
import math
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson
from openai.types.chat import ChatCompletion

from broker import Registry, Stream

from .agents import Agent, AgentCatalog
from .checkpoints import Checkpointer
from .environment import Environment
from .errors import (
    AgentRuntimeError,
    Conflict,
    InvalidRequest,
    LimitReached,
    NotFound,
    ProviderError,
    RunCancelled,
    ServiceUnavailable,
)
from .logs import bind_run
from .models.base import CompletionRequest, ModelProvider
from .models.router import ModelRouter
from .objects import Message, Run, RunStatus, RunStep, Thread, new_id, now
from .repairs import Repairs
from .run_log import RunLog, delta_payload, delta_text, step_delta_payload
from .store import Store
from .stream_handler import StreamHandler

if TYPE_CHECKING:
    from .cluster import Cluster

__all__ = ["ChildRunResult", "RunContext", "RunManager", "RunsConfig"]

logger = logging.getLogger(__name__)

_CHAT_KEYS = ("role", "content", "name", "tool_calls", "tool_call_id")

AGENT_EVENT_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}\Z")
"""The ``<name>`` of an agent-written ``thread.agent.<name>`` event."""
RESERVED_AGENT_EVENTS = frozenset({"progress", "child_delta"})
"""``thread.agent.*`` names the runtime writes itself."""
MAX_AGENT_EVENT_BYTES = 64 * 1024
"""Largest agent-written event (its JSON payload), so one cannot flood the replay buffer."""


@dataclass(frozen=True, slots=True)
class RunsConfig:
    expires_after: float = 600.0
    """Seconds from creation after which a live run ends ``expired``."""
    max_concurrent_runs: int | None = None
    """Runs executing at once; further runs wait ``queued`` for a slot."""
    checkpoint_interval: float = 1.0
    """Seconds between two checkpoints of a live run's state (its compacted event log,
    with the text streamed so far) in the store; ``0`` turns checkpoints off."""
    final_write_timeout: float = 10.0
    """Seconds a run's final store write may take before the run ends without it (its
    terminal event is published either way; the write is retried in the background)."""
    max_queued_runs: int | None = None
    """Runs waiting for a slot at once (with ``max_concurrent_runs``); further ones are
    refused (429). ``None``: no bound."""


@dataclass(frozen=True, slots=True)
class ChildRunResult:
    """What ``env.run_agent`` returns: how the child run ended and what it replied."""

    thread_id: str
    run_id: str
    assistant_id: str
    status: str
    texts: list[str]
    """The texts of the assistant messages the child run added, in order."""
    error: str | None = None
    """The child's ``last_error`` message when it failed."""

    @property
    def text(self) -> str:
        """The child's replies joined by blank lines."""
        return "\n\n".join(self.texts)


_CHILD_STEP_STATUS = {"failed": "failed", "cancelled": "cancelled", "expired": "expired"}
"""A child run's status → its step's final status (any other ending: ``completed``)."""


def _chat_messages(messages: list[dict[str, Any]] | str) -> list[dict[str, Any]]:
    if isinstance(messages, str):
        return [{"role": "user", "content": messages}]
    if not isinstance(messages, list):
        raise InvalidRequest("messages must be a list of {role, content} dicts or a string")
    out = []
    for item in messages:
        if not isinstance(item, dict) or "role" not in item:
            raise InvalidRequest(f"each message needs a 'role': got {item!r:.80}")
        out.append({k: item[k] for k in _CHAT_KEYS if k in item})
    return out


class RunContext:
    """The loop-side state of one live run. Environment methods land here."""

    def __init__(
        self,
        manager: RunManager,
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
        self._end: tuple[RunStatus, str | None] | None = None
        self._outcome: tuple[RunStatus, str | None] | None = None
        self.parent: RunContext | None = None
        """The run that started this one with ``env.run_agent`` (a child run), if any."""
        self.relay: tuple[RunContext, str] | None = None
        """(parent, step id) when this child's message deltas are relayed to its parent."""
        self._children: dict[str, RunContext] = {}
        """Child runs whose step is still open, by step id."""
        self._handlers: list[StreamHandler] = []
        self._open_steps: dict[str, dict[str, Any]] = {}
        """Run steps created and not yet ended, by id (tool calls, child runs)."""
        self._pumps: set[asyncio.Task[None]] = set()
        self._step_writes: set[asyncio.Task[None]] = set()
        """Store writes of steps not yet done (awaited by ``_finish``)."""
        self._thread_futures: set[concurrent.futures.Future[Any]] = set()
        self.done = asyncio.Event()

    # -- events ----------------------------------------------------------------------

    def publish(self, name: str, payload: dict[str, Any]) -> int:
        event = self.stream.publish(name, payload)
        assert event.id is not None
        self.runlog.record(event.id, name, payload)
        if self.relay is not None and name == "thread.message.delta":
            self._relay_delta(payload)
        return event.id

    def _relay_delta(self, payload: dict[str, Any]) -> None:
        assert self.relay is not None
        parent, step_id = self.relay
        if parent.run.terminal or step_id not in parent._open_steps:
            return
        parent.publish(
            "thread.agent.child_delta",
            {
                "object": "thread.agent.child_delta",
                "run_id": parent.run.id,
                "step_id": step_id,
                "child_thread_id": self.run.thread_id,
                "child_run_id": self.run.id,
                "message_id": payload["id"],
                "text": delta_text(payload),
            },
        )

    def new_step(self, kind: str, details: dict[str, Any]) -> dict[str, Any]:
        """Publish ``thread.run.step.created`` and ``.in_progress`` of a new step."""
        step: dict[str, Any] = {
            "id": new_id("step"),
            "object": "thread.run.step",
            "created_at": now(),
            "run_id": self.run.id,
            "assistant_id": self.agent.name,
            "thread_id": self.run.thread_id,
            "type": kind,
            "status": "in_progress",
            "cancelled_at": None,
            "completed_at": None,
            "expired_at": None,
            "failed_at": None,
            "last_error": None,
            "metadata": {},
            "usage": None,
            "step_details": details,
        }
        self._open_steps[step["id"]] = step
        # Copies: the run log keeps the published payloads, and the step changes later.
        self.publish("thread.run.step.created", dict(step))
        self.publish("thread.run.step.in_progress", dict(step))
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
        if self._open_steps.pop(step["id"], None) is None:
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
        self.publish(f"thread.run.step.{status}", dict(step))
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
            logger.warning("run %s: storing a step failed: %s", self.run.id, _describe(error))

    async def _steps_stored(self) -> None:
        """Wait for every pending step write (they are not cancelled if this wait is;
        their failures are logged by :meth:`_step_written`)."""
        if self._step_writes:
            await asyncio.wait(list(self._step_writes))

    def _publish_created(self, handler: StreamHandler) -> None:
        """Publish a streamed message's ``created`` and ``in_progress``, once."""
        if handler.published:
            return
        handler.published = True
        self.publish("thread.message.created", handler.message.to_dict())
        self.publish("thread.message.in_progress", handler.message.to_dict())

    # -- agent-written events --------------------------------------------------------

    def _agent_event(self, name: str, payload: dict[str, Any]) -> int:
        if self.cancel_requested or self.finishing or self.run.terminal:
            raise RunCancelled("the run was cancelled")
        try:
            size = len(orjson.dumps(payload))
        except TypeError as exc:
            raise InvalidRequest(f"the data of {name} is not JSON-serialisable: {exc}") from None
        if size > MAX_AGENT_EVENT_BYTES:
            raise InvalidRequest(
                f"{name} is {size} bytes of JSON; the limit is {MAX_AGENT_EVENT_BYTES}"
            )
        return self.publish(name, payload)

    def progress(self, text: str) -> int:
        """Publish an agent-written progress line (``thread.agent.progress``); its id."""
        if not isinstance(text, str):
            raise InvalidRequest(f"stream_text takes a str, not {type(text).__name__}")
        payload = {
            "object": "thread.agent.progress",
            "run_id": self.run.id,
            "thread_id": self.run.thread_id,
            "text": text,
        }
        return self._agent_event("thread.agent.progress", payload)

    def emit(self, name: str, data: Any) -> int:
        """Publish an agent-written event ``thread.agent.<name>``; its id."""
        if not isinstance(name, str) or not AGENT_EVENT_NAME.match(name):
            raise InvalidRequest(
                f"event name {name!r} must be 1-64 letters, digits, '_', '.' or '-' "
                "(it is sent as thread.agent.<name>)"
            )
        if name in RESERVED_AGENT_EVENTS:
            raise InvalidRequest(
                f"thread.agent.{name} is written by agentstream itself; pick another name"
            )
        payload = {
            "object": "thread.agent.event",
            "run_id": self.run.id,
            "thread_id": self.run.thread_id,
            "name": name,
            "data": data,
        }
        return self._agent_event(f"thread.agent.{name}", payload)

    # -- child runs ------------------------------------------------------------------

    async def run_child(self, agent_name: str, query: str, *, relay: bool) -> ChildRunResult:
        """Run ``agent_name`` on a new child thread holding ``query``; wait for its end.

        The parent's stream carries a ``child_run`` step naming the child's thread and run
        (and, with ``relay``, its message deltas as ``thread.agent.child_delta``).
        Cancelling this run cancels the child."""
        if self.cancel_requested:
            raise RunCancelled("the run was cancelled")
        if not isinstance(query, str):
            raise InvalidRequest(f"run_agent's query must be a str, not {type(query).__name__}")
        manager = self.manager
        agent = manager.catalog.get(agent_name)
        parent_thread = await manager.store.get_thread(self.run.thread_id)
        links = {"parent_thread_id": self.run.thread_id, "parent_run_id": self.run.id}
        thread = Thread(
            id=new_id("thread"), created_at=now(), metadata=dict(links), owner=parent_thread.owner
        )
        await manager.store.create_thread(thread)
        await manager.store.add_message(
            Message(
                id=new_id("msg"),
                thread_id=thread.id,
                role="user",
                content=query,
                created_at=now(),
                completed_at=now(),
            )
        )
        if self.cancel_requested:
            raise RunCancelled("the run was cancelled")
        child = await manager.create(thread.id, agent.id, metadata=links, parent=self)
        # No await from here to the wait: the child's first event comes after this.
        step = self.new_step("child_run", _child_details(child))
        self._children[step["id"]] = child
        if relay:
            child.relay = (self, step["id"])
        try:
            await child.done.wait()
        except asyncio.CancelledError:
            manager.cancel_now(child)
            raise
        self._end_child_step(step["id"])
        texts = [
            m.content
            for m in await manager.thread_messages(thread.id)
            if m.run_id == child.run.id and m.role == "assistant"
        ]
        error = (child.run.last_error or {}).get("message")
        return ChildRunResult(
            thread_id=thread.id,
            run_id=child.run.id,
            assistant_id=agent.name,
            status=child.run.status,
            texts=texts,
            error=error,
        )

    def _end_child_step(self, step_id: str) -> None:
        child = self._children.pop(step_id, None)
        step = self._open_steps.get(step_id)
        if child is None or step is None:
            return
        status = _CHILD_STEP_STATUS.get(child.run.status, "completed")
        error = (child.run.last_error or {}).get("message")
        self.end_step(step, status, _child_details(child), error=error)

    async def _end_children(self) -> None:
        """The run is ending: cancel its live children, wait (bounded) for their ends,
        and end their steps with the children's statuses."""
        children = list(self._children.items())
        for _step_id, child in children:
            self.manager.cancel_now(child)
        waits = [child.done.wait() for _step_id, child in children if not child.done.is_set()]
        if waits:
            try:
                async with asyncio.timeout(5.0):
                    await asyncio.gather(*waits)
            except TimeoutError:
                logger.warning("run %s: child runs did not end within 5s", self.run.id)
        for step_id, _child in children:
            self._end_child_step(step_id)

    async def _set_status(self, status: RunStatus, **fields: Any) -> None:
        """Record a (non-terminal) status change in the store, then publish it (store
        first, so a client that reads the run after seeing the event sees the new
        status). The terminal status is written by :meth:`_finish`."""
        self.run.status = status
        for key, value in fields.items():
            setattr(self.run, key, value)
        await self.manager.store.update_run(self.run)
        self.publish(f"thread.run.{status}", self.run.to_dict())

    # -- ending ----------------------------------------------------------------------

    def end(self, status: RunStatus, message: str | None = None) -> None:
        """Stop the run now with ``status`` (cancel, expiry, provider failure, shutdown)."""
        if self._end is not None or self.run.terminal or self.finishing:
            return
        self._end = (status, message)
        self.cancel_requested = True
        for handler in self._handlers:
            handler.interrupt()
        for future in list(self._thread_futures):
            future.cancel()
        if self.task is not None:
            self.task.cancel()

    def set_outcome(self, status: RunStatus, message: str | None = None) -> None:
        """How the run ends when the agent returns (``mark_done``, ``mark_failed``…)."""
        self._outcome = (status, message)

    def track_thread_future(self, future: concurrent.futures.Future[Any]) -> None:
        self._thread_futures.add(future)

    def untrack_thread_future(self, future: concurrent.futures.Future[Any]) -> None:
        self._thread_futures.discard(future)

    def log(self, line: str, level: int) -> None:
        logging.getLogger(f"agent_runtime.agent.{self.agent.name}").log(level, "%s", line)

    # -- completions -----------------------------------------------------------------

    def _request(
        self, messages: list[dict[str, Any]] | str, model: str | None, kwargs: dict[str, Any]
    ) -> tuple[ModelProvider, CompletionRequest]:
        defaults = self.agent.defaults
        provider_name = kwargs.pop("provider", None) or defaults.model_provider
        provider, model_name = self.manager.models.resolve(model or self.run.model, provider_name)
        temperature = kwargs.pop("temperature", defaults.model_temperature)
        max_tokens = kwargs.pop("max_tokens", defaults.model_max_tokens)
        request = CompletionRequest(
            model=model_name,
            messages=_chat_messages(messages),
            temperature=temperature,
            max_tokens=max_tokens,
            extra=kwargs,
        )
        return provider, request

    async def complete(
        self, messages: list[dict[str, Any]] | str, model: str | None, kwargs: dict[str, Any]
    ) -> ChatCompletion:
        provider, request = self._request(messages, model, dict(kwargs))
        return await provider.complete(request)

    async def start_stream(
        self, messages: list[dict[str, Any]] | str, model: str | None, kwargs: dict[str, Any]
    ) -> StreamHandler:
        if self.cancel_requested:
            raise RunCancelled("the run was cancelled")
        provider, request = self._request(messages, model, dict(kwargs))
        message = self._new_message()
        handler = StreamHandler(message, self.loop, self.loop_thread)
        self._handlers.append(handler)
        if not request.extra.get("tools"):
            # With tools the completion may hold only tool calls: its message is created
            # with its first text, so a tool-call-only completion leaves no empty message.
            self._publish_created(handler)
        pump = asyncio.create_task(self._pump(provider, request, handler))
        self._pumps.add(pump)
        pump.add_done_callback(self._pumps.discard)
        return handler

    async def _pump(
        self, provider: ModelProvider, request: CompletionRequest, handler: StreamHandler
    ) -> None:
        message_id = handler.message.id
        step: dict[str, Any] | None = None
        seen: set[int] = set()
        try:
            async for chunk in provider.stream(request):
                text = handler.push(chunk)
                if text:
                    self._publish_created(handler)
                    self.publish("thread.message.delta", delta_payload(message_id, text))
                fragments = _tool_call_fragments(chunk, seen)
                if fragments:
                    if step is None:
                        step = self.new_step("tool_calls", {"type": "tool_calls", "tool_calls": []})
                    self.publish("thread.run.step.delta", step_delta_payload(step["id"], fragments))
        except asyncio.CancelledError:
            handler.end(RunCancelled("the run ended before the completion finished"))
            raise
        except Exception as exc:
            error = exc if isinstance(exc, AgentRuntimeError) else ProviderError(str(exc))
            logger.info("run %s: completion stream failed: %s", self.run.id, error)
            handler.end(error)
            self.end("failed", f"model provider error: {error}")
        else:
            if step is not None:
                self.end_step(step, "completed", _tool_calls_details(handler))
            handler.end()

    def _new_message(self, role: str = "assistant", content: str = "") -> Message:
        return Message(
            id=new_id("msg"),
            thread_id=self.run.thread_id,
            role="user" if role == "user" else "assistant",
            content=content,
            created_at=now(),
            status="in_progress",
            run_id=self.run.id,
            assistant_id=self.agent.name,
        )

    # -- the thread ------------------------------------------------------------------

    async def reply_from_stream(self, handler: StreamHandler) -> Message:
        text = await handler.await_text()
        if handler.replied:
            raise AgentRuntimeError(f"the completion {handler.id} was already added")
        handler.replied = True
        self._publish_created(handler)
        message = handler.message
        message.content = text
        message.status = "completed"
        message.completed_at = now()
        try:
            await self.manager.store.add_message(message)
        except BaseException:
            # Not stored, so not completed: the run's ending closes it (incomplete).
            handler.replied = False
            message.status, message.completed_at = "in_progress", None
            raise
        self.publish("thread.message.completed", message.to_dict())
        return message

    async def reply_text(self, text: str) -> Message:
        message = self._new_message()
        self.publish("thread.message.created", message.to_dict())
        self.publish("thread.message.in_progress", message.to_dict())
        if text:
            self.publish("thread.message.delta", delta_payload(message.id, text))
        message.content = text
        message.status = "completed"
        message.completed_at = now()
        try:
            await self.manager.store.add_message(message)
        except BaseException:
            # The stream never shows as completed what the store does not have.
            message.status, message.completed_at = "incomplete", None
            message.incomplete_at, message.incomplete_reason = now(), "run_failed"
            self.publish("thread.message.incomplete", message.to_dict())
            self.manager.repairs.add(self.run.thread_id, self.run.id, messages=[message])
            raise
        self.publish("thread.message.completed", message.to_dict())
        return message

    async def add_message(self, role: str, content: str) -> Message:
        if role not in ("user", "assistant"):
            raise InvalidRequest(f"role must be 'user' or 'assistant', not {role!r}")
        if role == "assistant":
            return await self.reply_text(content)
        message = self._new_message("user", content)
        message.status = "completed"
        message.completed_at = message.created_at
        await self.manager.store.add_message(message)
        return message

    async def messages(self) -> list[Message]:
        return await self.manager.thread_messages(self.run.thread_id)

    # -- execution -------------------------------------------------------------------

    async def execute(self) -> None:
        """The run's task body: wait for a slot, run the agent, end the run."""
        bind_run(self.run.id, self.run.thread_id)  # this task's context: its logs carry them
        status: RunStatus = "completed"
        error: str | None = None
        try:
            async with asyncio.timeout_at(self.deadline):
                # A child run runs within its parent's slot: it never waits for one.
                async with self.manager.slot() if self.parent is None else _NoSlot():
                    await self._set_status("in_progress", started_at=now())
                    env = Environment(self)
                    if self.agent.style == "async":
                        await self.agent.run_async(env)
                    else:
                        await _in_daemon_thread(self.agent.run_sync, env, self.run.id)
            if self._outcome is not None:
                status, error = self._outcome
        except TimeoutError:
            status, error = "expired", None
        except asyncio.CancelledError:
            status, error = self._end or ("failed", "the run was interrupted")
            if self._end is None:
                await self._finish(status, error)
                raise
            # We asked for this cancellation (RunContext.end): absorb it and end the run.
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
        except RunCancelled:
            status, error = self._end or ("cancelled", None)
        except (SystemExit, KeyboardInterrupt, _AgentExit) as exc:
            # An agent calling sys.exit() (or raising KeyboardInterrupt) ends its run,
            # never the hub: exit status 0 or None completes it, anything else fails it.
            status, error = self._end or _exit_outcome(exc)
            logger.warning("run %s: the agent exited: %s", self.run.id, error or "status 0")
        except Exception as exc:  # the agent's own failure ends the run, never the hub
            status, error = self._end or ("failed", _describe(exc))
            # The hub's own unavailability (a full disk…) is not the agent's bug: no trace.
            trace = None if isinstance(exc, ServiceUnavailable) else exc
            logger.warning("run %s: the agent failed: %s", self.run.id, error, exc_info=trace)
        if self._end is not None:
            status, error = self._end
        await self._finish(status, error)

    async def _finish(self, status: RunStatus, error: str | None) -> None:
        """End the run: close what is open, write its final state, publish its terminal
        event and close its stream. The terminal event is published and the stream
        closed whatever happens here (a store that fails or hangs, a bug): a write that
        fails is logged with the run's id and retried in the background (see
        :class:`~agent_runtime.repairs.Repairs`)."""
        self.finishing = True  # from here on, end() must not cancel this task
        try:
            for handler in self._handlers:
                if not handler.done:
                    handler.interrupt()
            pumps = list(self._pumps)
            for pump in pumps:
                pump.cancel()
            if pumps:
                await asyncio.gather(*pumps, return_exceptions=True)
            for handler in self._handlers:
                if not handler.replied:
                    await self._close_unreplied(handler, status)
            await self._end_children()
            await self._end_open_steps(status)
            await self._steps_stored()  # the steps are in the store before the run's end
        except Exception as exc:  # never stops the ending
            logger.exception("run %s: error while ending (ending it anyway)", self.run.id)
            if status == "completed":
                status, error = "failed", _describe(exc)
        self._set_final(status, error)
        try:
            # Store first (bounded), so a client that reads the run after seeing its
            # terminal event sees it ended; then the event, whatever the store did.
            await self._write_final()
        finally:
            try:
                self.publish(f"thread.run.{status}", self.run.to_dict())
            finally:
                self.stream.close()
                self.done.set()

    def _set_final(self, status: RunStatus, error: str | None) -> None:
        """The run's final status and stamps; its terminal event's id is the next one."""
        stamp = now()
        self.run.status = status
        if status == "completed":
            self.run.completed_at = stamp
        elif status == "failed":
            self.run.failed_at = stamp
            self.run.last_error = {"code": "server_error", "message": error or "the run failed"}
        elif status == "cancelled":
            self.run.cancelled_at = stamp
        self.cancel_requested = True
        self.run.last_event_id = self.stream.head + 1

    async def _write_final(self) -> None:
        """Store the run's final state and its event log, its terminal event included
        (bounded by ``final_write_timeout``). A failure is logged with the run's id and
        queued for repair; it never raises (but for cancellation)."""
        run = dataclasses.replace(self.run)
        log = self.stored_log()
        terminal = run.last_event_id
        log["items"].append([terminal, terminal, f"thread.run.{run.status}", run.to_dict()])
        log["head"] = terminal
        try:
            async with asyncio.timeout(self.manager.config.final_write_timeout):
                await self.manager.store.update_run(run)
                await self.manager.store.save_run_log(run.thread_id, run.id, log)
        except (Exception, TimeoutError) as exc:
            if isinstance(exc, NotFound):
                logger.info("run %s ended after its thread was deleted", run.id)
                return
            logger.error(
                "run %s ended %s but its final state could not be stored (%s); "
                "retrying in the background",
                run.id,
                run.status,
                "timed out" if isinstance(exc, TimeoutError) else _describe(exc),
            )
            self.manager.repairs.add(run.thread_id, run.id, run=run, log=log)

    @property
    def head(self) -> int:
        """The id of the run's last published event."""
        return self.stream.head

    def stored_log(self) -> dict[str, Any]:
        """The run's state as the store keeps it: its compacted event log (see
        :meth:`RunLog.compact`) and the stream's head when it was taken."""
        return {"head": self.stream.head, "items": self.runlog.compact()}

    async def _end_open_steps(self, status: RunStatus) -> None:
        """Steps still open when the run ends: a step's status follows the run's."""
        step_status = status if status in ("failed", "cancelled", "expired") else "cancelled"
        for step in list(self._open_steps.values()):
            self.end_step(step, step_status, error=f"the run ended {status}")

    async def _close_unreplied(self, handler: StreamHandler, status: RunStatus) -> None:
        """A streamed message the agent never added: it ends ``incomplete``. If the run
        failed mid-stream, the partial text is kept in the thread. A message never
        created (a completion that streamed only tool calls) leaves nothing."""
        if not handler.published:
            return
        message = handler.message
        message.content = handler.text
        message.status = "incomplete"
        message.incomplete_at = now()
        message.incomplete_reason = {
            "failed": "run_failed",
            "cancelled": "run_cancelled",
            "expired": "run_expired",
        }.get(status, "not_added")
        if status in ("failed", "cancelled", "expired") and message.content:
            try:
                await self.manager.store.add_message(message)
            except Exception as exc:
                logger.error("run %s: message %s not stored: %s", self.run.id, message.id, exc)
                self.manager.repairs.add(self.run.thread_id, self.run.id, messages=[message])
        self.publish("thread.message.incomplete", message.to_dict())


def _child_details(child: RunContext) -> dict[str, Any]:
    return {
        "type": "child_run",
        "child_run": {
            "thread_id": child.run.thread_id,
            "run_id": child.run.id,
            "assistant_id": child.agent.name,
            "status": child.run.status,
        },
    }


def _tool_call_fragments(chunk: Any, seen: set[int]) -> list[dict[str, Any]]:
    """The ``thread.run.step.delta`` tool call entries of one chunk. A call's first
    fragment carries its id, type and name (the SDK concatenates repeated strings)."""
    out: list[dict[str, Any]] = []
    for choice in chunk.choices:
        for call in choice.delta.tool_calls or ():
            function = call.function
            name = function.name if function is not None else None
            arguments = (function.arguments if function is not None else None) or ""
            if call.index not in seen:
                seen.add(call.index)
                entry: dict[str, Any] = {
                    "index": call.index,
                    "id": call.id or f"call_{call.index}",
                    "type": "function",
                    "function": {"name": name or "", "arguments": arguments, "output": None},
                }
            elif arguments or name:
                fn: dict[str, Any] = {"arguments": arguments}
                if name:
                    fn["name"] = name
                entry = {"index": call.index, "type": "function", "function": fn}
            else:
                continue
            out.append(entry)
    return out


def _tool_calls_details(handler: StreamHandler) -> dict[str, Any]:
    calls = [
        {
            "id": call.id,
            "type": "function",
            "function": {
                "name": call.function.name,
                "arguments": call.function.arguments,
                "output": None,
            },
        }
        for call in handler.tool_calls
    ]
    return {"type": "tool_calls", "tool_calls": calls}


async def _in_daemon_thread(fn: Callable[[Environment], None], env: Environment, name: str) -> None:
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
            error = _AgentExit(exc)
        except BaseException as exc:  # handed to the loop, which decides the run's end
            error = exc
        try:
            loop.call_soon_threadsafe(settle, error)
        except RuntimeError:  # the loop is closed: the process is exiting
            pass

    context = contextvars.copy_context()  # the run's ids follow it into the thread
    threading.Thread(target=context.run, args=(target,), name=f"agent {name}", daemon=True).start()
    await done


class _AgentExit(Exception):
    """A synchronous agent's ``SystemExit``/``KeyboardInterrupt``, carried to the loop as an
    ordinary exception (raised there as itself it would stop the event loop)."""

    def __init__(self, original: BaseException) -> None:
        super().__init__(original)
        self.original = original


def _exit_outcome(exc: BaseException) -> tuple[RunStatus, str | None]:
    original = exc.original if isinstance(exc, _AgentExit) else exc
    if isinstance(original, SystemExit) and original.code in (0, None):
        return "completed", None
    return "failed", f"the agent exited ({_describe(original)})"


def _describe(exc: BaseException) -> str:
    try:
        text = str(exc)
    except Exception:  # an exception that cannot be printed still ends its run
        text = f"<unprintable {type(exc).__name__}>"
    if isinstance(exc, AgentRuntimeError):
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class RunManager:
    """Creates runs, tracks their tasks, cancels them, and ends them all on shutdown."""

    def __init__(
        self,
        *,
        store: Store,
        registry: Registry,
        catalog: AgentCatalog,
        models: ModelRouter,
        config: RunsConfig | None = None,
    ) -> None:
        self.store = store
        self.registry = registry
        self.catalog = catalog
        self.models = models
        self.config = config or RunsConfig()
        self._live: dict[str, RunContext] = {}
        self._live_by_thread: dict[str, str] = {}
        limit = self.config.max_concurrent_runs
        self._slots = asyncio.Semaphore(limit) if limit else None
        self._closing = False
        self.cluster: Cluster | None = None
        """Set when this hub is one node of several on Redis (see :mod:`.cluster`)."""
        self.finished: Counter[str] = Counter()
        """Runs ended since start, by terminal status (for metrics)."""
        self.started = 0
        self.repairs = Repairs(store)
        """Final writes that failed, retried until the store takes them."""
        self.checkpoints = Checkpointer(store, self.config.checkpoint_interval, self.live_contexts)
        self._deleting: set[str] = set()
        """Threads being deleted: no run may start on them meanwhile."""

    def slot(self) -> asyncio.Semaphore | _NoSlot:
        return self._slots if self._slots is not None else _NoSlot()

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
        out: list[Message] = []
        after: str | None = None
        while True:
            page = await self.store.list_messages(thread_id, order="asc", limit=1000, after=after)
            out.extend(page.data)
            if not page.has_more or not page.data:
                return out
            after = page.data[-1].id

    async def run_steps(self, thread_id: str, run_id: str) -> list[RunStep]:
        """Every stored step of the run, oldest first."""
        out: list[RunStep] = []
        after: str | None = None
        while True:
            page = await self.store.list_steps(
                thread_id, run_id, order="asc", limit=1000, after=after
            )
            out.extend(page.data)
            if not page.has_more or not page.data:
                return out
            after = page.data[-1].id

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
    ) -> RunContext:
        """Start a run. Raises NotFound (thread, agent), Conflict (a live run).
        ``parent``: the run starting this one as its child (``env.run_agent``)."""
        if self._closing:
            raise ServiceUnavailable("the hub is shutting down; retry on another instance")
        await self.store.get_thread(thread_id)
        agent = self.catalog.get(assistant_id)
        if thread_id in self._deleting:
            raise Conflict(f"Thread {thread_id} is being deleted.", param="thread_id")
        if thread_id in self._live_by_thread:
            raise Conflict(
                f"Thread {thread_id} already has an active run {self._live_by_thread[thread_id]}.",
                param="thread_id",
            )
        if parent is None:  # a child runs in its parent's slot: it never waits for one
            self._check_queue()
        run_id = new_id("run")
        # Claim the thread before the first await, so concurrent requests get the 409.
        self._live_by_thread[thread_id] = run_id
        cluster = self.cluster
        claimed = False
        try:
            if cluster is not None:  # and across every node
                holder = await cluster.claim(thread_id, run_id)
                if holder is not None:
                    raise Conflict(
                        f"Thread {thread_id} already has an active run {holder}.",
                        param="thread_id",
                    )
                claimed = True
            return await self._create(
                run_id, thread_id, agent, model, instructions, additional_messages, metadata, parent
            )
        except BaseException:
            if self._live_by_thread.get(thread_id) == run_id:
                del self._live_by_thread[thread_id]
            self._live.pop(run_id, None)
            self.registry.discard(run_id)
            if claimed and cluster is not None:
                cluster.release_soon(thread_id, run_id)
            raise

    def _check_queue(self) -> None:
        """Refuse a run (429) when ``max_queued_runs`` runs already wait for a slot: the
        top-level runs live or being created here beyond ``max_concurrent_runs``. Called
        with no await before the thread is claimed, so concurrent requests count each
        other."""
        slots, limit = self.config.max_concurrent_runs, self.config.max_queued_runs
        if slots is None or limit is None:
            return
        creating = sum(1 for run_id in self._live_by_thread.values() if run_id not in self._live)
        waiting = creating + sum(1 for c in self._live.values() if c.parent is None) - slots
        if waiting >= limit:
            raise LimitReached(
                f"{max(waiting, 0)} runs are already waiting for one of the "
                f"{slots} run slots; the limit is {limit} waiting runs (set with "
                "--max-queued-runs / max_queued_runs). Retry later.",
                param="max_queued_runs",
                code="queue_full",
                retry_after=1,
            )

    async def _create(
        self,
        run_id: str,
        thread_id: str,
        agent: Agent,
        model: str | None,
        instructions: str | None,
        additional_messages: Sequence[tuple[str, str]],
        metadata: dict[str, str] | None,
        parent: RunContext | None = None,
    ) -> RunContext:
        for role, content in additional_messages:
            await self.store.add_message(
                Message(
                    id=new_id("msg"),
                    thread_id=thread_id,
                    role="assistant" if role == "assistant" else "user",
                    content=content,
                    created_at=now(),
                    completed_at=now(),
                )
            )
        loop = asyncio.get_running_loop()
        expires_after = self.config.expires_after
        run = Run(
            id=run_id,
            thread_id=thread_id,
            assistant_id=agent.name,
            created_at=now(),
            expires_at=math.ceil(time.time() + expires_after),
            model=self.models.force_model
            or model
            or agent.defaults.model
            or self.models.default_model,
            instructions=instructions,
            metadata=dict(metadata or {}),
        )
        log = RunLog()
        stream = self.registry.create(
            run.id, snapshot=log.snapshot, resume_snapshot=log.resume_snapshot
        )
        ctx = RunContext(self, run, agent, stream, log, deadline=loop.time() + expires_after)
        ctx.parent = parent
        await self.store.create_run(run)
        self._live[run.id] = ctx
        ctx.publish("thread.run.created", run.to_dict())
        ctx.publish("thread.run.queued", run.to_dict())
        self.started += 1
        self.checkpoints.start()
        ctx.task = asyncio.create_task(ctx.execute(), name=f"run {run.id}")
        ctx.task.add_done_callback(lambda _t: self._forget(ctx))
        return ctx

    def _forget(self, ctx: RunContext) -> None:
        self.finished[ctx.run.status] += 1
        self._live.pop(ctx.run.id, None)
        if self._live_by_thread.get(ctx.run.thread_id) == ctx.run.id:
            del self._live_by_thread[ctx.run.thread_id]
        if self.cluster is not None:
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
        if ctx is None and self.cluster is not None and not local:
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
            ctx.publish("thread.run.cancelling", ctx.run.to_dict())
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
        ctx.publish("thread.run.cancelling", ctx.run.to_dict())
        ctx.end("cancelled")

    async def shutdown(self, *, grace: float = 0.0, timeout: float = 5.0) -> None:
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


class _NoSlot:
    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: object) -> None:
        return None
