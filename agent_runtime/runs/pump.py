"""A run's completions: the request built from the agent's call, and the pump that turns
a streamed completion into ``thread.message.delta`` and tool-call step events.

Concurrency: :func:`start_stream` returns the :class:`StreamHandler` at once and leaves
one pump task per completion (tracked on the run, cancelled when it ends). The pump
publishes each chunk's text the moment it arrives, whether or not the agent iterates.
A provider failure ends the run ``failed``; the run's end cancels its pumps.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from openai.types.chat import ChatCompletion

from .. import protocol
from ..errors import AgentRuntimeError, InvalidRequest, ProviderError, RunCancelled
from ..models.base import CompletionRequest, ModelProvider
from ..objects import Message, new_id, now
from ..stream_handler import StreamHandler
from .context import RunContext

__all__ = ["complete", "new_message", "start_stream"]

logger = logging.getLogger(__name__)

_CHAT_KEYS = ("role", "content", "name", "tool_calls", "tool_call_id")


def chat_messages(messages: list[dict[str, Any]] | str) -> list[dict[str, Any]]:
    """An agent's ``messages`` argument as chat messages (a string is one user message)."""
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


def _request(
    ctx: RunContext,
    messages: list[dict[str, Any]] | str,
    model: str | None,
    kwargs: dict[str, Any],
) -> tuple[ModelProvider, CompletionRequest]:
    defaults = ctx.agent.defaults
    provider_name = kwargs.pop("provider", None) or defaults.model_provider
    provider, model_name = ctx.manager.models.resolve(model or ctx.run.model, provider_name)
    temperature = kwargs.pop("temperature", defaults.model_temperature)
    max_tokens = kwargs.pop("max_tokens", defaults.model_max_tokens)
    request = CompletionRequest(
        model=model_name,
        messages=chat_messages(messages),
        temperature=temperature,
        max_tokens=max_tokens,
        extra=kwargs,
    )
    return provider, request


async def complete(
    ctx: RunContext,
    messages: list[dict[str, Any]] | str,
    model: str | None,
    kwargs: dict[str, Any],
) -> ChatCompletion:
    """A whole (not streamed) completion."""
    provider, request = _request(ctx, messages, model, dict(kwargs))
    return await provider.complete(request)


async def start_stream(
    ctx: RunContext,
    messages: list[dict[str, Any]] | str,
    model: str | None,
    kwargs: dict[str, Any],
) -> StreamHandler:
    """Start a streamed completion: its handler, its pump running."""
    if ctx.cancel_requested:
        raise RunCancelled("the run was cancelled")
    provider, request = _request(ctx, messages, model, dict(kwargs))
    handler = StreamHandler(new_message(ctx), ctx.loop, ctx.loop_thread)
    ctx.handlers.append(handler)
    if not request.extra.get("tools"):
        # With tools the completion may hold only tool calls: its message is created
        # with its first text, so a tool-call-only completion leaves no empty message.
        ctx.publish_created(handler)
    task = asyncio.create_task(_pump(ctx, provider, request, handler))
    ctx.pumps.add(task)
    task.add_done_callback(ctx.pumps.discard)
    return handler


async def _pump(
    ctx: RunContext, provider: ModelProvider, request: CompletionRequest, handler: StreamHandler
) -> None:
    message_id = handler.message.id
    step: dict[str, Any] | None = None
    timings = ctx.timings
    try:
        async for chunk in provider.stream(request):
            if timings.first_chunk is None:
                timings.stamp("first_chunk")
            text, fragments = handler.push_chunk(chunk)
            if text:
                ctx.publish_created(handler)
                ctx.publish_delta(message_id, text)
            if fragments:
                if step is None:
                    step = ctx.new_step("tool_calls", {"type": "tool_calls", "tool_calls": []})
                ctx.publish(protocol.STEP_DELTA, protocol.step_delta_payload(step["id"], fragments))
    except asyncio.CancelledError:
        handler.end(RunCancelled("the run ended before the completion finished"))
        raise
    except Exception as exc:
        error = exc if isinstance(exc, AgentRuntimeError) else ProviderError(str(exc))
        logger.info("run %s: completion stream failed: %s", ctx.run.id, error)
        handler.end(error)
        ctx.end("failed", f"model provider error: {error}")
    else:
        if step is not None:
            ctx.end_step(step, "completed", _tool_calls_details(handler))
        handler.end()


def new_message(ctx: RunContext, role: str = "assistant", content: str = "") -> Message:
    """A new message of the run, ``in_progress``."""
    return Message(
        id=new_id("msg"),
        thread_id=ctx.run.thread_id,
        role="user" if role == "user" else "assistant",
        content=content,
        created_at=now(),
        status="in_progress",
        run_id=ctx.run.id,
        assistant_id=ctx.agent.name,
    )


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
