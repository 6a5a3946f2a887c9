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
import contextvars
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from openai.types.chat import ChatCompletion

from broker import Registry, Stream

from .agents import Agent, AgentCatalog
from .environment import Environment
from .errors import (
    AgentRuntimeError,
    Conflict,
    InvalidRequest,
    ProviderError,
    RunCancelled,
    ServiceUnavailable,
)
from .logs import bind_run
from .models.base import CompletionRequest, ModelProvider
from .models.router import ModelRouter
from .objects import Message, Run, RunStatus, new_id, now
from .run_log import RunLog, delta_payload
from .store import Store
from .stream_handler import StreamHandler

__all__ = ["RunContext", "RunManager", "RunsConfig"]

logger = logging.getLogger(__name__)

_CHAT_KEYS = ("role", "content", "name", "tool_calls", "tool_call_id")


@dataclass(frozen=True, slots=True)
class RunsConfig:
    expires_after: float = 600.0
    """Seconds from creation after which a live run ends ``expired``."""
    max_concurrent_runs: int | None = None
    """Runs executing at once; further runs wait ``queued`` for a slot."""


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
        self._handlers: list[StreamHandler] = []
        self._pumps: set[asyncio.Task[None]] = set()
        self._thread_futures: set[concurrent.futures.Future[Any]] = set()
        self.done = asyncio.Event()

    # -- events ----------------------------------------------------------------------

    def publish(self, name: str, payload: dict[str, Any]) -> int:
        event = self.stream.publish(name, payload)
        assert event.id is not None
        self.runlog.record(event.id, name, payload)
        return event.id

    async def _set_status(self, status: RunStatus, **fields: Any) -> None:
        """Record a status change in the store, then publish it (store first, so a client
        that reads the run after seeing the event sees the new status)."""
        self.run.status = status
        for key, value in fields.items():
            setattr(self.run, key, value)
        if self.run.terminal:
            self.run.last_event_id = self.stream.head + 1
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
        self.publish("thread.message.created", message.to_dict())
        self.publish("thread.message.in_progress", message.to_dict())
        pump = asyncio.create_task(self._pump(provider, request, handler))
        self._pumps.add(pump)
        pump.add_done_callback(self._pumps.discard)
        return handler

    async def _pump(
        self, provider: ModelProvider, request: CompletionRequest, handler: StreamHandler
    ) -> None:
        message_id = handler.message.id
        try:
            async for chunk in provider.stream(request):
                text = handler.push(chunk)
                if text:
                    self.publish("thread.message.delta", delta_payload(message_id, text))
        except asyncio.CancelledError:
            handler.end(RunCancelled("the run ended before the completion finished"))
            raise
        except Exception as exc:
            error = exc if isinstance(exc, AgentRuntimeError) else ProviderError(str(exc))
            logger.info("run %s: completion stream failed: %s", self.run.id, error)
            handler.end(error)
            self.end("failed", f"model provider error: {error}")
        else:
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
        message = handler.message
        message.content = text
        message.status = "completed"
        message.completed_at = now()
        await self.manager.store.add_message(message)
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
        await self.manager.store.add_message(message)
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
                async with self.manager.slot():
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
        except Exception as exc:  # the agent's own failure ends the run, never the hub
            status, error = self._end or ("failed", _describe(exc))
            logger.warning("run %s: the agent failed: %s", self.run.id, error, exc_info=exc)
        if self._end is not None:
            status, error = self._end
        await self._finish(status, error)

    async def _finish(self, status: RunStatus, error: str | None) -> None:
        self.finishing = True  # from here on, end() must not cancel this task
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
        stamp = now()
        fields: dict[str, Any] = {}
        if status == "completed":
            fields["completed_at"] = stamp
        elif status == "failed":
            fields["failed_at"] = stamp
            fields["last_error"] = {"code": "server_error", "message": error or "the run failed"}
        elif status == "cancelled":
            fields["cancelled_at"] = stamp
        self.cancel_requested = True
        await self._set_status(status, **fields)
        self.stream.close()
        self.done.set()

    async def _close_unreplied(self, handler: StreamHandler, status: RunStatus) -> None:
        """A streamed message the agent never added: it ends ``incomplete``. If the run
        failed mid-stream, the partial text is kept in the thread."""
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
            await self.manager.store.add_message(message)
        self.publish("thread.message.incomplete", message.to_dict())


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
        except BaseException as exc:  # handed to the loop, which decides the run's end
            error = exc
        try:
            loop.call_soon_threadsafe(settle, error)
        except RuntimeError:  # the loop is closed: the process is exiting
            pass

    context = contextvars.copy_context()  # the run's ids follow it into the thread
    threading.Thread(target=context.run, args=(target,), name=f"agent {name}", daemon=True).start()
    await done


def _describe(exc: BaseException) -> str:
    text = str(exc)
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
        self.finished: Counter[str] = Counter()
        """Runs ended since start, by terminal status (for metrics)."""
        self.started = 0

    def slot(self) -> asyncio.Semaphore | _NoSlot:
        return self._slots if self._slots is not None else _NoSlot()

    def live(self, run_id: str) -> RunContext | None:
        return self._live.get(run_id)

    def live_on_thread(self, thread_id: str) -> RunContext | None:
        run_id = self._live_by_thread.get(thread_id)
        return None if run_id is None else self._live.get(run_id)

    @property
    def live_count(self) -> int:
        return len(self._live)

    def live_by_status(self) -> Counter[str]:
        return Counter(ctx.run.status for ctx in self._live.values())

    async def thread_messages(self, thread_id: str) -> list[Message]:
        out: list[Message] = []
        after: str | None = None
        while True:
            page = await self.store.list_messages(thread_id, order="asc", limit=1000, after=after)
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
    ) -> RunContext:
        """Start a run. Raises NotFound (thread, agent), Conflict (a live run)."""
        if self._closing:
            raise ServiceUnavailable("the hub is shutting down; retry on another instance")
        await self.store.get_thread(thread_id)
        agent = self.catalog.get(assistant_id)
        if thread_id in self._live_by_thread:
            raise Conflict(
                f"Thread {thread_id} already has an active run {self._live_by_thread[thread_id]}.",
                param="thread_id",
            )
        run_id = new_id("run")
        # Claim the thread before the first await, so concurrent requests get the 409.
        self._live_by_thread[thread_id] = run_id
        try:
            return await self._create(
                run_id, thread_id, agent, model, instructions, additional_messages, metadata
            )
        except BaseException:
            if self._live_by_thread.get(thread_id) == run_id:
                del self._live_by_thread[thread_id]
            self._live.pop(run_id, None)
            self.registry.discard(run_id)
            raise

    async def _create(
        self,
        run_id: str,
        thread_id: str,
        agent: Agent,
        model: str | None,
        instructions: str | None,
        additional_messages: Sequence[tuple[str, str]],
        metadata: dict[str, str] | None,
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
        await self.store.create_run(run)
        self._live[run.id] = ctx
        ctx.publish("thread.run.created", run.to_dict())
        ctx.publish("thread.run.queued", run.to_dict())
        self.started += 1
        ctx.task = asyncio.create_task(ctx.execute(), name=f"run {run.id}")
        ctx.task.add_done_callback(lambda _t: self._forget(ctx))
        return ctx

    def _forget(self, ctx: RunContext) -> None:
        self.finished[ctx.run.status] += 1
        self._live.pop(ctx.run.id, None)
        if self._live_by_thread.get(ctx.run.thread_id) == ctx.run.id:
            del self._live_by_thread[ctx.run.thread_id]

    async def cancel(self, thread_id: str, run_id: str) -> Run:
        """Ask a live run to stop: ``cancelling`` now, ``cancelled`` when it has."""
        ctx = self._live.get(run_id)
        if ctx is None or ctx.run.thread_id != thread_id or ctx.run.terminal:
            run = await self.store.get_run(thread_id, run_id)
            raise InvalidRequest(f"Cannot cancel run with status '{run.status}'.", param="run_id")
        if ctx.run.status != "cancelling":
            # Publish and end synchronously, so that no ending can slip in between;
            # then persist (the store applies writes in order, the final status last).
            ctx.run.status = "cancelling"
            ctx.publish("thread.run.cancelling", ctx.run.to_dict())
            ctx.end("cancelled")
            await self.store.update_run(ctx.run)
        return ctx.run

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


class _NoSlot:
    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: object) -> None:
        return None
