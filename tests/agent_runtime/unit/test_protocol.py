"""The event vocabulary (``agent_runtime.protocol``): one home for names and payloads,
and the chat page's copy of the terminal events kept equal to it. Plain unit tests."""

from __future__ import annotations

import re

from agent_runtime import protocol
from agent_runtime.agents import bundled_examples_dir
from agent_runtime.objects import TERMINAL_STATUSES


def test_terminal_events_are_the_terminal_statuses() -> None:
    assert {protocol.run_event(s) for s in TERMINAL_STATUSES} == protocol.TERMINAL_RUN_EVENTS
    assert "thread.run.completed" in protocol.TERMINAL_RUN_EVENTS
    assert "thread.run.cancelling" not in protocol.TERMINAL_RUN_EVENTS


def test_the_chat_pages_terminal_events_match() -> None:
    app = (bundled_examples_dir().parent / "ui" / "app.js").read_text()
    block = re.search(r"const TERMINAL_EVENTS = new Set\(\[(.*?)\]\)", app, re.S)
    assert block is not None
    assert set(re.findall(r"'([^']+)'", block.group(1))) == protocol.TERMINAL_RUN_EVENTS


def test_a_delta_payload_reads_back_its_text() -> None:
    payload = protocol.delta_payload("msg_1", "Know thyself")
    assert payload["object"] == "thread.message.delta"
    assert protocol.delta_text(payload) == "Know thyself"
    assert protocol.delta_text({"delta": {}}) == ""


def test_step_objects_and_names() -> None:
    step = protocol.step_object(
        run_id="run_1", thread_id="thread_1", assistant_id="a", kind="tool_calls", details={}
    )
    assert step["status"] == "in_progress" and step["id"].startswith("step_")
    assert protocol.step_event("completed") in protocol.STEP_FINAL
    assert protocol.is_run_status_event("thread.run.queued")
    assert not protocol.is_run_status_event("thread.run.step.created")
    assert protocol.agent_event("sources") == "thread.agent.sources"
    assert protocol.AGENT_EVENT_NAME.match("a.b-c_1")
    assert not protocol.AGENT_EVENT_NAME.match("no spaces")
