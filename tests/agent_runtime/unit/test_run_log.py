"""RunLog: the record of a run's events and the snapshots rebuilt from it, for any ``at``.
Plain, synchronous unit tests."""

from __future__ import annotations

from typing import Any

import pytest

from agent_runtime.protocol import delta_payload, delta_text
from agent_runtime.run_log import RunLog, replay_compacted

from ..conftest import ClientState
from ..sse import Ev, Frame

Item = tuple[str, Any]


def run_obj(status: str) -> dict[str, Any]:
    return {"id": "run_1", "object": "thread.run", "status": status}


def msg(message_id: str, status: str = "in_progress", text: str = "") -> dict[str, Any]:
    content = [{"type": "text", "text": {"value": text, "annotations": []}}] if text else []
    return {"id": message_id, "object": "thread.message", "status": status, "content": content}


class Recorder:
    def __init__(self) -> None:
        self.log = RunLog()
        self.events: list[tuple[int, str, dict[str, Any]]] = []

    def add(self, name: str, payload: dict[str, Any]) -> int:
        event_id = len(self.events) + 1
        self.events.append((event_id, name, payload))
        self.log.record(event_id, name, payload)
        return event_id

    def message(self, message_id: str, *parts: str) -> None:
        self.add("thread.message.created", msg(message_id))
        self.add("thread.message.in_progress", msg(message_id))
        for part in parts:
            self.add("thread.message.delta", delta_payload(message_id, part))
        self.add("thread.message.completed", msg(message_id, "completed", "".join(parts)))


M1 = ("Ah, ", "my ", "friend.")
M2 = ("The ", "Forms.")


def two_messages() -> Recorder:
    """Ids: 1 created, 2 queued, 3 in_progress; m1 4-9 (deltas 6, 7, 8; completed 9);
    m2 10-14 (deltas 12, 13; completed 14); 15 run completed."""
    rec = Recorder()
    rec.add("thread.run.created", run_obj("queued"))
    rec.add("thread.run.queued", run_obj("queued"))
    rec.add("thread.run.in_progress", run_obj("in_progress"))
    rec.message("msg_1", *M1)
    rec.message("msg_2", *M2)
    rec.add("thread.run.completed", run_obj("completed"))
    assert len(rec.events) == 15
    return rec


IN_PROGRESS = ("thread.run.in_progress", run_obj("in_progress"))
M1_CREATED = ("thread.message.created", msg("msg_1"))
M1_DONE = ("thread.message.completed", msg("msg_1", "completed", "Ah, my friend."))
M2_CREATED = ("thread.message.created", msg("msg_2"))
M2_DONE = ("thread.message.completed", msg("msg_2", "completed", "The Forms."))
RUN_DONE = ("thread.run.completed", run_obj("completed"))


def delta(message_id: str, text: str) -> Item:
    return ("thread.message.delta", delta_payload(message_id, text))


@pytest.mark.parametrize(
    ("at", "expected"),
    [
        (0, []),
        (1, [("thread.run.created", run_obj("queued"))]),
        (2, [("thread.run.queued", run_obj("queued"))]),
        (3, [IN_PROGRESS]),
        (4, [IN_PROGRESS, M1_CREATED]),
        (5, [IN_PROGRESS, M1_CREATED]),
        (6, [IN_PROGRESS, M1_CREATED, delta("msg_1", "Ah, ")]),
        (7, [IN_PROGRESS, M1_CREATED, delta("msg_1", "Ah, my ")]),
        (8, [IN_PROGRESS, M1_CREATED, delta("msg_1", "Ah, my friend.")]),
        (9, [IN_PROGRESS, M1_CREATED, M1_DONE]),
        (10, [IN_PROGRESS, M1_CREATED, M1_DONE, M2_CREATED]),
        (12, [IN_PROGRESS, M1_CREATED, M1_DONE, M2_CREATED, delta("msg_2", "The ")]),
        (14, [IN_PROGRESS, M1_CREATED, M1_DONE, M2_CREATED, M2_DONE]),
        (15, [IN_PROGRESS, M1_CREATED, M1_DONE, M2_CREATED, M2_DONE, RUN_DONE]),
    ],
)
def test_snapshot(at: int, expected: list[Item]) -> None:
    assert two_messages().log.snapshot(at) == expected


@pytest.mark.parametrize(
    ("at", "expected"),
    [
        (0, []),
        (3, [IN_PROGRESS]),
        (4, [IN_PROGRESS, M1_CREATED]),
        (5, [IN_PROGRESS, M1_CREATED]),
        (6, [IN_PROGRESS, M1_CREATED, delta("msg_1", "Ah, ")]),
        (7, [IN_PROGRESS, M1_CREATED, delta("msg_1", "Ah, my ")]),
        (8, [IN_PROGRESS, M1_CREATED, delta("msg_1", "Ah, my friend.")]),
        (9, [IN_PROGRESS]),  # finished messages are not repeated
        (10, [IN_PROGRESS, M2_CREATED]),
        (13, [IN_PROGRESS, M2_CREATED, delta("msg_2", "The Forms.")]),
        (14, [IN_PROGRESS]),
    ],
)
def test_resume_snapshot(at: int, expected: list[Item]) -> None:
    assert two_messages().log.resume_snapshot(at) == expected


def as_events(items: list[Item] | list[tuple[int, str, dict[str, Any]]]) -> list[Ev]:
    out = []
    for item in items:
        if len(item) == 3:
            event_id, name, payload = item  # type: ignore[misc,unused-ignore]
        else:
            event_id, (name, payload) = None, item
        out.append(Ev(event_id, name, payload, Frame()))
    return out


def client_after(events: list[Ev]) -> tuple[dict[str, str], str | None]:
    state = ClientState().apply_all(events)
    return state.text, None if state.run is None else state.run["status"]


@pytest.mark.parametrize("at", range(16))
def test_snapshot_rebuilds_the_state_of_a_client_that_saw_everything(at: int) -> None:
    rec = two_messages()
    real = as_events(rec.events[:at])
    snapshot = as_events(rec.log.snapshot(at))
    assert client_after(snapshot) == client_after(real)
    tail = as_events(rec.events[at:])
    assert ClientState().apply_all(snapshot + tail).final == {
        "msg_1": "Ah, my friend.",
        "msg_2": "The Forms.",
    }


@pytest.mark.parametrize("at", range(1, 15))
def test_resume_snapshot_then_the_tail_gives_a_stateless_client_the_rest(at: int) -> None:
    rec = two_messages()
    resumed = as_events(rec.log.resume_snapshot(at)) + as_events(rec.events[at:])
    state = ClientState().apply_all(resumed)  # refuses deltas of messages not created
    finished_by = {"msg_1": 9, "msg_2": 14}
    expected = {"msg_1": "Ah, my friend.", "msg_2": "The Forms."}
    assert state.final == {m: t for m, t in expected.items() if finished_by[m] > at}
    assert state.terminal == "thread.run.completed"


def test_interleaved_messages() -> None:
    rec = Recorder()
    rec.add("thread.run.in_progress", run_obj("in_progress"))
    rec.add("thread.message.created", msg("a"))
    rec.add("thread.message.created", msg("b"))
    rec.add("thread.message.delta", delta_payload("a", "one "))
    rec.add("thread.message.delta", delta_payload("b", "uno "))
    rec.add("thread.message.delta", delta_payload("a", "two"))  # 6
    rec.add("thread.message.completed", msg("a", "completed", "one two"))  # 7
    rec.add("thread.message.delta", delta_payload("b", "dos"))  # 8

    assert rec.log.snapshot(6) == [
        ("thread.run.in_progress", run_obj("in_progress")),
        ("thread.message.created", msg("a")),
        delta("a", "one two"),
        ("thread.message.created", msg("b")),
        delta("b", "uno "),
    ]
    assert rec.log.resume_snapshot(7) == [
        ("thread.run.in_progress", run_obj("in_progress")),
        ("thread.message.created", msg("b")),
        delta("b", "uno "),
    ]
    assert rec.log.message_text("a") == "one two"
    assert rec.log.message_text("b") == "uno dos"
    assert rec.log.message_text("zzz") == ""


def test_cancelled_run_with_an_incomplete_message() -> None:
    rec = Recorder()
    rec.add("thread.run.in_progress", run_obj("in_progress"))
    rec.add("thread.message.created", msg("m"))
    rec.add("thread.message.delta", delta_payload("m", "Half"))
    rec.add("thread.run.cancelling", run_obj("cancelling"))
    rec.add("thread.message.incomplete", msg("m", "incomplete", "Half"))
    rec.add("thread.run.cancelled", run_obj("cancelled"))

    assert rec.log.snapshot(4) == [
        ("thread.run.cancelling", run_obj("cancelling")),
        ("thread.message.created", msg("m")),
        delta("m", "Half"),
    ]
    assert rec.log.snapshot(6) == [
        ("thread.run.cancelling", run_obj("cancelling")),
        ("thread.message.created", msg("m")),
        ("thread.message.incomplete", msg("m", "incomplete", "Half")),
        ("thread.run.cancelled", run_obj("cancelled")),
    ]
    assert rec.log.resume_snapshot(5) == [("thread.run.cancelling", run_obj("cancelling"))]


def test_unrelated_events_are_ignored() -> None:
    rec = Recorder()
    rec.add("thread.run.in_progress", run_obj("in_progress"))
    # Agent-written events are not state (run steps are: test_tools_and_children.py).
    rec.add("thread.agent.progress", {"object": "thread.agent.progress", "text": "hm"})
    rec.add("thread.message.delta", delta_payload("ghost", "boo"))  # never created
    assert rec.log.snapshot(3) == [("thread.run.in_progress", run_obj("in_progress"))]
    assert rec.log.message_text("ghost") == ""


def test_delta_payload_round_trip() -> None:
    payload = delta_payload("msg_x", "héllo\nworld")
    assert payload["object"] == "thread.message.delta"
    assert payload["id"] == "msg_x"
    assert delta_text(payload) == "héllo\nworld"
    assert delta_text({"delta": {}}) == ""


# -- the compacted log: what the store keeps, and what a cursor gets from it --------------


def as_evs(items: list[tuple[int | None, str, Any]]) -> list[Ev]:
    return [Ev(event_id, name, payload, Frame()) for event_id, name, payload in items]


def test_compact_keeps_each_kept_events_own_id_and_merges_deltas() -> None:
    rec = two_messages()
    items = rec.log.compact()
    # A finished message: created, and its final event standing for its deltas too.
    assert [(first, event_id, name) for first, event_id, name, _p in items] == [
        (3, 3, "thread.run.in_progress"),
        (4, 4, "thread.message.created"),
        (6, 9, "thread.message.completed"),
        (10, 10, "thread.message.created"),
        (12, 14, "thread.message.completed"),
        (15, 15, "thread.run.completed"),
    ]
    # As of an earlier event: the message streaming then holds its text so far.
    partial = rec.log.compact(7)
    assert [(f, i, n) for f, i, n, _p in partial][-1] == (6, 7, "thread.message.delta")
    assert delta_text(partial[-1][3]) == "Ah, my "


def test_a_log_rebuilt_from_its_compacted_form_compacts_the_same() -> None:
    rec = two_messages()
    for at in (5, 7, 9, 13, 15):
        items = rec.log.compact(at)
        assert RunLog.from_compacted(items).compact() == items


def test_replay_from_a_cursor_between_kept_events_is_exact() -> None:
    items = two_messages().log.compact()
    for cursor in (None, 0, 3, 4, 5, 9, 10, 11, 14):
        replay = replay_compacted(items, cursor)
        assert not replay.at_end
        gap, *rest = replay.items
        assert gap[0] is None and gap[1] == "thread.stream.gap"
        assert gap[2]["from"] == (cursor or 0)
        assert [i for i, _n, _p in rest] == [int(x[1]) for x in items if x[1] > (cursor or 0)]
    # From nothing, the client ends up with the exact texts.
    state = ClientState().apply_all(as_evs(replay_compacted(items, None).items))
    assert state.texts == ["".join(M1), "".join(M2)]


def test_replay_from_inside_merged_deltas_is_a_gap_and_a_snapshot() -> None:
    items = two_messages().log.compact()
    for cursor in (6, 7, 8, 12, 13):
        replay = replay_compacted(items, cursor)
        ids = [i for i, _n, _p in replay.items]
        assert ids == [None] * (len(ids) - 1) + [15]
        state = ClientState().apply_all(as_evs(replay.items))
        assert state.texts == ["".join(M1), "".join(M2)]


def test_replay_at_or_past_the_end_is_nothing() -> None:
    items = two_messages().log.compact()
    assert replay_compacted(items, 15).at_end
    assert replay_compacted(items, 99).at_end
    assert replay_compacted([], None).at_end


def test_replay_with_snapshot_1_gives_a_stateless_client_what_is_open_at_its_cursor() -> None:
    items = two_messages().log.compact()
    replay = replay_compacted(items, 5, resume=True)
    assert [(i, n) for i, n, _p in replay.items] == [
        (None, "thread.stream.gap"),
        (None, "thread.run.in_progress"),
        (None, "thread.message.created"),
        (9, "thread.message.completed"),
        (10, "thread.message.created"),
        (14, "thread.message.completed"),
        (15, "thread.run.completed"),
    ]
    state = ClientState().apply_all(as_evs(replay.items))
    assert state.texts == ["".join(M1), "".join(M2)]
    # Without it, the exact tail only.
    assert [i for i, _n, _p in replay_compacted(items, 5).items] == [None, 9, 10, 14, 15]
