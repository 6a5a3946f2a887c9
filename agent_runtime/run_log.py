"""What a run has published, and the snapshots rebuilt from it. Pure and synchronous.

The run records every event it publishes (id, name, payload). From that record it can
answer the broker's two snapshot questions for any event id ``at``:

* :meth:`RunLog.snapshot` — for a subscriber that fell behind the replay buffer (or joined
  after it was trimmed): the run object, each finished message as ``created`` +
  ``completed``, each message still streaming as ``created`` + one ``delta`` holding its
  text up to ``at``, and the terminal event if the run had ended by ``at``.
* :meth:`RunLog.resume_snapshot` — for a subscriber resuming from a cursor without its
  state (``snapshot=1``): the run object and, for each message still streaming at ``at``,
  its ``created`` and one ``delta`` with the text up to ``at``.

Memory: per message, its text plus two integers per delta.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any

__all__ = ["RunLog", "delta_payload"]

TERMINAL_RUN_EVENTS = frozenset(
    {
        "thread.run.completed",
        "thread.run.failed",
        "thread.run.cancelled",
        "thread.run.expired",
        "thread.run.incomplete",
        "thread.run.requires_action",
    }
)
_MESSAGE_FINAL = frozenset({"thread.message.completed", "thread.message.incomplete"})


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


@dataclass(slots=True)
class _MessageTrack:
    message_id: str
    created_id: int
    created: dict[str, Any]
    delta_ids: list[int] = field(default_factory=list)
    delta_ends: list[int] = field(default_factory=list)
    parts: list[str] = field(default_factory=list)
    length: int = 0
    final_id: int | None = None
    final_name: str = ""
    final: dict[str, Any] | None = None

    def text_upto(self, at: int) -> str:
        count = bisect.bisect_right(self.delta_ids, at)
        if count == 0:
            return ""
        return "".join(self.parts)[: self.delta_ends[count - 1]]

    def finished_by(self, at: int) -> bool:
        return self.final_id is not None and self.final_id <= at


class RunLog:
    """The record of one run's published events, enough to rebuild any past state."""

    __slots__ = ("_run_events", "_messages", "_terminal")

    def __init__(self) -> None:
        self._run_events: list[tuple[int, str, dict[str, Any]]] = []
        self._messages: dict[str, _MessageTrack] = {}
        self._terminal: tuple[int, str, dict[str, Any]] | None = None

    def record(self, event_id: int, name: str, payload: dict[str, Any]) -> None:
        """Note an event the run has just published with id ``event_id``."""
        if name == "thread.message.delta":
            track = self._messages.get(payload["id"])
            if track is not None:
                text = delta_text(payload)
                track.parts.append(text)
                track.length += len(text)
                track.delta_ids.append(event_id)
                track.delta_ends.append(track.length)
        elif name.startswith("thread.run."):
            if name in TERMINAL_RUN_EVENTS:
                self._terminal = (event_id, name, payload)
            elif name.count(".") == 2:  # thread.run.<status>, not thread.run.step.*
                self._run_events.append((event_id, name, payload))
        elif name == "thread.message.created":
            self._messages[payload["id"]] = _MessageTrack(payload["id"], event_id, payload)
        elif name in _MESSAGE_FINAL:
            track = self._messages.get(payload["id"])
            if track is not None:
                track.final_id, track.final_name, track.final = event_id, name, payload

    def message_text(self, message_id: str) -> str:
        track = self._messages.get(message_id)
        return "" if track is None else "".join(track.parts)

    def _run_at(self, at: int) -> list[tuple[str, Any]]:
        latest: tuple[str, Any] | None = None
        for event_id, name, payload in self._run_events:
            if event_id > at:
                break
            latest = (name, payload)
        return [latest] if latest is not None else []

    def snapshot(self, at: int) -> list[tuple[str, Any]]:
        """Events that rebuild, from nothing, the run as of event ``at`` (see module doc)."""
        events = self._run_at(at)
        for track in self._messages.values():
            if track.created_id > at:
                continue
            events.append(("thread.message.created", track.created))
            if track.finished_by(at):
                assert track.final is not None
                events.append((track.final_name, track.final))
            else:
                text = track.text_upto(at)
                if text:
                    events.append(("thread.message.delta", delta_payload(track.message_id, text)))
        if self._terminal is not None and self._terminal[0] <= at:
            events.append((self._terminal[1], self._terminal[2]))
        return events

    def resume_snapshot(self, at: int) -> list[tuple[str, Any]]:
        """The run object and the state of messages streaming at ``at`` (see module doc)."""
        events = self._run_at(at)
        for track in self._messages.values():
            if track.created_id > at or track.finished_by(at):
                continue
            events.append(("thread.message.created", track.created))
            text = track.text_upto(at)
            if text:
                events.append(("thread.message.delta", delta_payload(track.message_id, text)))
        return events
