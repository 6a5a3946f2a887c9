"""Checks of runs whose streams hold run steps (tool calls, child runs) and agent events.

:func:`check_steps_run` checks a whole run: ids ``1..N`` with no hole over every event;
messages and run events as :func:`conftest.check_run` checks them; every step
``created`` → ``in_progress`` → (``delta``…) → one final event, its deltas naming it,
the concatenated tool call arguments equal to those of its final object.
:class:`StepsClientState` rebuilds a client's view (messages, steps, tool call
arguments) from any sequence: gap, snapshots, tails.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .conftest import ClientState, RunTrace, check_run
from .sse import Ev

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                "required": ["city", "days"],
            },
        },
    }
]
"""The tool the step tests' agents offer (built into their source with ``repr``)."""

STEP_FINAL = frozenset(
    {
        "thread.run.step.completed",
        "thread.run.step.cancelled",
        "thread.run.step.failed",
        "thread.run.step.expired",
    }
)


def is_step(event: Ev) -> bool:
    return event.name.startswith("thread.run.step.")


def is_agent(event: Ev) -> bool:
    return event.name.startswith("thread.agent.")


@dataclass
class StepTrace:
    id: str
    events: list[Ev] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [e.name for e in self.events]

    @property
    def final(self) -> Ev:
        return self.events[-1]

    @property
    def kind(self) -> str:
        return str(self.events[0].data["type"])

    def streamed_calls(self) -> list[dict[str, str]]:
        """The tool calls rebuilt from the deltas: ``{"id", "name", "arguments"}``."""
        calls: dict[int, dict[str, str]] = {}
        for event in self.events:
            if event.name != "thread.run.step.delta":
                continue
            for fragment in event.data["delta"]["step_details"]["tool_calls"]:
                call = calls.setdefault(fragment["index"], {"id": "", "name": "", "arguments": ""})
                call["id"] += fragment.get("id") or ""
                call["name"] += fragment["function"].get("name") or ""
                call["arguments"] += fragment["function"].get("arguments") or ""
        return [calls[i] for i in sorted(calls)]

    def final_calls(self) -> list[dict[str, str]]:
        details = self.final.data["step_details"]
        return [
            {
                "id": c["id"],
                "name": c["function"]["name"],
                "arguments": c["function"]["arguments"],
            }
            for c in details["tool_calls"]
        ]


@dataclass
class StepsRunTrace:
    run: RunTrace
    steps: list[StepTrace]
    agent_events: list[Ev]

    @property
    def texts(self) -> list[str]:
        return self.run.texts


def check_steps_run(
    events: list[Ev], terminal: str | None = "thread.run.completed"
) -> StepsRunTrace:
    """Check a whole run holding steps and agent events (module doc)."""
    assert [e.id for e in events] == list(range(1, len(events) + 1)), [e.id for e in events]
    plain = [e for e in events if not is_step(e) and not is_agent(e)]
    renumbered = [dataclasses.replace(e, id=i) for i, e in enumerate(plain, 1)]
    trace = check_run(renumbered, terminal)
    run_id = events[0].data["id"]
    steps: dict[str, StepTrace] = {}
    for event in events:
        if not is_step(event):
            continue
        step_id = event.data["id"]
        if event.name == "thread.run.step.created":
            assert step_id not in steps, f"step {step_id} created twice"
            steps[step_id] = StepTrace(step_id)
            data = event.data
            assert data["object"] == "thread.run.step" and data["run_id"] == run_id, data
            assert data["status"] == "in_progress", data
            assert data["step_details"]["type"] == data["type"], data
        assert step_id in steps, f"{event.name} before {step_id} was created"
        steps[step_id].events.append(event)
    for step in steps.values():
        names = step.names
        assert names[:2] == ["thread.run.step.created", "thread.run.step.in_progress"], names
        assert set(names[2:-1]) <= {"thread.run.step.delta"}, names
        assert names[-1] in STEP_FINAL, names
        final = step.final
        assert final.data["status"] == final.name.removeprefix("thread.run.step."), final
        if step.kind == "tool_calls":
            if final.name == "thread.run.step.completed":
                assert step.streamed_calls() == step.final_calls()
        else:
            assert len(names) == 3, names
    # Every step ended before the run's terminal event.
    last = events[-1].id
    assert last is not None
    assert all(s.final.id is not None and s.final.id < last for s in steps.values())
    agent = [e for e in events if is_agent(e)]
    return StepsRunTrace(trace, list(steps.values()), agent)


class StepsClientState(ClientState):
    """A :class:`ClientState` that also rebuilds run steps and tolerates agent events.

    A step delta (or end) of a step it has not seen created is an error, as it is for the
    official SDK (``KeyError`` in its step snapshots)."""

    def __init__(self) -> None:
        super().__init__()
        self.steps: dict[str, dict[str, Any]] = {}
        self.step_status: dict[str, str] = {}
        self.calls: dict[str, dict[int, dict[str, str]]] = {}
        self.agent: list[Ev] = []

    def apply(self, event: Ev) -> None:
        if is_agent(event):
            if event.id is not None:
                self.last_id = event.id
            self.agent.append(event)
            return
        if not is_step(event):
            super().apply(event)
            return
        if event.id is not None:
            self.last_id = event.id
        step_id = event.data["id"]
        if event.name == "thread.run.step.created":
            self.steps[step_id] = event.data
            self.step_status[step_id] = event.data["status"]
            self.calls[step_id] = {}
            return
        assert step_id in self.steps, f"{event.name} of a step never created"
        if event.name == "thread.run.step.delta":
            assert self.step_status[step_id] == "in_progress", "a delta after the step ended"
            for fragment in event.data["delta"]["step_details"]["tool_calls"]:
                call = self.calls[step_id].setdefault(
                    fragment["index"], {"id": "", "name": "", "arguments": ""}
                )
                call["id"] += fragment.get("id") or ""
                call["name"] += fragment["function"].get("name") or ""
                call["arguments"] += fragment["function"].get("arguments") or ""
        elif event.name in STEP_FINAL:
            self.steps[step_id] = event.data
            self.step_status[step_id] = event.data["status"]
            if event.data["type"] == "tool_calls":
                self.calls[step_id] = {
                    i: {
                        "id": c["id"],
                        "name": c["function"]["name"],
                        "arguments": c["function"]["arguments"],
                    }
                    for i, c in enumerate(event.data["step_details"]["tool_calls"])
                }

    def tool_calls(self) -> list[dict[str, str]]:
        return [c for calls in self.calls.values() for _i, c in sorted(calls.items())]
