"""Environment: what an agent can do during a run.

Two faces over one run:

* synchronous methods (``completion``, ``add_reply``, ``list_messages``…) for agents
  written as the bundled ``examples/streaming-example`` shows. They run in the agent's
  worker thread and hand every operation to the event loop (:func:`.hops.submit`: the
  calls of all agent threads waiting for the loop are taken in one loop turn), which owns
  every socket, buffer and store.
  Calling one on the loop thread is an error that points to its ``a…`` twin.
* awaitable twins (``acompletion``, ``aadd_reply``, ``alist_messages``…) for asynchronous
  agents, which run as tasks on the loop.

Cancellation: after the run is cancelled (or expires, or the hub shuts down), the next
Environment call of a synchronous agent raises
:class:`~agent_runtime.errors.RunCancelled`, which ends the agent's thread; an asynchronous
agent's task is cancelled outright.

Anything else an agent written for the description may call and that agentstream does
not support raises :class:`~agent_runtime.errors.UnsupportedOperation` naming it.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from openai.types.chat import ChatCompletion

from . import hops
from .errors import AgentRuntimeError, RunCancelled, UnsupportedOperation
from .stream_handler import StreamHandler

if TYPE_CHECKING:
    from .runs.ports import AgentPort, ChildRunResult

__all__ = ["Environment"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


class Environment:
    """The ``env`` an agent receives. One per run."""

    def __init__(self, ctx: AgentPort) -> None:
        self._ctx = ctx
        self.env_vars: dict[str, str] = {}

    # -- plumbing --------------------------------------------------------------------

    def _call(self, coro: Coroutine[Any, Any, T], name: str) -> T:
        ctx = self._ctx
        if threading.get_ident() == ctx.loop_thread:
            coro.close()
            raise AgentRuntimeError(
                f"env.{name}() blocks and cannot be called on the event loop; "
                f"asynchronous agents use 'await env.a{name}(...)'"
            )
        if ctx.cancel_requested:
            coro.close()
            raise RunCancelled("the run was cancelled")
        future = hops.submit(coro, ctx.loop)
        ctx.track_thread_future(future)
        try:
            return future.result()
        except concurrent.futures.CancelledError:
            raise RunCancelled("the run was cancelled") from None
        finally:
            ctx.untrack_thread_future(future)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        raise UnsupportedOperation(
            f"Environment.{name} is not supported by agentstream "
            "(supported: completion, completions, add_reply, add_message, list_messages, "
            "get_last_message, add_system_log, request_user_input, mark_done, mark_failed, "
            "get_thread_id, stream_text, emit, run_agent, and their 'a'-prefixed awaitable "
            "twins)"
        )

    # -- identity --------------------------------------------------------------------

    def get_thread_id(self) -> str:
        return self._ctx.run.thread_id

    def get_run_id(self) -> str:
        return self._ctx.run.id

    @property
    def agent_name(self) -> str:
        return self._ctx.agent_name

    # -- completions -----------------------------------------------------------------

    def completion(
        self,
        messages: list[dict[str, Any]] | str,
        model: str | None = None,
        stream: bool = False,
        **kwargs: Any,
    ) -> Any:
        """The completion's text, or a :class:`StreamHandler` with ``stream=True``."""
        return self._call(self.acompletion(messages, model, stream, **kwargs), "completion")

    async def acompletion(
        self,
        messages: list[dict[str, Any]] | str,
        model: str | None = None,
        stream: bool = False,
        **kwargs: Any,
    ) -> Any:
        if stream:
            return await self._ctx.start_stream(messages, model, kwargs)
        result = await self._ctx.complete(messages, model, kwargs)
        return (result.choices[0].message.content or "") if result.choices else ""

    def completions(
        self,
        messages: list[dict[str, Any]] | str,
        model: str | None = None,
        stream: bool = False,
        **kwargs: Any,
    ) -> Any:
        """The whole ``ChatCompletion`` object (or a :class:`StreamHandler` when streaming)."""
        return self._call(self.acompletions(messages, model, stream, **kwargs), "completions")

    async def acompletions(
        self,
        messages: list[dict[str, Any]] | str,
        model: str | None = None,
        stream: bool = False,
        **kwargs: Any,
    ) -> ChatCompletion | StreamHandler:
        if stream:
            return await self._ctx.start_stream(messages, model, kwargs)
        return await self._ctx.complete(messages, model, kwargs)

    # -- the thread ------------------------------------------------------------------

    def add_reply(self, message: str | StreamHandler, **kwargs: Any) -> dict[str, Any] | None:
        """Write an assistant message to the thread: a text, or a streamed completion
        (waits for its end). Returns the stored message object, or ``None`` for a
        completion that streamed no text (it only called tools): no message is added."""
        if isinstance(message, StreamHandler):
            message.wait()  # block in this worker thread, not on the loop
        return self._call(self.aadd_reply(message, **kwargs), "add_reply")

    async def aadd_reply(
        self, message: str | StreamHandler, **kwargs: Any
    ) -> dict[str, Any] | None:
        if isinstance(message, StreamHandler):
            added = await self._ctx.reply_from_stream(message)
            return None if added is None else added.to_dict()
        if not isinstance(message, str):
            raise AgentRuntimeError(
                f"add_reply takes a str or a StreamHandler, not {type(message).__name__}"
            )
        return (await self._ctx.reply_text(message)).to_dict()

    def add_message(self, role: str, content: str, **kwargs: Any) -> dict[str, Any]:
        return self._call(self.aadd_message(role, content, **kwargs), "add_message")

    async def aadd_message(self, role: str, content: str, **kwargs: Any) -> dict[str, Any]:
        return (await self._ctx.add_message(role, content)).to_dict()

    def list_messages(self, **kwargs: Any) -> list[dict[str, Any]]:
        """The thread's messages, oldest first, as ``{"id", "role", "content"}`` dicts."""
        return self._call(self.alist_messages(**kwargs), "list_messages")

    async def alist_messages(self, **kwargs: Any) -> list[dict[str, Any]]:
        return [m.as_chat() for m in await self._ctx.messages()]

    def get_last_message(self, role: str | None = "user") -> dict[str, Any] | None:
        return self._call(self.aget_last_message(role), "get_last_message")

    async def aget_last_message(self, role: str | None = "user") -> dict[str, Any] | None:
        for message in reversed(await self._ctx.messages()):
            if role is None or message.role == role:
                return message.as_chat()
        return None

    # -- agent-written events ----------------------------------------------------------

    def stream_text(self, text: str) -> int:
        """Show ``text`` to the run's subscribers now, as a progress line: a
        ``thread.agent.progress`` event ``{"object", "run_id", "thread_id", "text"}``,
        apart from the messages (the thread keeps nothing). Returns its event id."""
        return self._call(self.astream_text(text), "stream_text")

    async def astream_text(self, text: str) -> int:
        return await self._ctx.progress(text)

    def emit(self, name: str, data: Any = None) -> int:
        """Publish a custom event ``thread.agent.<name>`` (``name``: 1-64 letters, digits,
        ``_.-``) whose payload is ``{"object": "thread.agent.event", "run_id",
        "thread_id", "name", "data"}``; ``data`` must be JSON-serialisable (64 KiB at
        most). Returns its event id."""
        return self._call(self.aemit(name, data), "emit")

    async def aemit(self, name: str, data: Any = None) -> int:
        return await self._ctx.emit(name, data)

    # -- child runs ------------------------------------------------------------------

    def run_agent(self, agent_name: str, query: str, *, relay: bool = False) -> ChildRunResult:
        """Run another agent (``name`` or ``name/version``) on a new child thread holding
        ``query`` as its user message, and wait for it to end.

        The child is a run of its own (``GET /v1/threads/{child_thread}/stream/{child_run}``
        streams it); this run's stream carries a ``child_run`` step naming it, and with
        ``relay=True`` the child's message deltas as ``thread.agent.child_delta`` events.
        Cancelling this run cancels the child. Returns a
        :class:`~agent_runtime.runs.ChildRunResult` (``status``, ``texts``, ``text``,
        ``thread_id``, ``run_id``, ``error``); a failed child does not raise."""
        return self._call(self.arun_agent(agent_name, query, relay=relay), "run_agent")

    async def arun_agent(
        self, agent_name: str, query: str, *, relay: bool = False
    ) -> ChildRunResult:
        return await self._ctx.run_child(agent_name, query, relay=relay)

    # -- logs and outcome --------------------------------------------------------------

    def add_system_log(self, log: str, level: int = logging.INFO) -> None:
        """Log a line tagged with the run (thread-safe; never blocks on the loop)."""
        self._ctx.agent_log(log, level)

    async def aadd_system_log(self, log: str, level: int = logging.INFO) -> None:
        self._ctx.agent_log(log, level)

    def request_user_input(self) -> None:
        """End this run with ``requires_action``: the agent waits for the user's next message."""
        self._ctx.set_outcome("requires_action")

    async def arequest_user_input(self) -> None:
        self.request_user_input()

    def mark_done(self) -> None:
        """End this run ``completed`` when the agent returns."""
        self._ctx.set_outcome("completed")

    async def amark_done(self) -> None:
        self.mark_done()

    def mark_failed(self, message: str = "the agent marked the run as failed") -> None:
        """End this run ``failed`` when the agent returns, with ``message`` as last_error."""
        self._ctx.set_outcome("failed", message)

    async def amark_failed(self, message: str = "the agent marked the run as failed") -> None:
        self.mark_failed(message)
