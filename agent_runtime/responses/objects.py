"""Response ids, the response object as created, and request input as thread messages.
Pure and synchronous.

A response is a run on a thread; its id names both, so that any node can find it in the
store without an index: ``resp_`` + the run id's 24 hex digits + the thread id's.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from ..errors import InvalidRequest, NotFound

__all__ = [
    "AGENT_PREFIX",
    "base_response",
    "chat_messages",
    "input_items",
    "parse_response_id",
    "response_id",
]

AGENT_PREFIX = "agent:"
"""``model`` naming an agent: ``agent:NAME``."""

_ID = re.compile(r"resp_([0-9a-f]{24})([0-9a-f]{24})\Z")


def response_id(thread_id: str, run_id: str) -> str:
    """The id of the response that is run ``run_id`` on thread ``thread_id``."""
    return "resp_" + run_id.removeprefix("run_") + thread_id.removeprefix("thread_")


def parse_response_id(value: str) -> tuple[str, str]:
    """``(thread_id, run_id)`` of a response id; ``NotFound`` for anything else."""
    match = _ID.match(value)
    if match is None:
        raise NotFound(f"No response found with id '{value}'.", param="response_id")
    return "thread_" + match.group(2), "run_" + match.group(1)


def base_response(
    *,
    response_id: str,
    thread_id: str,
    created_at: int,
    model: str,
    body: dict[str, Any],
) -> dict[str, Any]:
    """The response object as created (``queued``, no output), echoing the request."""
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": "queued",
        "background": bool(body.get("background")),
        "conversation": {"id": thread_id},
        "error": None,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "metadata": dict(body.get("metadata") or {}),
        "model": model,
        "output": [],
        "parallel_tool_calls": body.get("parallel_tool_calls") is not False,
        "previous_response_id": body.get("previous_response_id"),
        "store": body.get("store") is not False,
        "temperature": body.get("temperature"),
        "text": body.get("text") or {"format": {"type": "text"}},
        "tool_choice": body.get("tool_choice") or "auto",
        "tools": list(body.get("tools") or []),
        "top_p": body.get("top_p"),
        "truncation": body.get("truncation") or "disabled",
        "usage": None,
        "user": body.get("user"),
    }


def _content_text(content: Any, param: str) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for index, part in enumerate(content):
            if not isinstance(part, dict):
                raise InvalidRequest(f"Invalid value for '{param}[{index}]'.", param=param)
            if part.get("type") in ("input_text", "output_text", "text"):
                texts.append(str(part.get("text", "")))
        return "".join(texts)
    raise InvalidRequest(
        f"Invalid value for '{param}': expected a string or a list of parts.", param=param
    )


def input_items(value: Any) -> list[dict[str, Any]]:
    """The request's ``input`` as input items: a string is one user message; each
    message item gets ``type``, ``role`` and text ``content`` parts. ``InvalidRequest``
    for anything else. Tool items (``function_call``, ``function_call_output``) are
    kept as they are."""
    if value is None:
        return []
    if isinstance(value, str):
        value = [{"type": "message", "role": "user", "content": value}]
    if not isinstance(value, list):
        raise InvalidRequest(
            "Invalid value for 'input': expected a string or a list of items.", param="input"
        )
    items: list[dict[str, Any]] = []
    for index, item in enumerate(value):
        param = f"input[{index}]"
        if not isinstance(item, dict):
            raise InvalidRequest(f"Invalid value for '{param}': expected an object.", param=param)
        kind = item.get("type", "message")
        if kind in ("function_call", "function_call_output"):
            items.append(dict(item))
            continue
        if kind != "message":
            raise InvalidRequest(
                f"Invalid value for '{param}.type': '{kind}' input items are not supported.",
                param=f"{param}.type",
            )
        role = item.get("role")
        if role not in ("user", "assistant", "system", "developer"):
            raise InvalidRequest(f"Invalid value for '{param}.role'.", param=f"{param}.role")
        text = _content_text(item.get("content"), f"{param}.content")
        part = "output_text" if role == "assistant" else "input_text"
        items.append(
            {
                "type": "message",
                "role": role,
                "content": [{"type": part, "text": text}],
                "status": "completed",
            }
        )
    return items


def item_text(item: dict[str, Any]) -> str:
    return "".join(str(p.get("text", "")) for p in item.get("content") or [])


def chat_messages(instructions: str | None, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Chat-completions messages for a plain model: the instructions, then the items
    (the conversation so far, then this response's input: messages, tool calls and
    their outputs)."""
    messages: list[dict[str, Any]] = []
    if instructions:
        messages.append({"role": "system", "content": instructions})
    for item in items:
        kind = item.get("type", "message")
        if kind == "function_call":
            call = {
                "id": str(item.get("call_id") or item.get("id") or "call"),
                "type": "function",
                "function": {"name": item.get("name", ""), "arguments": item.get("arguments", "")},
            }
            if messages and messages[-1].get("tool_calls") is not None:
                messages[-1]["tool_calls"].append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            messages.append(
                {
                    "role": "tool",
                    "tool_call_id": str(item.get("call_id", "")),
                    "content": output if isinstance(output, str) else str(output),
                }
            )
        elif kind == "message":
            role = "system" if item.get("role") == "developer" else str(item.get("role"))
            messages.append({"role": role, "content": item_text(item)})
    return messages


def message_item(role: str, text: str) -> dict[str, Any]:
    """A thread message as a (completed) message item."""
    part = "output_text" if role == "assistant" else "input_text"
    return {"type": "message", "role": role, "content": [{"type": part, "text": text}]}


def chat_tools(tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Responses ``function`` tools as chat-completions tools (others are dropped)."""
    out = []
    for tool in tools:
        if tool.get("type") != "function":
            continue
        function = {"name": tool.get("name", ""), "parameters": tool.get("parameters") or {}}
        if tool.get("description"):
            function["description"] = tool["description"]
        if tool.get("strict") is not None:
            function["strict"] = tool["strict"]
        out.append({"type": "function", "function": function})
    return out


def chat_tool_choice(choice: Any) -> Any:
    """A Responses ``tool_choice`` as chat-completions' (``None``: leave it out)."""
    if choice is None or isinstance(choice, str):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function":
        return {"type": "function", "function": {"name": choice.get("name", "")}}
    return None


def agent_models(agents: Iterable[Any]) -> list[dict[str, Any]]:
    """``GET /models`` entries for the agents: ``agent:NAME``, one per name."""
    names = sorted({str(agent.name) for agent in agents})
    return [
        {"id": AGENT_PREFIX + name, "object": "model", "created": 0, "owned_by": "agentstream"}
        for name in names
    ]


def chat_response_format(text: Any) -> dict[str, Any] | None:
    """A Responses ``text.format`` (``json_schema`` or ``json_object``) as
    chat-completions' ``response_format`` (``None``: plain text)."""
    fmt = text.get("format") if isinstance(text, dict) else None
    if not isinstance(fmt, dict):
        return None
    if fmt.get("type") == "json_object":
        return {"type": "json_object"}
    if fmt.get("type") != "json_schema":
        return None
    schema = {"name": fmt.get("name") or "response", "schema": fmt.get("schema") or {}}
    if fmt.get("strict") is not None:
        schema["strict"] = fmt["strict"]
    return {"type": "json_schema", "json_schema": schema}
