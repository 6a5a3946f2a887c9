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

Run steps (``thread.run.step.*``: tool calls, child runs) are state too, rebuilt like
messages: a finished step as its ``created`` and its final event; a step still in
progress as its ``created`` and, for tool calls, one ``delta`` holding every tool call so
far (id, name and the arguments up to ``at``). Messages and steps come in the order they
were created. Agent-written events (``thread.agent.*``: progress lines, custom events,
relayed child deltas) are not state: they are replayed and resumed exactly while buffered,
but a snapshot leaves them out.

Memory: per message, its text plus two integers per delta; per step, its deltas.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Any

from .protocol import (
    GAP,
    MESSAGE_CREATED,
    MESSAGE_DELTA,
    MESSAGE_FINAL,
    STEP_CREATED,
    STEP_DELTA,
    STEP_FINAL,
    TERMINAL_RUN_EVENTS,
    delta_payload,
    delta_text,
    is_run_status_event,
    step_delta_payload,
)
from .tool_calls import ToolCallFold

__all__ = ["CompactItem", "Replay", "RunLog", "replay_compacted"]

CompactItem = list[Any]
"""``[first_id, id, name, payload]``: one event of a compacted log. ``id`` is the event's
own id in the run's numbering; ``first_id`` is the first id it stands for (a merged delta
stands for every delta from ``first_id`` to ``id``; any other event has ``first_id == id``)."""


def _created(track: _MessageTrack | _StepTrack) -> str:
    return MESSAGE_CREATED if isinstance(track, _MessageTrack) else STEP_CREATED


@dataclass(frozen=True, slots=True)
class Replay:
    """What a stream rebuilt from a compacted log sends a cursor (:func:`replay_compacted`).

    ``items``: ``(id, name, payload)`` in order; ``id`` is ``None`` for gap and snapshot
    events. ``at_end``: nothing follows the cursor (answer ``204``)."""

    items: list[tuple[int | None, str, Any]]
    at_end: bool = False


def replay_compacted(
    items: list[CompactItem],
    cursor: int | None,
    *,
    resume: bool = False,
    gap_event: str = GAP,
) -> Replay:
    """The events a subscriber with ``cursor`` gets from a run's compacted log (pure).

    * A cursor at or past the last event: nothing (``at_end``).
    * A cursor that falls between two kept events (no kept event stands for deltas on
      both sides of it): a gap (``to``: the next id sent; the individual deltas are
      gone), then every kept event after it, each with its own original id, so that any
      of them is a cursor that works. With ``resume`` (``snapshot=1``), the gap is
      followed first by the state a client without any needs at the cursor: the run
      object and the ``created`` event of each message or step open there (no ids).
    * A cursor inside a run of merged deltas (the subscriber holds part of a text): a
      gap (``to``: past the last id), then a snapshot that rebuilds everything, without
      ids except the last event's, which carries the last id, as a live gap does.
    """
    if not items:
        return Replay([], at_end=True)
    last = int(items[-1][1])
    after = cursor or 0
    if after >= last:
        return Replay([], at_end=True)
    straddled = any(int(first) <= after < int(event_id) for first, event_id, _n, _p in items)
    if straddled:
        snapshot: list[tuple[int | None, str, Any]] = [(None, str(i[2]), i[3]) for i in items]
        snapshot[-1] = (last, snapshot[-1][1], snapshot[-1][2])
        return Replay([(None, gap_event, {"from": after, "to": last + 1}), *snapshot])
    following = [item for item in items if int(item[1]) > after]
    out: list[tuple[int | None, str, Any]] = [
        (None, gap_event, {"from": after, "to": int(following[0][0])})
    ]
    if resume:
        out.extend(_state_at(items, after))
    out.extend((int(i[1]), str(i[2]), i[3]) for i in following)
    return Replay(out)


def _state_at(items: list[CompactItem], at: int) -> list[tuple[int | None, str, Any]]:
    """The run object as of ``at`` and the ``created`` events of the messages and steps
    open at ``at`` (created by then, ended after), from a compacted log (no ids)."""
    ends: dict[str, int] = {}
    for _first, event_id, name, payload in items:
        if not name.endswith(".created") and isinstance(payload, dict) and "id" in payload:
            ends[str(payload["id"])] = int(event_id)
    run: tuple[int | None, str, Any] | None = None
    for _first, event_id, name, payload in items:
        if int(event_id) > at:
            break
        if is_run_status_event(name):
            run = (None, str(name), payload)
    state = [run] if run is not None else []
    for _first, event_id, name, payload in items:
        if int(event_id) <= at and name.endswith(".created") and ends.get(payload["id"], 0) > at:
            state.append((None, str(name), payload))
    return state


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
    first_delta: int | None = None
    """The first delta's id when it was recorded merged (:meth:`RunLog.from_compacted`)."""

    def text_upto(self, at: int) -> str:
        count = bisect.bisect_right(self.delta_ids, at)
        if count == 0:
            return ""
        return "".join(self.parts)[: self.delta_ends[count - 1]]

    def finished_by(self, at: int) -> bool:
        return self.final_id is not None and self.final_id <= at


@dataclass(slots=True)
class _StepTrack:
    step_id: str
    created_id: int
    created: dict[str, Any]
    deltas: list[tuple[int, list[dict[str, Any]]]] = field(default_factory=list)
    final_id: int | None = None
    final_name: str = ""
    final: dict[str, Any] | None = None
    first_delta: int | None = None
    """The first delta's id when it was recorded merged (:meth:`RunLog.from_compacted`)."""

    def finished_by(self, at: int) -> bool:
        return self.final_id is not None and self.final_id <= at

    def delta_upto(self, at: int) -> dict[str, Any] | None:
        """One delta holding every tool call fragment published up to ``at``."""
        fold = ToolCallFold()
        for event_id, fragments in self.deltas:
            if event_id > at:
                break
            fold.add_entries(fragments)
        if not fold:
            return None
        return step_delta_payload(self.step_id, fold.step_calls())


class RunLog:
    """The record of one run's published events, enough to rebuild any past state."""

    __slots__ = ("_run_events", "_messages", "_steps", "_terminal")

    def __init__(self) -> None:
        self._run_events: list[tuple[int, str, dict[str, Any]]] = []
        self._messages: dict[str, _MessageTrack] = {}
        self._steps: dict[str, _StepTrack] = {}
        self._terminal: tuple[int, str, dict[str, Any]] | None = None

    def record(
        self, event_id: int, name: str, payload: dict[str, Any], text: str | None = None
    ) -> None:
        """Note an event the run has just published with id ``event_id``. ``text``: a
        delta's text, when the caller has it (else it is read from ``payload``)."""
        if name.startswith("thread.run.step."):
            self._record_step(event_id, name, payload)
        elif name == MESSAGE_DELTA:
            track = self._messages.get(payload["id"])
            if track is not None:
                if text is None:
                    text = delta_text(payload)
                track.parts.append(text)
                track.length += len(text)
                track.delta_ids.append(event_id)
                track.delta_ends.append(track.length)
        elif name.startswith("thread.run."):
            if name in TERMINAL_RUN_EVENTS:
                self._terminal = (event_id, name, payload)
            elif is_run_status_event(name):
                self._run_events.append((event_id, name, payload))
        elif name == MESSAGE_CREATED:
            self._messages[payload["id"]] = _MessageTrack(payload["id"], event_id, payload)
        elif name in MESSAGE_FINAL:
            track = self._messages.get(payload["id"])
            if track is not None:
                track.final_id, track.final_name, track.final = event_id, name, payload

    def _record_step(self, event_id: int, name: str, payload: dict[str, Any]) -> None:
        if name == STEP_CREATED:
            self._steps[payload["id"]] = _StepTrack(payload["id"], event_id, payload)
            return
        track = self._steps.get(payload["id"])
        if track is None:
            return
        if name == STEP_DELTA:
            details = payload.get("delta", {}).get("step_details") or {}
            track.deltas.append((event_id, list(details.get("tool_calls") or [])))
        elif name in STEP_FINAL:
            track.final_id, track.final_name, track.final = event_id, name, payload

    def _tracks(self, at: int) -> list[_MessageTrack | _StepTrack]:
        """Messages and steps created by ``at``, in the order they were created."""
        tracks: list[_MessageTrack | _StepTrack] = [
            t for t in self._messages.values() if t.created_id <= at
        ]
        if self._steps:
            tracks.extend(t for t in self._steps.values() if t.created_id <= at)
            tracks.sort(key=lambda t: t.created_id)
        return tracks

    def _step_events(self, track: _StepTrack, at: int, finished: bool) -> list[tuple[str, Any]]:
        events: list[tuple[str, Any]] = [(STEP_CREATED, track.created)]
        if finished:
            assert track.final is not None
            events.append((track.final_name, track.final))
        else:
            delta = track.delta_upto(at)
            if delta is not None:
                events.append((STEP_DELTA, delta))
        return events

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
        for track in self._tracks(at):
            if isinstance(track, _StepTrack):
                events.extend(self._step_events(track, at, track.finished_by(at)))
                continue
            events.append((MESSAGE_CREATED, track.created))
            if track.finished_by(at):
                assert track.final is not None
                events.append((track.final_name, track.final))
            else:
                text = track.text_upto(at)
                if text:
                    events.append((MESSAGE_DELTA, delta_payload(track.message_id, text)))
        if self._terminal is not None and self._terminal[0] <= at:
            events.append((self._terminal[1], self._terminal[2]))
        return events

    def compact(self, at: int | None = None) -> list[CompactItem]:
        """The run as of event ``at`` (default: all recorded) as a compacted event log:
        the latest run status event; each message and step as its ``created`` and, when
        finished, its final event (which stands for its deltas too), else one ``delta``
        merging its deltas so far; the terminal event. Every item keeps its original id
        (see :data:`CompactItem`), in id order; a message's text is held once.

        What is stored for a run, so that a stream rebuilt from the store keeps the
        run's numbering and a client's cursor still works (:func:`replay_compacted`)."""
        limit = at if at is not None else 1 << 62
        items: list[CompactItem] = []
        latest: tuple[int, str, dict[str, Any]] | None = None
        for event in self._run_events:
            if event[0] > limit:
                break
            latest = event
        if latest is not None:
            items.append([latest[0], latest[0], latest[1], latest[2]])
        for track in self._tracks(limit):
            items.append([track.created_id, track.created_id, _created(track), track.created])
            if isinstance(track, _MessageTrack):
                ids = track.delta_ids[: bisect.bisect_right(track.delta_ids, limit)]
            else:
                ids = [event_id for event_id, _ in track.deltas if event_id <= limit]
            first = track.first_delta or (ids[0] if ids else None)
            if track.finished_by(limit):
                assert track.final is not None and track.final_id is not None
                start = first or track.final_id
                items.append([start, track.final_id, track.final_name, track.final])
            elif ids and first is not None:
                if isinstance(track, _MessageTrack):
                    text = track.text_upto(limit)
                    delta = delta_payload(track.message_id, text)
                    items.append([first, ids[-1], MESSAGE_DELTA, delta])
                else:
                    step_delta = track.delta_upto(limit)
                    if step_delta is not None:
                        items.append([first, ids[-1], STEP_DELTA, step_delta])
        if self._terminal is not None and self._terminal[0] <= limit:
            event_id, name, payload = self._terminal
            items.append([event_id, event_id, name, payload])
        items.sort(key=lambda item: int(item[1]))
        return items

    @classmethod
    def from_compacted(cls, items: list[CompactItem]) -> RunLog:
        """A log that answers as the one that made ``items`` did, as of their last id."""
        log = cls()
        for first, event_id, name, payload in items:
            log.record(int(event_id), str(name), payload)
            if int(first) < int(event_id):  # stands for deltas: keep the ids it covers
                track: _MessageTrack | _StepTrack | None = log._messages.get(
                    payload["id"]
                ) or log._steps.get(payload["id"])
                if track is not None and track.first_delta is None:
                    track.first_delta = int(first)
        return log

    def open_items(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The ``created`` payloads of the messages and steps not finished, with each
        message's text so far as ``"_text"`` (for ending a run that was interrupted)."""
        messages = [
            track.created | {"_text": "".join(track.parts)}
            for track in self._messages.values()
            if track.final_id is None
        ]
        steps = [track.created for track in self._steps.values() if track.final_id is None]
        return messages, steps

    def resume_snapshot(self, at: int) -> list[tuple[str, Any]]:
        """The run object and the state of messages streaming at ``at`` (see module doc)."""
        events = self._run_at(at)
        for track in self._tracks(at):
            if track.finished_by(at):
                continue
            if isinstance(track, _StepTrack):
                events.extend(self._step_events(track, at, False))
                continue
            events.append((MESSAGE_CREATED, track.created))
            text = track.text_upto(at)
            if text:
                events.append((MESSAGE_DELTA, delta_payload(track.message_id, text)))
        return events
