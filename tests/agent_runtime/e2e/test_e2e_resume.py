"""Joining late and resuming: cursors (``Last-Event-ID`` and ``last_event_id``), resuming
without state (``snapshot=1``), the gap + snapshot of a bounded replay buffer, and a run
rebuilt from the store once its stream is no longer retained."""

from __future__ import annotations

from typing import Any

import pytest

from ..conftest import (
    GAP,
    PACED_MODEL,
    TERMINAL_EVENTS,
    UNIT,
    ClientState,
    HubClient,
    StartHub,
    check_run,
    within,
)
from ..sse import DONE, Ev


def key(events: list[Ev]) -> list[tuple[int | None, str, Any]]:
    return [(e.id, e.name, e.data) for e in events]


def cursor_kwargs(how: str, cursor: int) -> dict[str, Any]:
    if how == "header":
        return {"headers": {"Last-Event-ID": str(cursor)}}
    return {"params": {"last_event_id": str(cursor)}}


async def wait_run_end(hub: HubClient, run_id: str) -> None:
    ctx = hub.hub.runs.live(run_id)
    if ctx is not None:
        async with within(5):
            await ctx.done.wait()


def check_snapshot(events: list[Ev], at: int) -> None:
    """A snapshot is itself a valid protocol sequence: the run object; each finished
    message as created + completed/incomplete; a message still streaming as created and
    at most one delta; the terminal event if the run had ended. Only its last event
    carries an id: ``at``, the last real event it accounts for."""
    assert events, "empty snapshot"
    assert [e.id for e in events[:-1]] == [None] * (len(events) - 1), key(events)
    assert events[-1].id == at
    assert events[0].name.startswith("thread.run.") and events[0].name not in TERMINAL_EVENTS
    status = events[0].name.removeprefix("thread.run.")
    assert events[0].data["status"] == ("queued" if status == "created" else status)
    body = events[1:]
    if body and body[-1].name in TERMINAL_EVENTS:
        body = body[:-1]
    states: dict[str, str] = {}
    for event in body:
        assert event.name.startswith("thread.message."), key(events)
        state = states.get(event.message_id)
        if event.name == "thread.message.created":
            assert state is None
        elif event.name == "thread.message.delta":
            assert state == "thread.message.created", "one delta, right after created"
        else:
            assert event.name in ("thread.message.completed", "thread.message.incomplete")
            assert state == "thread.message.created", "a finished message: created + final"
        states[event.message_id] = event.name


# -- resuming a live run -------------------------------------------------------------------


@pytest.mark.parametrize("how", ["header", "query"])
async def test_resume_mid_message_is_exact(start_hub: StartHub, how: str) -> None:
    hub = await start_hub(model=PACED_MODEL)
    thread_id, run_id = await hub.start()
    async with hub.reader(thread_id, run_id) as first:
        async with within(2):
            for _ in range(5):
                await first.until(lambda e: e.name == "thread.message.delta")
        assert hub.hub.runs.live(run_id) is not None
    cursor = first.events[-1].id  # disconnected mid-message, having seen up to here
    assert cursor is not None

    async with hub.reader(thread_id, run_id, **cursor_kwargs(how, cursor)) as second:
        tail = await second.read_all(5 * UNIT)

    assert tail[0].id == cursor + 1
    union = first.events + tail
    trace = check_run(union)  # ids 1..N: no duplicate, no gap
    assert len(trace.messages) == 2
    assert key(union) == key(await hub.events(thread_id, run_id))
    assert trace.texts == await hub.assistant_texts(thread_id)


async def test_resume_with_snapshot_rebuilds_the_streaming_message(start_hub: StartHub) -> None:
    hub = await start_hub(model=PACED_MODEL)
    thread_id, run_id = await hub.start()
    async with hub.reader(thread_id, run_id) as first:
        async with within(2):
            for _ in range(7):
                await first.until(lambda e: e.name == "thread.message.delta")
    cursor = first.events[-1].id
    assert cursor is not None
    streaming = first.events[-1].message_id
    text_so_far = "".join(e.text for e in first.events if e.name == "thread.message.delta")

    headers = {"Last-Event-ID": str(cursor)}
    async with hub.reader(thread_id, run_id, headers=headers, params={"snapshot": "1"}) as second:
        resumed = await second.read_all(5 * UNIT)

    head, tail = resumed[:3], resumed[3:]
    assert [e.name for e in head] == [
        "thread.run.in_progress",
        "thread.message.created",
        "thread.message.delta",
    ]
    assert [e.id for e in head] == [None, None, cursor]
    assert head[0].data["id"] == run_id
    assert head[1].message_id == head[2].message_id == streaming
    assert head[2].text == text_so_far
    full = await hub.events(thread_id, run_id)
    assert key(tail) == key(full[cursor:])  # then the exact tail
    client = ClientState().apply_all(resumed)  # a client that starts from nothing
    assert client.terminal == "thread.run.completed"
    assert client.texts == await hub.assistant_texts(thread_id)


# -- every cursor of a retained run ----------------------------------------------------------


async def test_every_cursor_resumes_exactly(start_hub: StartHub) -> None:
    hub = await start_hub()
    thread_id, run_id = await hub.start()
    full = await hub.events(thread_id, run_id)
    trace = check_run(full)
    last = trace.last_id

    for cursor in range(last):
        for how in ("header", "query"):
            resumed = await hub.events(thread_id, run_id, **cursor_kwargs(how, cursor))
            assert key(resumed) == key(full[cursor:]), (how, cursor)


async def test_every_cursor_resumes_with_snapshot(start_hub: StartHub) -> None:
    hub = await start_hub()
    thread_id, run_id = await hub.start()
    full = await hub.events(thread_id, run_id)
    trace = check_run(full)

    for cursor in range(1, trace.last_id):
        params = {"snapshot": "1", "last_event_id": str(cursor)}
        resumed = await hub.events(thread_id, run_id, params=params)
        tail = resumed[-(trace.last_id - cursor) :]
        assert key(tail) == key(full[cursor:]), cursor
        prefix = resumed[: len(resumed) - len(tail)]
        check_snapshot(prefix, cursor)
        assert all(e.name != "thread.message.completed" for e in prefix)
        client = ClientState().apply_all(resumed)
        expected = {m.id: m.text for m in trace.messages if m.final.id and m.final.id > cursor}
        assert client.final == expected, cursor


async def test_cursor_at_the_end_is_204(start_hub: StartHub) -> None:
    hub = await start_hub()
    thread_id, run_id = await hub.start()
    last = check_run(await hub.events(thread_id, run_id)).last_id

    for how in ("header", "query"):
        reply = await hub.stream(thread_id, run_id, **cursor_kwargs(how, last))
        assert reply.status == 204, (how, reply.body)
        assert reply.body == b""


# -- gap + snapshot of a tiny replay buffer ---------------------------------------------------


async def test_late_joiner_of_a_trimmed_stream_gets_gap_then_snapshot(
    start_hub: StartHub,
) -> None:
    hub = await start_hub(broker={"max_events_per_stream": 5})
    thread_id, run_id = await hub.start()
    await wait_run_end(hub, run_id)
    stream = hub.hub.registry.get(run_id)
    assert stream is not None and stream.buffer.first_id > 1
    last = stream.head

    for framing in ("default", "openai"):
        events = await hub.events(thread_id, run_id, params={"format": framing})
        if framing == "openai":
            assert events[-1].name == DONE
            events = events[:-1]
        assert events[0].name == GAP and events[0].id is None
        assert events[0].data == {"from": 0, "to": last + 1}
        snapshot = events[1:]
        check_snapshot(snapshot, last)
        assert snapshot[-1].name == "thread.run.completed"
        assert [e.name for e in snapshot[1:-1]] == [
            "thread.message.created",
            "thread.message.completed",
        ] * 2
        client = ClientState().apply_all(events)
        assert client.texts == await hub.assistant_texts(thread_id)
        assert client.last_id == last

    reply = await hub.stream(thread_id, run_id, headers={"Last-Event-ID": str(last)})
    assert reply.status == 204


async def test_cursor_behind_the_buffer_gets_gap_then_snapshot(start_hub: StartHub) -> None:
    hub = await start_hub(broker={"max_events_per_stream": 5})
    thread_id, run_id = await hub.start()
    await wait_run_end(hub, run_id)
    last = hub.hub.registry.get(run_id).head  # type: ignore[union-attr]

    for snapshot_param in ({}, {"snapshot": "1"}):
        events = await hub.events(
            thread_id, run_id, headers={"Last-Event-ID": "3"}, params=snapshot_param
        )
        assert events[0].name == GAP
        assert events[0].data == {"from": 3, "to": last + 1}
        check_snapshot(events[1:], last)
        assert ClientState().apply_all(events).texts == await hub.assistant_texts(thread_id)


async def test_live_late_joiner_of_a_trimmed_stream_ends_with_the_right_text(
    start_hub: StartHub,
) -> None:
    hub = await start_hub(model=PACED_MODEL, broker={"max_events_per_stream": 5})
    thread_id, run_id = await hub.start()
    async with hub.reader(thread_id, run_id, on_owner=True) as early:
        async with within(2):
            await early.until(lambda e: e.id is not None and e.id >= 15)
        assert hub.hub.runs.live(run_id) is not None
        async with hub.reader(thread_id, run_id) as late:
            async with within(5):
                await late.rest()
                await early.rest()

    trace = check_run(early.events)  # the subscriber keeping up saw every event
    events = late.events
    assert events[0].name == GAP and events[0].data["from"] == 0
    ids = [e.id for e in events]
    stamped = next(i for i, e in enumerate(events) if e.id is not None)
    check_snapshot(events[1 : stamped + 1], events[stamped].id)  # type: ignore[arg-type]
    assert events[0].data["to"] == events[stamped].id + 1  # type: ignore[operator]
    assert events[2].name == "thread.message.created"
    assert events[3].name == "thread.message.delta"  # the text so far, in one delta
    tail_ids = ids[stamped:]
    assert tail_ids == list(range(events[stamped].id or 0, trace.last_id + 1))  # exact tail
    client = ClientState().apply_all(events)
    assert client.terminal == "thread.run.completed"
    assert client.texts == trace.texts == await hub.assistant_texts(thread_id)


# -- after retention: rebuilt from the store -----------------------------------------------------


async def test_after_retention_the_stream_is_rebuilt_from_the_store(start_hub: StartHub) -> None:
    hub = await start_hub(broker={"retention": 0.05})
    thread_id = await hub.create_thread("What is courage?")
    async with within(5):
        reply = await hub.request(
            "POST",
            f"/v1/threads/{thread_id}/runs",
            json_body={"assistant_id": "streaming-example", "stream": True},
        )
    original = check_run(reply.events("openai")[:-1])
    run_id = original.events[0].data["id"]
    await hub.dropped(run_id)

    events = await hub.events(thread_id, run_id)

    # A gap (the deltas were merged), then the run's state in its own numbering: every
    # kept event carries the id it had, a message's deltas one delta with the last's id.
    assert events[0].name == GAP and events[0].id is None
    kept = events[1:]
    assert events[0].data == {"from": 0, "to": kept[0].id}
    ids = [e.id for e in kept]
    assert None not in ids and ids == sorted(ids)
    by_key = {(e.name, e.data.get("id")): e.id for e in original.events}
    for event in kept:
        assert by_key[(event.name, event.data.get("id"))] == event.id, event
    assert events[-1].id == original.last_id
    assert events[-1].name == "thread.run.completed"
    assert events[-1].data == original.terminal.data
    messages = [e for e in events if e.name == "thread.message.completed"]
    assert [m.data for m in messages] == [m.final.data for m in original.messages]
    client = ClientState().apply_all(events)
    assert client.texts == original.texts == await hub.assistant_texts(thread_id)
    assert client.last_id == original.last_id

    openai = await hub.events(thread_id, run_id, params={"format": "openai"})
    assert openai[-1].name == DONE
    assert key(openai[:-1]) == key(events)

    # Every kept id is a cursor that continues exactly after it.
    for event in kept[:-1]:
        resumed = await hub.events(thread_id, run_id, headers={"Last-Event-ID": str(event.id)})
        assert resumed[0].name == GAP and resumed[0].data["from"] == event.id
        assert key(resumed[1:]) == key([e for e in kept if e.id > event.id])  # type: ignore[operator]
    # A cursor inside a message's deltas: a gap and a snapshot rebuilding everything.
    first_delta = next(e for e in original.events if e.name == "thread.message.delta")
    resumed = await hub.events(thread_id, run_id, headers={"Last-Event-ID": str(first_delta.id)})
    assert resumed[0].data == {"from": first_delta.id, "to": original.last_id + 1}
    assert [e.id for e in resumed[:-1]] == [None] * (len(resumed) - 1)
    assert resumed[-1].id == original.last_id
    assert ClientState().apply_all(resumed).texts == original.texts

    at_end = await hub.stream(thread_id, run_id, headers={"Last-Event-ID": str(original.last_id)})
    assert at_end.status == 204
    ahead = await hub.stream(
        thread_id, run_id, headers={"Last-Event-ID": str(original.last_id + 1)}
    )
    assert ahead.status == 400
    assert ahead.json()["error"]["type"] == "invalid_request_error"


async def test_a_cancelled_run_is_rebuilt_with_its_incomplete_message(
    start_hub: StartHub,
) -> None:
    hub = await start_hub(broker={"retention": 0.05}, model="simulated:tokens=5000,rate=200")
    thread_id, run_id = await hub.start("async-example")
    async with hub.reader(thread_id, run_id) as reader:
        async with within(2):
            await reader.until(lambda e: e.name == "thread.message.delta")
            await hub.request("POST", f"/v1/threads/{thread_id}/runs/{run_id}/cancel")
            await reader.rest()
    original = check_run(reader.events, "thread.run.cancelled")
    await hub.dropped(run_id)

    events = await hub.events(thread_id, run_id)

    assert events[0].name == GAP
    assert events[-1].name == "thread.run.cancelled" and events[-1].id == original.last_id
    client = ClientState().apply_all(events)
    (message,) = original.messages
    assert client.final == {message.id: message.text}
    assert [e.name for e in events if e.name.startswith("thread.message.")] == [
        "thread.message.created",
        "thread.message.incomplete",  # standing for its deltas: its text is held once
    ]
