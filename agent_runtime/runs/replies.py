"""What a run writes to its thread: replies (streamed or whole) and messages.

Ordering: a message is stored before its ``thread.message.completed`` is published, so a
client that reads the thread after the event finds it; a message the store refuses is
never shown as completed (it ends ``incomplete``, and the write is queued for repair
when the run ends). A whole text reply is stored first and then published in one step,
so its events reach each subscriber in one write (one flush of the stream), not one
flush before the store write and one after it.
"""

from __future__ import annotations

import logging
from typing import Any

from .. import protocol
from ..errors import AgentRuntimeError, InvalidRequest
from ..objects import Message, RunStatus, now
from ..stream_handler import StreamHandler
from .context import RunContext
from .pump import new_message

__all__ = ["add_message", "close_unreplied", "reply_from_stream", "reply_text"]

logger = logging.getLogger(__name__)

_INCOMPLETE_REASON = {
    "failed": "run_failed",
    "cancelled": "run_cancelled",
    "expired": "run_expired",
}


async def reply_from_stream(ctx: RunContext, handler: StreamHandler) -> Message | None:
    """``env.add_reply(handler)``: wait for the completion's end, store its message.

    A completion asked for with ``tools`` creates its message with its first text; one
    that streamed no text (it only called tools) never created it, so adding it stores
    and publishes nothing and returns ``None``: no empty assistant message. Its tool
    calls stay on ``handler.tool_calls`` and in the run's ``tool_calls`` step.
    """
    text = await handler.await_text()
    if handler.replied:
        raise AgentRuntimeError(f"the completion {handler.id} was already added")
    handler.replied = True
    if not handler.published:
        return None
    ctx.publish_created(handler)
    message = handler.message
    message.content = text
    message.status = "completed"
    message.completed_at = now()
    try:
        await ctx.manager.store.add_message(message)
    except BaseException:
        # Not stored, so not completed: the run's ending closes it (incomplete).
        handler.replied = False
        message.status, message.completed_at = "in_progress", None
        raise
    ctx.publish(protocol.MESSAGE_COMPLETED, message.to_dict())
    return message


async def reply_text(ctx: RunContext, text: str) -> Message:
    """``env.add_reply(text)``: one message, published as one delta holding its text.

    The message is stored first; then its four events (``created``, ``in_progress``,
    its ``delta``, ``completed``) are published together, without an await between
    them, so they reach every subscriber in one flush (one write each). A store that
    refuses it: the same first three events and ``incomplete`` instead of
    ``completed`` (the stream never shows as completed what the store does not have),
    and the message is queued for repair when the run ends.
    """
    message = new_message(ctx)
    streaming = message.to_dict()  # as it is created: in_progress, no text yet
    message.content = text
    message.status = "completed"
    message.completed_at = now()
    try:
        await ctx.manager.store.add_message(message)
    except BaseException:
        message.status, message.completed_at = "incomplete", None
        message.incomplete_at, message.incomplete_reason = now(), "run_failed"
        ctx.manager.repairs.add(ctx.run.thread_id, ctx.run.id, messages=[message])
        if not ctx.stream.closed:  # (a run that ended meanwhile shows nothing more)
            _publish_reply(ctx, streaming, message, protocol.MESSAGE_INCOMPLETE)
        raise
    if not ctx.stream.closed:  # (stored; a run that ended meanwhile shows nothing more)
        _publish_reply(ctx, streaming, message, protocol.MESSAGE_COMPLETED)
    return message


def _publish_reply(
    ctx: RunContext, streaming: dict[str, Any], message: Message, final: str
) -> None:
    """Publish a whole reply's events in one step (no await between them): ``created``
    and ``in_progress`` (``streaming``: the message as it was created), its text as one
    delta, and its final event ``final`` (the message as it ends)."""
    ctx.publish(protocol.MESSAGE_CREATED, streaming)
    ctx.publish(protocol.MESSAGE_IN_PROGRESS, dict(streaming))
    if message.content:
        ctx.publish_delta(message.id, message.content)
    ctx.publish(final, message.to_dict())


async def add_message(ctx: RunContext, role: str, content: str) -> Message:
    """``env.add_message(role, content)``: an assistant message is a reply; a user
    message is stored without events."""
    if role not in ("user", "assistant"):
        raise InvalidRequest(f"role must be 'user' or 'assistant', not {role!r}")
    if role == "assistant":
        return await reply_text(ctx, content)
    message = new_message(ctx, "user", content)
    message.status = "completed"
    message.completed_at = message.created_at
    await ctx.manager.store.add_message(message)
    return message


async def close_unreplied(ctx: RunContext, handler: StreamHandler, status: RunStatus) -> None:
    """A streamed message the agent never added: it ends ``incomplete``. If the run
    failed mid-stream, the partial text is kept in the thread. A message never
    created (a completion that streamed only tool calls) leaves nothing."""
    if not handler.published:
        return
    message = handler.message
    message.content = handler.text
    message.status = "incomplete"
    message.incomplete_at = now()
    message.incomplete_reason = _INCOMPLETE_REASON.get(status, "not_added")
    if status in _INCOMPLETE_REASON and message.content:
        try:
            await ctx.manager.store.add_message(message)
        except Exception as exc:
            logger.error("run %s: message %s not stored: %s", ctx.run.id, message.id, exc)
            ctx.manager.repairs.add(ctx.run.thread_id, ctx.run.id, messages=[message])
    ctx.publish(protocol.MESSAGE_INCOMPLETE, message.to_dict())
