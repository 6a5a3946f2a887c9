"""What an agent's :class:`~agent_runtime.environment.Environment` calls: the
:class:`~agent_runtime.runs.ports.AgentPort` of one run, over its context and seams.

Every coroutine runs on the hub's event loop; a synchronous agent's Environment hands
its calls to the loop and waits. After a cancel, ``cancel_requested`` is set and the next
call raises ``RunCancelled``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from typing import Any

from openai.types.chat import ChatCompletion

from ..objects import Message, Run, RunStatus
from ..stream_handler import StreamHandler
from . import children, pump, replies
from .context import RunContext
from .ports import ChildRunResult

__all__ = ["AgentSide"]


class AgentSide:
    """The agent-facing side of a live run (an :class:`~.ports.AgentPort`)."""

    __slots__ = ("_ctx",)

    def __init__(self, ctx: RunContext) -> None:
        self._ctx = ctx

    @property
    def run(self) -> Run:
        return self._ctx.run

    @property
    def agent_name(self) -> str:
        return self._ctx.agent.name

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._ctx.loop

    @property
    def loop_thread(self) -> int:
        return self._ctx.loop_thread

    @property
    def cancel_requested(self) -> bool:
        return self._ctx.cancel_requested

    def track_thread_future(self, future: concurrent.futures.Future[Any]) -> None:
        self._ctx.track_thread_future(future)

    def untrack_thread_future(self, future: concurrent.futures.Future[Any]) -> None:
        self._ctx.untrack_thread_future(future)

    async def complete(
        self, messages: list[dict[str, Any]] | str, model: str | None, kwargs: dict[str, Any]
    ) -> ChatCompletion:
        self._ctx.timings.stamp("model_requested")
        return await pump.complete(self._ctx, messages, model, kwargs)

    async def start_stream(
        self, messages: list[dict[str, Any]] | str, model: str | None, kwargs: dict[str, Any]
    ) -> StreamHandler:
        self._ctx.timings.stamp("model_requested")
        return await pump.start_stream(self._ctx, messages, model, kwargs)

    async def reply_from_stream(self, handler: StreamHandler) -> Message | None:
        return await replies.reply_from_stream(self._ctx, handler)

    async def reply_text(self, text: str) -> Message:
        return await replies.reply_text(self._ctx, text)

    async def add_message(self, role: str, content: str) -> Message:
        return await replies.add_message(self._ctx, role, content)

    async def messages(self) -> list[Message]:
        return await self._ctx.manager.thread_messages(self._ctx.run.thread_id)

    async def progress(self, text: str) -> int:
        return self._ctx.progress(text)

    async def emit(self, name: str, data: Any) -> int:
        return self._ctx.emit(name, data)

    async def run_child(self, agent_name: str, query: str, *, relay: bool) -> ChildRunResult:
        return await children.run_child(self._ctx, agent_name, query, relay=relay)

    def agent_log(self, line: str, level: int) -> None:
        self._ctx.agent_log(line, level)

    def set_outcome(self, status: RunStatus, message: str | None = None) -> None:
        self._ctx.set_outcome(status, message)
