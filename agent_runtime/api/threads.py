"""Threads and their messages: ``/threads``, ``/threads/{thread_id}``, ``…/messages``."""

from __future__ import annotations

from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..errors import PayloadTooLarge
from ..objects import Message, Thread, new_id, now
from .auth import OWNER
from .keys import HUB
from .validation import Metadata, json_response, parse_query, read_json

__all__ = ["MessageIn", "content_text", "routes"]


def content_text(content: str | list[dict[str, Any]]) -> str:
    """Text of OpenAI message content: a string, or a list of ``{"type": "text", …}`` parts."""
    if isinstance(content, str):
        return content
    texts = []
    for part in content:
        if part.get("type") != "text":
            raise ValueError(f"content parts of type {part.get('type')!r} are not supported")
        text = part.get("text")
        if isinstance(text, dict):
            text = text.get("value")
        if not isinstance(text, str):
            raise ValueError("a text content part needs a 'text' string")
        texts.append(text)
    return "".join(texts)


class MessageIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["user", "assistant"]
    content: str | list[dict[str, Any]]
    attachments: list[dict[str, Any]] | None = None
    metadata: Metadata | None = None

    @field_validator("content")
    @classmethod
    def _text(cls, value: str | list[dict[str, Any]]) -> str:
        return content_text(value)


class ThreadIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    messages: list[MessageIn] = Field(default_factory=list)
    metadata: Metadata | None = None
    tool_resources: dict[str, Any] | None = None


class ListQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")

    order: Literal["asc", "desc"] = "desc"
    limit: int = Field(20, ge=1, le=100)
    after: str | None = None
    before: str | None = None
    run_id: str | None = None


def page_body(data: list[dict[str, Any]], has_more: bool) -> dict[str, Any]:
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }


def check_content(request: web.Request, content: str, param: str = "content") -> None:
    """413 for a message larger than ``max_message_bytes``."""
    limit = request.app[HUB].config.max_message_bytes
    size = len(content.encode())
    if size > limit:
        raise PayloadTooLarge(
            f"The message content is {size} bytes; the limit is {limit} "
            "(set with --max-message-bytes / max_message_bytes).",
            param=param,
            code="message_too_large",
        )


def new_message(thread_id: str, body: MessageIn) -> Message:
    stamp = now()
    assert isinstance(body.content, str)
    return Message(
        id=new_id("msg"),
        thread_id=thread_id,
        role=body.role,
        content=body.content,
        created_at=stamp,
        completed_at=stamp,
        metadata=dict(body.metadata or {}),
    )


def new_thread(request: web.Request, body: ThreadIn) -> tuple[Thread, list[Message]]:
    """The thread ``body`` describes and its messages, checked, not stored yet."""
    thread = Thread(
        id=new_id("thread"),
        created_at=now(),
        metadata=dict(body.metadata or {}),
        owner=request.get(OWNER),
    )
    for index, item in enumerate(body.messages):
        check_content(request, str(item.content), f"messages[{index}].content")
    return thread, [new_message(thread.id, item) for item in body.messages]


async def create_thread(request: web.Request) -> web.Response:
    body = await read_json(request, ThreadIn)
    thread, messages = new_thread(request, body)
    await request.app[HUB].store.create_thread(thread, messages)  # one write
    return json_response(thread.to_dict())


async def get_thread(request: web.Request) -> web.Response:
    thread = await request.app[HUB].store.get_thread(request.match_info["thread_id"])
    return json_response(thread.to_dict())


async def delete_thread(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    thread_id = request.match_info["thread_id"]
    with hub.runs.deleting(thread_id):  # 409 while a run is live or starting on it
        await hub.store.delete_thread(thread_id)  # 404 if there is no such thread
    return json_response({"id": thread_id, "object": "thread.deleted", "deleted": True})


async def create_message(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    thread_id = request.match_info["thread_id"]
    body = await read_json(request, MessageIn)
    check_content(request, str(body.content))
    message = new_message(thread_id, body)
    await hub.store.add_message(message)  # 404 if there is no such thread: one write
    return json_response(message.to_dict())


async def list_messages(request: web.Request) -> web.Response:
    query = parse_query(request.query, ListQuery)
    page = await request.app[HUB].store.list_messages(
        request.match_info["thread_id"],
        order=query.order,
        limit=query.limit,
        after=query.after,
        before=query.before,
        run_id=query.run_id,
    )
    return json_response(page_body([m.to_dict() for m in page.data], page.has_more))


async def get_message(request: web.Request) -> web.Response:
    message = await request.app[HUB].store.get_message(
        request.match_info["thread_id"], request.match_info["message_id"]
    )
    return json_response(message.to_dict())


def routes() -> list[tuple[str, str, Any]]:
    return [
        ("POST", "/threads", create_thread),
        ("GET", "/threads/{thread_id}", get_thread),
        ("DELETE", "/threads/{thread_id}", delete_thread),
        ("POST", "/threads/{thread_id}/messages", create_message),
        ("GET", "/threads/{thread_id}/messages", list_messages),
        ("GET", "/threads/{thread_id}/messages/{message_id}", get_message),
    ]
