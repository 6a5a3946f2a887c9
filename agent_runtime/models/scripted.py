"""``ScriptedModel``: a model provider that plays a script, for deterministic tests.

A script is a sequence of steps, played in order by each completion::

    ScriptedModel([Say("Hello", delay=0.01), Say(" world"), Fail("boom", status=500)])

- :class:`Say` — one chunk carrying ``text`` (after ``delay`` seconds). A bare ``str``
  step means ``Say(text)``.
- :class:`Fail` — raise :class:`~agent_runtime.errors.ProviderError` with ``status``: before
  the first text it is a provider refusing the request (``/v1/chat/completions`` answers
  that status); after some text it is a failure mid-stream (the run fails, its partial
  message is kept ``incomplete``).
- :class:`Stall` — stop producing for ``seconds`` (``None``: until the consumer is
  cancelled, e.g. the run is cancelled or expires).
- :class:`Gate` — wait until the test calls :meth:`Gate.open`; :meth:`Gate.reached` waits
  until the model gets there. The deterministic way to hold a stream mid-way.
- :class:`Finish` — end the completion now with ``finish_reason`` (``"stop"`` otherwise).
- :class:`ToolCall` — one tool call (``name``, ``arguments`` as a JSON string or a dict)
  streamed as OpenAI streams it: a chunk with its id and name, then the arguments in
  ``chunks`` fragments (``delay`` seconds before each). Several ``ToolCall`` steps get
  indexes 0, 1, …; a script that made tool calls ends with ``finish_reason``
  ``"tool_calls"`` unless a :class:`Finish` says otherwise. ``complete`` returns them as
  the message's ``tool_calls``.

Scripts are chosen per completion call: scripts queued with ``scripts=[...]`` or
:meth:`ScriptedModel.add_script` are consumed one per call, first in first out; when none
is queued the default ``script`` plays (every time); with neither, the call fails with a
:class:`~agent_runtime.errors.ProviderError` saying so. Every request is recorded in
:attr:`ScriptedModel.calls`.

Streams look like OpenAI's: a chunk with the ``assistant`` role and empty content (sent
with the first text, so a :class:`Fail` or :class:`Stall` before any text happens before
the first chunk, like a provider that has not answered yet), one chunk per :class:`Say`,
then a chunk with the ``finish_reason``. ``complete`` plays the
same script and returns the concatenated text.

Concurrency and cancellation: the model and its gates belong to the event loop that
consumes them (create gates anywhere; open them on that loop). Any number of completions
may play at once, each its own copy of its script. Cancelling the consumer stops a stream
at once, in any step; nothing needs cleaning up.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any, Literal, TypeAlias

from openai.types import CompletionUsage
from openai.types.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionMessage
from openai.types.chat.chat_completion import Choice as CompletionChoice
from openai.types.chat.chat_completion_chunk import Choice as ChunkChoice
from openai.types.chat.chat_completion_chunk import (
    ChoiceDelta,
    ChoiceDeltaToolCall,
    ChoiceDeltaToolCallFunction,
)

from ..errors import ProviderError
from ..tool_calls import ToolCallFold
from .base import CompletionRequest

__all__ = ["Fail", "Finish", "Gate", "Say", "ScriptedModel", "Stall", "Step", "ToolCall"]

logger = logging.getLogger(__name__)

FinishReason = Literal["stop", "length", "tool_calls", "content_filter", "function_call"]


@dataclass(frozen=True, slots=True)
class Say:
    """One chunk carrying ``text``, sent ``delay`` seconds after the previous step."""

    text: str
    delay: float = 0.0


@dataclass(frozen=True, slots=True)
class Fail:
    """Raise a provider error (``status`` as the provider's HTTP status) after ``delay``."""

    message: str = "scripted provider failure"
    status: int = 500
    delay: float = 0.0


@dataclass(frozen=True, slots=True)
class Stall:
    """Produce nothing for ``seconds``; ``None`` stalls until the consumer is cancelled."""

    seconds: float | None = None


@dataclass(frozen=True, slots=True)
class Finish:
    """End the completion here with ``reason`` as its ``finish_reason``."""

    reason: FinishReason = "stop"


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One tool call: ``name`` and ``arguments`` (a JSON string, or a dict encoded as one),
    the arguments streamed in ``chunks`` fragments, ``delay`` seconds before each chunk."""

    name: str
    arguments: str | dict[str, Any] = "{}"
    chunks: int = 1
    delay: float = 0.0
    id: str | None = None

    @property
    def arguments_text(self) -> str:
        if isinstance(self.arguments, str):
            return self.arguments
        return json.dumps(self.arguments)

    def fragments(self) -> list[str]:
        text = self.arguments_text
        count = max(1, min(self.chunks, len(text) or 1))
        size = -(-len(text) // count) if text else 0
        return [text[i * size : (i + 1) * size] for i in range(count)] if text else [""]


class Gate:
    """A step that holds the stream until :meth:`open` is called (on the model's loop).

    ``reached()`` waits until a stream arrives at the gate. A gate opened once stays open:
    later streams pass it without waiting.
    """

    def __init__(self) -> None:
        self._open = asyncio.Event()
        self._reached = asyncio.Event()

    def open(self) -> None:
        self._open.set()

    @property
    def is_open(self) -> bool:
        return self._open.is_set()

    async def reached(self) -> None:
        """Return once a stream has arrived at this gate (at once if one already has)."""
        await self._reached.wait()

    async def _pass(self) -> None:
        self._reached.set()
        await self._open.wait()

    def __repr__(self) -> str:
        return f"Gate(open={self.is_open})"


Step: TypeAlias = Say | Fail | Stall | Gate | Finish | ToolCall | str
Script: TypeAlias = tuple[Say | Fail | Stall | Gate | Finish | ToolCall, ...]


def _script(steps: Iterable[Step]) -> Script:
    if isinstance(steps, (str, Say, Fail, Stall, Gate, Finish, ToolCall)):
        steps = [steps]
    out: list[Say | Fail | Stall | Gate | Finish | ToolCall] = []
    for step in steps:
        if isinstance(step, str):
            out.append(Say(step))
        elif isinstance(step, (Say, Fail, Stall, Gate, Finish, ToolCall)):
            out.append(step)
        else:
            raise TypeError(
                "a script step must be Say, Fail, Stall, Gate, Finish, ToolCall or str, "
                f"not {step!r}"
            )
    return tuple(out)


class ScriptedModel:
    """A :class:`~agent_runtime.models.base.ModelProvider` playing scripts (module docstring).

    ``name`` is the model name a hub routes to it when it is given as a hub's model.
    """

    def __init__(
        self,
        script: Iterable[Step] | None = None,
        *,
        scripts: Iterable[Iterable[Step]] = (),
        name: str = "scripted",
    ) -> None:
        self.name = name
        self.script: Script | None = None if script is None else _script(script)
        """Played by every call for which no queued script is left."""
        self._queue: deque[Script] = deque(_script(s) for s in scripts)
        self.calls: list[CompletionRequest] = []
        """Every request received, in order."""
        self._call_waiters: list[tuple[int, asyncio.Future[None]]] = []

    def __repr__(self) -> str:
        return f"ScriptedModel(name={self.name!r}, queued={len(self._queue)})"

    def add_script(self, *steps: Step) -> ScriptedModel:
        """Queue a script for one future call (after those already queued)."""
        self._queue.append(_script(steps))
        return self

    @property
    def queued(self) -> int:
        """Scripts queued and not yet consumed."""
        return len(self._queue)

    async def wait_for_calls(self, count: int) -> None:
        """Return once at least ``count`` completions have been requested."""
        if len(self.calls) >= count:
            return
        future = asyncio.get_running_loop().create_future()
        self._call_waiters.append((count, future))
        await future

    def _next_script(self, request: CompletionRequest) -> Script:
        self.calls.append(request)
        number = len(self.calls)
        waiting, self._call_waiters = self._call_waiters, []
        for count, future in waiting:
            if number >= count:
                if not future.done():
                    future.set_result(None)
            else:
                self._call_waiters.append((count, future))
        if self._queue:
            return self._queue.popleft()
        if self.script is not None:
            return self.script
        raise ProviderError(
            f"ScriptedModel {self.name!r} has no script for call #{number}: pass a script, "
            "or queue one with add_script(...)",
            upstream_status=500,
        )

    async def stream(self, request: CompletionRequest) -> AsyncIterator[ChatCompletionChunk]:
        """Play the next script as chunks (see the module docstring)."""
        script = self._next_script(request)
        common: dict[str, Any] = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "created": int(time.time()),
            "model": request.model or self.name,
            "object": "chat.completion.chunk",
        }

        def chunk(delta: ChoiceDelta, finish: FinishReason | None = None) -> ChatCompletionChunk:
            choice = ChunkChoice(index=0, delta=delta, finish_reason=finish, logprobs=None)
            return ChatCompletionChunk(choices=[choice], **common)

        role = chunk(ChoiceDelta(role="assistant", content=""))
        started = False
        finish: FinishReason = "stop"
        calls = 0
        for step in script:
            if isinstance(step, ToolCall):
                index, calls = calls, calls + 1
                finish = "tool_calls"
                for number, fragment in enumerate(step.fragments()):
                    await asyncio.sleep(step.delay)
                    if number == 0:
                        call = ChoiceDeltaToolCall(
                            index=index,
                            id=step.id or f"call_{uuid.uuid4().hex[:24]}",
                            type="function",
                            function=ChoiceDeltaToolCallFunction(
                                name=step.name, arguments=fragment
                            ),
                        )
                    else:
                        call = ChoiceDeltaToolCall(
                            index=index, function=ChoiceDeltaToolCallFunction(arguments=fragment)
                        )
                    delta = ChoiceDelta(tool_calls=[call])
                    if not started:
                        started = True
                        delta = ChoiceDelta(role="assistant", content=None, tool_calls=[call])
                    yield chunk(delta)
            elif isinstance(step, Say):
                await asyncio.sleep(step.delay)
                if not started:
                    started = True
                    yield role
                yield chunk(ChoiceDelta(content=step.text))
            elif isinstance(step, Fail):
                await asyncio.sleep(step.delay)
                logger.debug("%s: failing as scripted: %s", self.name, step.message)
                raise ProviderError(step.message, upstream_status=step.status)
            elif isinstance(step, Stall):
                if step.seconds is None:
                    await asyncio.get_running_loop().create_future()  # until cancelled
                else:
                    await asyncio.sleep(step.seconds)
            elif isinstance(step, Gate):
                await step._pass()
            else:
                finish = step.reason
                break
        if not started:
            yield role
        yield chunk(ChoiceDelta(), finish)

    async def complete(self, request: CompletionRequest) -> ChatCompletion:
        """Play the next script and return its whole text (errors raise as in ``stream``)."""
        parts: list[str] = []
        finish: FinishReason = "stop"
        calls = ToolCallFold()
        async for piece in self.stream(request):
            for choice in piece.choices:
                if choice.delta.content:
                    parts.append(choice.delta.content)
                calls.add_deltas(choice.delta.tool_calls)
                if choice.finish_reason:
                    finish = choice.finish_reason
        tool_calls = calls.message_calls()
        message = ChatCompletionMessage(
            role="assistant",
            content="".join(parts) if parts or not tool_calls else None,
            tool_calls=tool_calls or None,
        )
        return ChatCompletion(
            id=f"chatcmpl-{uuid.uuid4().hex}",
            choices=[
                CompletionChoice(index=0, message=message, finish_reason=finish, logprobs=None)
            ],
            created=int(time.time()),
            model=request.model or self.name,
            object="chat.completion",
            usage=CompletionUsage(
                prompt_tokens=0, completion_tokens=len(parts), total_tokens=len(parts)
            ),
        )

    async def aclose(self) -> None:
        """Nothing to release."""
