"""The event vocabulary of a run's stream: names, terminal sets, payload builders and the
readers of those payloads. Pure and synchronous; the one place these are spelled.

``docs/protocol.md`` describes them for client authors; the chat page's copy of the
terminal set (``ui/app.js``) is checked against :data:`TERMINAL_RUN_EVENTS` by a test.
"""

from __future__ import annotations

import re
from typing import Any

from .objects import TERMINAL_STATUSES, new_id, now

__all__ = [
    "AGENT_CHILD_DELTA",
    "AGENT_EVENT_NAME",
    "AGENT_PROGRESS",
    "GAP",
    "MAX_AGENT_EVENT_BYTES",
    "MESSAGE_COMPLETED",
    "MESSAGE_CREATED",
    "MESSAGE_DELTA",
    "MESSAGE_FINAL",
    "MESSAGE_INCOMPLETE",
    "MESSAGE_IN_PROGRESS",
    "RESERVED_AGENT_EVENTS",
    "RUN_CANCELLING",
    "RUN_CREATED",
    "RUN_QUEUED",
    "STEP_CREATED",
    "STEP_DELTA",
    "STEP_FINAL",
    "STEP_IN_PROGRESS",
    "TERMINAL_RUN_EVENTS",
    "agent_event",
    "agent_event_payload",
    "child_delta_payload",
    "delta_payload",
    "delta_text",
    "is_run_status_event",
    "progress_payload",
    "run_event",
    "step_delta_payload",
    "step_event",
    "step_object",
]

# -- names -------------------------------------------------------------------------------

RUN_CREATED = "thread.run.created"
RUN_QUEUED = "thread.run.queued"
RUN_CANCELLING = "thread.run.cancelling"

MESSAGE_CREATED = "thread.message.created"
MESSAGE_IN_PROGRESS = "thread.message.in_progress"
MESSAGE_DELTA = "thread.message.delta"
MESSAGE_COMPLETED = "thread.message.completed"
MESSAGE_INCOMPLETE = "thread.message.incomplete"

STEP_CREATED = "thread.run.step.created"
STEP_IN_PROGRESS = "thread.run.step.in_progress"
STEP_DELTA = "thread.run.step.delta"

AGENT_PROGRESS = "thread.agent.progress"
AGENT_CHILD_DELTA = "thread.agent.child_delta"

GAP = "thread.stream.gap"
"""What the broker sends a subscriber that missed events (its ``gap_event``)."""

TERMINAL_RUN_EVENTS = frozenset(f"thread.run.{status}" for status in TERMINAL_STATUSES)
"""The events that end a run's stream (exactly one per run)."""

MESSAGE_FINAL = frozenset({MESSAGE_COMPLETED, MESSAGE_INCOMPLETE})

STEP_FINAL = frozenset(
    {
        "thread.run.step.completed",
        "thread.run.step.cancelled",
        "thread.run.step.failed",
        "thread.run.step.expired",
    }
)

AGENT_EVENT_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,64}\Z")
"""The ``<name>`` of an agent-written ``thread.agent.<name>`` event."""
RESERVED_AGENT_EVENTS = frozenset({"progress", "child_delta"})
"""``thread.agent.*`` names the runtime writes itself."""
MAX_AGENT_EVENT_BYTES = 64 * 1024
"""Largest agent-written event (its JSON payload), so one cannot flood the replay buffer."""


def run_event(status: str) -> str:
    """``thread.run.<status>``."""
    return f"thread.run.{status}"


def step_event(status: str) -> str:
    """``thread.run.step.<status>``."""
    return f"thread.run.step.{status}"


def agent_event(name: str) -> str:
    """``thread.agent.<name>``."""
    return f"thread.agent.{name}"


def is_run_status_event(name: str) -> bool:
    """``thread.run.<status>`` (not ``thread.run.step.*``)."""
    return name.startswith("thread.run.") and name.count(".") == 2


# -- payloads ----------------------------------------------------------------------------


def delta_payload(message_id: str, text: str) -> dict[str, Any]:
    """The ``thread.message.delta`` object carrying ``text``."""
    return {
        "id": message_id,
        "object": "thread.message.delta",
        "delta": {
            "content": [{"index": 0, "type": "text", "text": {"value": text, "annotations": []}}]
        },
    }


def delta_text(payload: dict[str, Any]) -> str:
    """The text a ``thread.message.delta`` payload carries ('' if none)."""
    parts = payload.get("delta", {}).get("content") or []
    return "".join(p.get("text", {}).get("value", "") for p in parts if p.get("type") == "text")


def step_delta_payload(step_id: str, tool_calls: list[dict[str, Any]]) -> dict[str, Any]:
    """The ``thread.run.step.delta`` object carrying tool call fragments."""
    return {
        "id": step_id,
        "object": "thread.run.step.delta",
        "delta": {"step_details": {"type": "tool_calls", "tool_calls": tool_calls}},
    }


def step_object(
    *, run_id: str, thread_id: str, assistant_id: str, kind: str, details: dict[str, Any]
) -> dict[str, Any]:
    """A new ``thread.run.step`` object, ``in_progress``."""
    return {
        "id": new_id("step"),
        "object": "thread.run.step",
        "created_at": now(),
        "run_id": run_id,
        "assistant_id": assistant_id,
        "thread_id": thread_id,
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


def progress_payload(run_id: str, thread_id: str, text: str) -> dict[str, Any]:
    """The ``thread.agent.progress`` object (``env.stream_text``)."""
    return {
        "object": "thread.agent.progress",
        "run_id": run_id,
        "thread_id": thread_id,
        "text": text,
    }


def agent_event_payload(run_id: str, thread_id: str, name: str, data: Any) -> dict[str, Any]:
    """The object of an agent-written ``thread.agent.<name>`` event (``env.emit``)."""
    return {
        "object": "thread.agent.event",
        "run_id": run_id,
        "thread_id": thread_id,
        "name": name,
        "data": data,
    }


def child_delta_payload(
    *,
    run_id: str,
    step_id: str,
    child_thread_id: str,
    child_run_id: str,
    message_id: str,
    text: str,
) -> dict[str, Any]:
    """The ``thread.agent.child_delta`` object relaying a child run's text."""
    return {
        "object": "thread.agent.child_delta",
        "run_id": run_id,
        "step_id": step_id,
        "child_thread_id": child_thread_id,
        "child_run_id": child_run_id,
        "message_id": message_id,
        "text": text,
    }
