"""The contract's "Events of one run", checked strictly (:func:`check_run`), and what a
client rebuilds from any sequence, gap, snapshots and tails included (:class:`ClientState`)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .basics import GAP, RUN_START, TERMINAL_EVENTS
from .sse import Ev


@dataclass
class MessageTrace:
    id: str
    events: list[Ev] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [e.name for e in self.events]

    @property
    def deltas(self) -> list[Ev]:
        return [e for e in self.events if e.name == "thread.message.delta"]

    @property
    def delta_text(self) -> str:
        return "".join(e.text for e in self.deltas)

    @property
    def final(self) -> Ev:
        return self.events[-1]

    @property
    def text(self) -> str:
        """The text of its ``completed`` (or ``incomplete``) message object."""
        return self.final.text


@dataclass
class RunTrace:
    events: list[Ev]
    messages: list[MessageTrace]
    terminal: Ev

    @property
    def texts(self) -> list[str]:
        return [m.text for m in self.messages]

    @property
    def last_id(self) -> int:
        assert self.terminal.id is not None
        return self.terminal.id


def check_run(events: list[Ev], terminal: str | None = "thread.run.completed") -> RunTrace:
    """Check ``events`` (a whole run, from its first event) against the contract.

    Ids ``1..N`` strictly increasing by one; the run's created, queued, in_progress; per
    message created, in_progress (status in_progress, empty content), deltas naming it,
    then completed (whose text is the concatenated deltas) or incomplete; exactly one
    terminal event, last; every run event's status matches its name (``created`` carries
    ``queued``, as OpenAI's does).
    """
    assert events, "no events"
    assert [e.id for e in events] == list(range(1, len(events) + 1)), [e.id for e in events]
    names = [e.name for e in events]
    assert tuple(names[:3]) == RUN_START, names[:6]
    run_id = events[0].data["id"]
    terminals = [e for e in events if e.name in TERMINAL_EVENTS]
    assert len(terminals) == 1 and terminals[0] is events[-1], names
    if terminal is not None:
        assert events[-1].name == terminal, (names[-3:], events[-1].data.get("last_error"))
    messages: dict[str, MessageTrace] = {}
    for event in events:
        if event.name.startswith("thread.run."):
            assert event.data["object"] == "thread.run" and event.data["id"] == run_id
            status = event.name.removeprefix("thread.run.")
            assert event.data["status"] == ("queued" if status == "created" else status), event
            continue
        assert event.name.startswith("thread.message."), event
        message_id = event.message_id
        if event.name == "thread.message.created":
            assert message_id not in messages, f"{message_id} created twice"
            messages[message_id] = MessageTrace(message_id)
        assert message_id in messages, f"{event.name} before {message_id} was created"
        trace = messages[message_id]
        trace.events.append(event)
        if event.name in ("thread.message.created", "thread.message.in_progress"):
            assert event.data["status"] == "in_progress", event
            assert event.data["content"] == [], event
            assert event.data["run_id"] == run_id and event.data["object"] == "thread.message"
    for trace in messages.values():
        names_m = trace.names
        assert names_m[:2] == ["thread.message.created", "thread.message.in_progress"], names_m
        middle = names_m[2:-1]
        assert set(middle) <= {"thread.message.delta"}, names_m
        assert names_m[-1] in ("thread.message.completed", "thread.message.incomplete"), names_m
        assert all(d.text for d in trace.deltas), "a delta without text"
        final = trace.final
        if final.name == "thread.message.completed":
            assert final.data["status"] == "completed"
            assert trace.deltas or not final.text, f"{trace.id} completed without any delta"
            assert trace.delta_text == final.text, (trace.delta_text, final.text)
        else:
            assert final.data["status"] == "incomplete"
            assert trace.delta_text == final.text, (trace.delta_text, final.text)
    return RunTrace(events, list(messages.values()), events[-1])


class ClientState:
    """What a client rebuilds from what it receives, gap and snapshots included.

    Like the official SDK's event handler it refuses a delta (or an end) for a message it
    has not seen created. A ``created`` (re)starts the message's text; a ``completed``
    must agree with the deltas seen since, if any.
    """

    def __init__(self) -> None:
        self.run: dict[str, Any] | None = None
        self.terminal: str | None = None
        self.text: dict[str, str] = {}
        self.final: dict[str, str] = {}
        self.gaps: list[dict[str, Any]] = []
        self.last_id: int | None = None

    def apply(self, event: Ev) -> None:
        if event.id is not None:
            self.last_id = event.id
        name = event.name
        if name == GAP:
            self.gaps.append(event.data)
        elif name.startswith("thread.run."):
            assert self.terminal is None, f"{name} after {self.terminal}"
            self.run = event.data
            if name in TERMINAL_EVENTS:
                self.terminal = name
        elif name == "thread.message.created":
            self.text[event.message_id] = ""
        else:
            assert name.startswith("thread.message."), name
            assert event.message_id in self.text, f"{name} of a message never created"
            if name == "thread.message.delta":
                assert event.message_id not in self.final, "a delta after the message ended"
                self.text[event.message_id] += event.text
            elif name in ("thread.message.completed", "thread.message.incomplete"):
                seen = self.text[event.message_id]
                if seen:
                    assert seen == event.text, (seen, event.text)
                self.text[event.message_id] = self.final[event.message_id] = event.text

    def apply_all(self, events: Iterable[Ev]) -> ClientState:
        for event in events:
            self.apply(event)
        return self

    @property
    def texts(self) -> list[str]:
        return list(self.text.values())
