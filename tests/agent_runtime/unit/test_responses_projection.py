"""The Responses projection, its fold and its objects: pure, plain asserts."""

from __future__ import annotations

from typing import Any

import pytest

from agent_runtime import protocol
from agent_runtime.errors import InvalidRequest, NotFound
from agent_runtime.responses.fold import ResponseFold
from agent_runtime.responses.objects import (
    base_response,
    chat_messages,
    input_items,
    parse_response_id,
    response_id,
)
from agent_runtime.responses.projection import Projector
from agent_runtime.run_log import RunLog

THREAD = "thread_" + "a" * 24
RUN = "run_" + "b" * 24


def base() -> dict[str, Any]:
    rid = response_id(THREAD, RUN)
    return base_response(response_id=rid, thread_id=THREAD, created_at=1, model="m", body={})


def run(status: str, **fields: Any) -> dict[str, Any]:
    return {"id": RUN, "object": "thread.run", "status": status, **fields}


def message(mid: str, text: str = "", status: str = "in_progress") -> dict[str, Any]:
    content = [{"type": "text", "text": {"value": text, "annotations": []}}] if text else []
    return {"id": mid, "object": "thread.message", "status": status, "content": content}


def step(
    sid: str, kind: str, calls: list[dict[str, Any]], status: str = "in_progress"
) -> dict[str, Any]:
    return {
        "id": sid,
        "object": "thread.run.step",
        "type": kind,
        "status": status,
        "step_details": {"type": kind, "tool_calls": calls},
    }


def call(index: int, cid: str, name: str, arguments: str) -> dict[str, Any]:
    return {
        "index": index,
        "id": cid,
        "type": "function",
        "function": {"name": name, "arguments": arguments},
    }


STREAMED_RUN: list[tuple[str, dict[str, Any]]] = [
    (protocol.RUN_CREATED, run("queued")),
    (protocol.RUN_QUEUED, run("queued")),
    ("thread.run.in_progress", run("in_progress")),
    (protocol.MESSAGE_CREATED, message("msg_1")),
    (protocol.MESSAGE_IN_PROGRESS, message("msg_1")),
    (protocol.MESSAGE_DELTA, protocol.delta_payload("msg_1", "Hello, ")),
    (protocol.MESSAGE_DELTA, protocol.delta_payload("msg_1", "world.")),
    (protocol.MESSAGE_COMPLETED, message("msg_1", "Hello, world.", "completed")),
    (protocol.STEP_CREATED, step("step_1", "tool_calls", [])),
    (protocol.STEP_DELTA, protocol.step_delta_payload("step_1", [call(0, "call_1", "f", '{"a"')])),
    (
        protocol.STEP_DELTA,
        protocol.step_delta_payload("step_1", [{"index": 0, "function": {"arguments": ":1}"}}]),
    ),
    (protocol.AGENT_PROGRESS, protocol.progress_payload(RUN, THREAD, "thinking")),
    (protocol.agent_event("score"), protocol.agent_event_payload(RUN, THREAD, "score", {"x": 1})),
    (
        "thread.run.step.completed",
        step("step_1", "tool_calls", [call(0, "call_1", "f", '{"a":1}')], "completed"),
    ),
    (
        "thread.run.completed",
        run("completed", usage={"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}),
    ),
]


def project(
    events: list[tuple[str, dict[str, Any]]],
) -> tuple[Projector, list[tuple[str, dict[str, Any]]]]:
    projector = Projector(base())
    out: list[tuple[str, dict[str, Any]]] = []
    for name, payload in events:
        out.extend(projector.feed(name, payload))
    return projector, out


def test_a_streamed_run_maps_onto_responses_events() -> None:
    projector, out = project(STREAMED_RUN)
    assert [name for name, _ in out] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
        "response.output_text.delta",
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.output_item.added",
        "response.function_call_arguments.delta",
        "response.function_call_arguments.delta",
        "response.agent.progress",
        "response.agent.event",
        "response.function_call_arguments.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [event["sequence_number"] for _, event in out] == list(range(len(out)))
    assert all(event["type"] == name for name, event in out)
    final = out[-1][1]["response"]
    assert final["status"] == "completed"
    assert final["usage"]["total_tokens"] == 7
    text, fc = final["output"]
    assert text["content"][0]["text"] == "Hello, world." and text["status"] == "completed"
    assert fc["type"] == "function_call" and fc["call_id"] == "call_1"
    assert fc["arguments"] == '{"a":1}' and fc["status"] == "completed"
    assert projector.ended and projector.feed("thread.run.completed", run("completed")) == []


def test_a_message_added_whole_gets_one_delta() -> None:
    _, out = project(
        [
            (protocol.RUN_CREATED, run("queued")),
            (protocol.MESSAGE_CREATED, message("msg_1", "All at once.", "completed")),
            (protocol.MESSAGE_COMPLETED, message("msg_1", "All at once.", "completed")),
        ]
    )
    deltas = [e["delta"] for n, e in out if n == "response.output_text.delta"]
    assert deltas == ["All at once."]
    assert [n for n, _ in out].count("response.output_item.done") == 1


def test_failed_and_cancelled_runs() -> None:
    opened = [(protocol.RUN_CREATED, run("queued")), (protocol.MESSAGE_CREATED, message("msg_1"))]
    failed = run("failed", last_error={"code": "server_error", "message": "boom"})
    _, out = project([*opened, ("thread.run.failed", failed)])
    name, event = out[-1]
    assert name == "response.failed" and event["response"]["error"]["message"] == "boom"
    assert event["response"]["output"][0]["status"] == "incomplete"  # closed by the end
    _, out = project([*opened, ("thread.run.cancelled", run("cancelled"))])
    assert out[-1][0] == "response.failed"
    assert out[-1][1]["response"]["status"] == "cancelled"
    _, out = project([*opened, ("thread.run.expired", run("expired"))])
    assert out[-1][1]["response"]["status"] == "failed"


def test_agent_events_never_touch_the_output() -> None:
    child = step("step_2", "child_run", [])
    _, out = project(
        [
            (protocol.RUN_CREATED, run("queued")),
            (protocol.STEP_CREATED, child),
            (protocol.AGENT_CHILD_DELTA, {"child_run_id": "run_c", "text": "hi"}),
            ("thread.run.step.completed", child | {"status": "completed"}),
            ("thread.run.completed", run("completed")),
        ]
    )
    kinds = [n for n, _ in out]
    assert kinds[1:4] == [
        "response.agent.child_run",
        "response.agent.child_delta",
        "response.agent.child_run",
    ]
    assert out[-1][1]["response"]["output"] == []


def test_the_fold_of_the_events_is_the_projectors_response() -> None:
    projector, out = project(STREAMED_RUN[:-1])  # live: not ended
    fold = ResponseFold()
    for name, event in out:
        fold.record(event["sequence_number"] + 1, name, event)
    assert fold.response == projector.fold.response
    [(name, snap)] = fold.snapshot(len(out))
    assert name == "response.in_progress" and snap["sequence_number"] == len(out) - 1
    assert snap["response"]["output"][0]["content"][0]["text"] == "Hello, world."
    rebuilt = ResponseFold()
    rebuilt.record(len(out), name, snap)  # a mirror starting from the snapshot
    assert rebuilt.response == fold.response
    _, out = project(STREAMED_RUN)
    for name, event in out[fold.head :]:
        fold.record(event["sequence_number"] + 1, name, event)
    assert fold.snapshot(len(out))[0][0] == "response.completed"


def test_a_compacted_run_log_gives_the_same_response() -> None:
    log = RunLog()
    for event_id, (name, payload) in enumerate(STREAMED_RUN, start=1):
        log.record(event_id, name, payload)
    live, _ = project(STREAMED_RUN)
    stored, _ = project([(str(item[2]), item[3]) for item in log.compact()])
    assert stored.fold.response["output"] == live.fold.response["output"]
    assert stored.fold.response["status"] == "completed"


def test_ids_and_input_items() -> None:
    rid = response_id(THREAD, RUN)
    assert rid.startswith("resp_") and parse_response_id(rid) == (THREAD, RUN)
    with pytest.raises(NotFound):
        parse_response_id("resp_123")
    assert input_items("hi") == [
        {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "hi"}],
            "status": "completed",
        }
    ]
    items = input_items(
        [
            {"role": "developer", "content": "be brief"},
            {"role": "user", "content": [{"type": "input_text", "text": "q"}]},
            {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
            {"type": "function_call_output", "call_id": "c1", "output": "42"},
        ]
    )
    before = {
        "type": "message",
        "role": "assistant",
        "content": [{"type": "output_text", "text": "before"}],
    }
    messages = chat_messages("sys", [before, *items])
    assert [m["role"] for m in messages] == [
        "system",
        "assistant",
        "system",
        "user",
        "assistant",
        "tool",
    ]
    assert messages[4]["tool_calls"][0]["function"]["name"] == "f"
    assert messages[5] == {"role": "tool", "tool_call_id": "c1", "content": "42"}
    with pytest.raises(InvalidRequest):
        input_items([{"type": "image_generation_call"}])
    with pytest.raises(InvalidRequest):
        input_items(5)
