"""Threads, messages, runs and run steps, shaped like OpenAI's Assistants objects.

Plain dataclasses: no I/O, no asyncio. ``to_dict()`` gives the wire shape (``thread``,
``thread.message``, ``thread.run``, ``thread.run.step``) with Unix-second timestamps.
"""

from __future__ import annotations

import copy
import hashlib
import secrets
import time
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "LIVE_STATUSES",
    "TERMINAL_STATUSES",
    "Message",
    "Run",
    "RunStatus",
    "RunStep",
    "Thread",
    "key_digest",
    "new_id",
    "now",
]

RunStatus = Literal[
    "queued",
    "in_progress",
    "requires_action",
    "cancelling",
    "cancelled",
    "failed",
    "completed",
    "incomplete",
    "expired",
]

TERMINAL_STATUSES: frozenset[str] = frozenset(
    {"cancelled", "failed", "completed", "incomplete", "expired", "requires_action"}
)
"""Statuses that end a run's stream (``requires_action`` ends this run's turn)."""

LIVE_STATUSES: frozenset[str] = frozenset({"queued", "in_progress", "cancelling"})

MessageStatus = Literal["in_progress", "incomplete", "completed"]


def new_id(prefix: str) -> str:
    """``prefix_`` followed by 24 random hex digits, e.g. ``run_5f0c…``."""
    return f"{prefix}_{secrets.token_hex(12)}"


def now() -> int:
    return int(time.time())


def key_digest(key: str) -> str:
    """What is stored as a thread's owner for an API key: never the key itself."""
    return hashlib.sha256(key.encode()).hexdigest()[:32]


@dataclass(slots=True)
class Thread:
    id: str
    created_at: int
    metadata: dict[str, str] = field(default_factory=dict)
    owner: str | None = None
    """Digest of the API key that created the thread (not part of the wire object)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "thread",
            "created_at": self.created_at,
            "metadata": dict(self.metadata),
            "tool_resources": {},
        }


@dataclass(slots=True)
class Message:
    id: str
    thread_id: str
    role: Literal["user", "assistant"]
    content: str
    created_at: int
    status: MessageStatus = "completed"
    run_id: str | None = None
    assistant_id: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    completed_at: int | None = None
    incomplete_at: int | None = None
    incomplete_reason: str | None = None

    def content_parts(self, text: str | None = None) -> list[dict[str, Any]]:
        value = self.content if text is None else text
        return [{"type": "text", "text": {"value": value, "annotations": []}}]

    def to_dict(self, *, text: str | None = None) -> dict[str, Any]:
        """The ``thread.message`` object; ``text`` overrides the content (for snapshots)."""
        return {
            "id": self.id,
            "object": "thread.message",
            "created_at": self.created_at,
            "thread_id": self.thread_id,
            "role": self.role,
            "content": self.content_parts(text) if (text or self.content) else [],
            "assistant_id": self.assistant_id,
            "run_id": self.run_id,
            "attachments": [],
            "metadata": dict(self.metadata),
            "status": self.status,
            "incomplete_details": (
                {"reason": self.incomplete_reason} if self.incomplete_reason else None
            ),
            "completed_at": self.completed_at,
            "incomplete_at": self.incomplete_at,
        }

    def as_chat(self) -> dict[str, Any]:
        """The agent-facing dict of :meth:`Environment.list_messages`."""
        return {"id": self.id, "role": self.role, "content": self.content}


@dataclass(slots=True)
class Run:
    id: str
    thread_id: str
    assistant_id: str
    created_at: int
    expires_at: int | None
    model: str
    status: RunStatus = "queued"
    instructions: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    started_at: int | None = None
    cancelled_at: int | None = None
    failed_at: int | None = None
    completed_at: int | None = None
    last_error: dict[str, str] | None = None
    incomplete_reason: str | None = None
    last_event_id: int | None = None
    """Id of the run's terminal event in its stream (not part of the wire object)."""

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "thread.run",
            "created_at": self.created_at,
            "thread_id": self.thread_id,
            "assistant_id": self.assistant_id,
            "status": self.status,
            "required_action": None,
            "last_error": dict(self.last_error) if self.last_error else None,
            "expires_at": self.expires_at,
            "started_at": self.started_at,
            "cancelled_at": self.cancelled_at,
            "failed_at": self.failed_at,
            "completed_at": self.completed_at,
            "incomplete_details": (
                {"reason": self.incomplete_reason} if self.incomplete_reason else None
            ),
            "model": self.model,
            "instructions": self.instructions or "",
            "tools": [],
            "metadata": dict(self.metadata),
            "usage": None,
            "temperature": None,
            "top_p": None,
            "max_prompt_tokens": None,
            "max_completion_tokens": None,
            "truncation_strategy": {"type": "auto", "last_messages": None},
            "response_format": "auto",
            "tool_choice": "auto",
            "parallel_tool_calls": True,
        }


@dataclass(slots=True)
class RunStep:
    """A run step (a streamed completion's tool calls, a child run) as stored: ``body`` is
    the ``thread.run.step`` object its events carry, as of its latest event."""

    id: str
    thread_id: str
    run_id: str
    body: dict[str, Any]

    @classmethod
    def of(cls, step: dict[str, Any]) -> RunStep:
        """A snapshot of the step object ``step`` (later changes to it are not seen)."""
        return cls(
            id=step["id"],
            thread_id=step["thread_id"],
            run_id=step["run_id"],
            body=copy.deepcopy(step),
        )

    @property
    def status(self) -> str:
        return str(self.body["status"])

    @property
    def created_at(self) -> int:
        return int(self.body["created_at"])

    def to_dict(self) -> dict[str, Any]:
        """The ``thread.run.step`` object (a copy)."""
        return copy.deepcopy(self.body)
