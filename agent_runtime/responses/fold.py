"""The response object as a fold over its Responses events. Pure and synchronous.

:class:`ResponseFold` records the Responses events of one response (``response.created``,
``response.output_item.added``, ``response.output_text.delta``, …) and keeps the
response object they describe, exactly as a client accumulating the stream would. It is
the broker's :class:`~broker.types.Projection` for a response's stream: the snapshot a
reader behind the replay buffer gets after the gap (see ``docs/responses.md``) is one
lifecycle event carrying the whole response as of the head, stamped with the head's id:

* ``response.in_progress`` (or ``response.queued``) while the response is live;
* its terminal event (``response.completed`` / ``response.failed`` /
  ``response.incomplete``) once it has ended.

Every lifecycle event carries the whole response, output included, so recording such a
snapshot (a mirror node rebuilding from one) replaces the state: the fold is then exact
from there on.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

__all__ = [
    "LIFECYCLE_EVENTS",
    "TERMINAL_EVENTS",
    "ResponseFold",
    "terminal_event_for",
]

TERMINAL_EVENTS = frozenset({"response.completed", "response.failed", "response.incomplete"})
"""The events that end a response's stream (exactly one per response)."""

LIFECYCLE_EVENTS = frozenset(
    {"response.created", "response.queued", "response.in_progress", *TERMINAL_EVENTS}
)
"""Events whose ``response`` is the whole response object."""

TERMINAL_STATUSES = frozenset({"completed", "failed", "cancelled", "incomplete"})


def terminal_event_for(status: str) -> str:
    """The terminal event of a response ending with ``status`` (a cancelled response
    ends with ``response.failed``, its ``status`` saying ``cancelled``)."""
    if status == "completed":
        return "response.completed"
    if status == "incomplete":
        return "response.incomplete"
    return "response.failed"


class ResponseFold:
    """The response as of the last recorded event (see the module docstring)."""

    __slots__ = ("_response", "head", "_pending")

    def __init__(self, response: dict[str, Any] | None = None) -> None:
        self._response: dict[str, Any] = copy.deepcopy(response) if response else {}
        self.head = 0
        """The id (``sequence_number + 1``) of the last event recorded."""
        self._pending: dict[tuple[int, int], list[str]] = {}
        """Text deltas not yet joined into their part, by (output, content) index: a
        delta costs an append, not a copy of the text so far."""

    @property
    def response(self) -> dict[str, Any]:
        """The response as of the last event (the fold's own object: do not modify)."""
        if self._pending:
            self._flush()
        return self._response

    def _flush(self) -> None:
        output = self._response.get("output") or []
        for (index, at), texts in self._pending.items():
            parts = output[index].get("content") or [] if index < len(output) else []
            if at < len(parts):
                parts[at]["text"] = str(parts[at].get("text", "")) + "".join(texts)
        self._pending.clear()

    @property
    def status(self) -> str:
        return str(self.response.get("status") or "queued")

    @property
    def ended(self) -> bool:
        return self.status in TERMINAL_STATUSES

    def record(self, event_id: int, name: str, payload: Any) -> None:
        """Fold one Responses event (``payload`` is its JSON object)."""
        self.head = max(self.head, event_id)
        if not isinstance(payload, dict):
            return
        if name in LIFECYCLE_EVENTS:
            response = payload.get("response")
            if isinstance(response, dict):
                self._pending.clear()
                self._response = copy.deepcopy(response)
            return
        index = payload.get("output_index")
        if not isinstance(index, int):
            return
        if name == "response.output_text.delta":
            key = (index, int(payload.get("content_index", 0)))
            self._pending.setdefault(key, []).append(str(payload.get("delta", "")))
            return
        output: list[dict[str, Any]] = self.response.setdefault("output", [])
        if name == "response.output_item.added":
            item = copy.deepcopy(payload.get("item") or {})
            if index < len(output):
                output[index] = item
            else:
                output.append(item)
            return
        if index >= len(output):
            return
        item = output[index]
        if name == "response.output_item.done":
            output[index] = copy.deepcopy(payload.get("item") or item)
        elif name == "response.content_part.added":
            item.setdefault("content", []).append(copy.deepcopy(payload.get("part") or {}))
        elif name == "response.content_part.done":
            parts = item.setdefault("content", [])
            at = int(payload.get("content_index", 0))
            if at < len(parts):
                parts[at] = copy.deepcopy(payload.get("part") or parts[at])
        elif name == "response.function_call_arguments.delta":
            item["arguments"] = str(item.get("arguments", "")) + str(payload.get("delta", ""))
        elif name == "response.function_call_arguments.done":
            item["arguments"] = str(payload.get("arguments", item.get("arguments", "")))

    def copy_response(self) -> dict[str, Any]:
        return copy.deepcopy(self.response)

    def snapshot(self, at: int) -> Sequence[tuple[str, Any]]:
        """One lifecycle event holding the whole response as of the head (the broker asks
        at the head; ``at`` only stamps its ``sequence_number``)."""
        if not self.response:
            return []
        status = self.status
        if status in TERMINAL_STATUSES:
            name = terminal_event_for(status)
        elif status == "queued":
            name = "response.queued"
        else:
            name = "response.in_progress"
        return [
            (
                name,
                {"type": name, "sequence_number": max(at - 1, 0), "response": self.copy_response()},
            )
        ]

    def resume_snapshot(self, at: int) -> Sequence[tuple[str, Any]]:
        """As :meth:`snapshot` (Responses streams are never asked for ``snapshot=1``)."""
        return self.snapshot(at)
