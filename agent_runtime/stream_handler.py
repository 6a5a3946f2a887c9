"""StreamHandler: one streamed completion, as the agent sees it.

Concurrency
-----------
The provider's chunks are pulled by a task on the event loop (the *pump*, owned by the
run). Each chunk is appended here and, if it carries text, published at once as a
``thread.message.delta``: subscribers see the text live whether or not the agent iterates.

The agent reads the same chunks either from its worker thread (``for chunk in handler``,
blocking on a ``threading.Condition``) or on the loop (``async for chunk in handler``).
The handler is its own iterator with one shared position, so every chunk is yielded
exactly once however the loops are nested (the nested-loop agent usage example
iterates it inside a loop over itself). Iteration raises the provider's error if the
stream failed, and :class:`~agent_runtime.errors.RunCancelled` if the run was cancelled.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from typing import TYPE_CHECKING, Any

from openai.types.chat import ChatCompletionChunk, ChatCompletionMessageToolCall

from .errors import AgentRuntimeError, RunCancelled
from .tool_calls import ToolCallFold

if TYPE_CHECKING:
    from .objects import Message

__all__ = ["StreamHandler"]


class StreamHandler:
    """An iterator of the ``openai`` package's ``ChatCompletionChunk`` objects."""

    def __init__(self, message: Message, loop: asyncio.AbstractEventLoop, loop_thread: int) -> None:
        self.message = message
        self._loop = loop
        self._loop_thread = loop_thread
        self._cond = threading.Condition()
        self._chunks: list[ChatCompletionChunk] = []
        self._parts: list[str] = []
        self._done = False
        self._error: BaseException | None = None
        self._interrupted = False
        self._position = 0
        self._waiters: list[asyncio.Future[None]] = []
        self._chunk_readers = 0
        """Threads blocked in ``__next__`` (a thread blocked in :meth:`wait` needs no
        wake-up per chunk: only the end, or an interruption, ends its wait)."""
        self.replied = False
        self.finish_reason: str | None = None
        self.published = False
        """Whether the message's ``created`` has been published (a completion asked for
        with ``tools`` publishes it only with its first text)."""
        self._calls = ToolCallFold()
        """Tool calls so far."""

    # -- loop side (the pump) --------------------------------------------------------

    def _wake(self, *, chunk: bool = False) -> None:
        # A chunk wakes only the threads waiting for one: waking a thread that waits for
        # the end (add_reply) at every token cost a thread switch and two hand-overs of
        # the GIL per token, taken from the event loop.
        if not chunk or self._chunk_readers:
            self._cond.notify_all()
        waiters, self._waiters = self._waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    def push(self, chunk: ChatCompletionChunk) -> str:
        """Append a chunk; returns the text it carries ('' if none). Loop thread only."""
        return self.push_chunk(chunk)[0]

    def push_chunk(self, chunk: ChatCompletionChunk) -> tuple[str, list[dict[str, Any]]]:
        """Append a chunk, folding it once; returns the text it carries ('' if none) and
        the run step delta entries of its tool call fragments. Loop thread only."""
        text = ""
        entries: list[dict[str, Any]] = []
        with self._cond:
            for choice in chunk.choices:
                if choice.delta.content:
                    text += choice.delta.content
                if choice.finish_reason:
                    self.finish_reason = choice.finish_reason
                entries.extend(self._calls.add_deltas(choice.delta.tool_calls))
            self._chunks.append(chunk)
            if text:
                self._parts.append(text)
            self._wake(chunk=True)
        return text, entries

    def end(self, error: BaseException | None = None) -> None:
        """Mark the stream finished (or failed). Loop thread only. Idempotent."""
        with self._cond:
            if self._done:
                return
            self._done = True
            self._error = error
            self._wake()

    def interrupt(self) -> None:
        """The run was cancelled: wake every reader so it raises ``RunCancelled``."""
        with self._cond:
            self._interrupted = True
            self._wake()

    # -- state -----------------------------------------------------------------------

    @property
    def id(self) -> str:
        """The id of the message this completion streams into."""
        return self.message.id

    @property
    def done(self) -> bool:
        return self._done

    @property
    def error(self) -> BaseException | None:
        return self._error

    @property
    def text(self) -> str:
        """The text received so far (the full text once the stream has ended)."""
        with self._cond:
            return "".join(self._parts)

    @property
    def tool_calls(self) -> list[ChatCompletionMessageToolCall]:
        """The tool calls assembled from the chunks so far (all of them once the stream
        has ended), in index order, as the ``openai`` package's objects."""
        with self._cond:
            return self._calls.message_calls()

    @property
    def chunks(self) -> list[ChatCompletionChunk]:
        with self._cond:
            return list(self._chunks)

    def _raise_if_failed(self) -> None:
        if self._interrupted:
            raise RunCancelled("the run was cancelled")
        if self._error is not None:
            if isinstance(self._error, AgentRuntimeError):
                raise self._error
            raise AgentRuntimeError(f"the completion stream failed: {self._error}")

    # -- agent side, in a worker thread ------------------------------------------------

    def _check_thread(self) -> None:
        if threading.get_ident() == self._loop_thread:
            raise AgentRuntimeError(
                "a StreamHandler cannot be iterated with 'for' on the event loop; "
                "use 'async for chunk in handler' in asynchronous agents"
            )

    def __iter__(self) -> Iterator[ChatCompletionChunk]:
        return self

    def __next__(self) -> ChatCompletionChunk:
        self._check_thread()
        with self._cond:
            while True:
                if self._interrupted:
                    raise RunCancelled("the run was cancelled")
                if self._position < len(self._chunks):
                    chunk = self._chunks[self._position]
                    self._position += 1
                    return chunk
                if self._done:
                    self._raise_if_failed()
                    raise StopIteration
                self._chunk_readers += 1
                try:
                    self._cond.wait()
                finally:
                    self._chunk_readers -= 1

    def wait(self) -> str:
        """Block until the stream ends; the full text. Raises if it failed or was cancelled."""
        self._check_thread()
        with self._cond:
            while not self._done and not self._interrupted:
                self._cond.wait()
            self._raise_if_failed()
            return "".join(self._parts)

    # -- agent side, on the loop -------------------------------------------------------

    def __aiter__(self) -> AsyncIterator[ChatCompletionChunk]:
        return self

    async def __anext__(self) -> ChatCompletionChunk:
        while True:
            with self._cond:
                if self._interrupted:
                    raise RunCancelled("the run was cancelled")
                if self._position < len(self._chunks):
                    chunk = self._chunks[self._position]
                    self._position += 1
                    return chunk
                if self._done:
                    self._raise_if_failed()
                    raise StopAsyncIteration
                fut = self._loop.create_future()
                self._waiters.append(fut)
            await fut

    async def next_batch(self) -> list[ChatCompletionChunk]:
        """Every chunk not yet taken (at least one), or ``[]`` once the stream has ended;
        on the loop. Raises as iteration does. For a reader that forwards chunks (to an
        agent in another process): what arrived meanwhile is taken in one go."""
        while True:
            with self._cond:
                if self._interrupted:
                    raise RunCancelled("the run was cancelled")
                if self._position < len(self._chunks):
                    batch = self._chunks[self._position :]
                    self._position = len(self._chunks)
                    return batch
                if self._done:
                    self._raise_if_failed()
                    return []
                fut = self._loop.create_future()
                self._waiters.append(fut)
            await fut

    async def await_text(self) -> str:
        """Wait (on the loop) until the stream ends; the full text."""
        while True:
            with self._cond:
                if self._done or self._interrupted:
                    self._raise_if_failed()
                    return "".join(self._parts)
                fut = self._loop.create_future()
                self._waiters.append(fut)
            await fut

    def __repr__(self) -> str:
        state = "done" if self._done else "streaming"
        return f"<StreamHandler {self.message.id} {state} chunks={len(self._chunks)}>"
