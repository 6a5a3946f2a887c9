"""A run end to end over HTTP: thread → run → stream with the description's streaming
example (the contract's event order, ids, texts, stored messages), both framings, the
``/api/v1`` mirror, late and simultaneous subscribers, and runs started with ``stream: true``."""

from __future__ import annotations

import asyncio

from agent_runtime.models.simulated import simulated_text

from ..conftest import (
    PACED_MODEL,
    PLATO,
    QUESTION,
    SOCRATES,
    UNIT,
    StartHub,
    check_run,
    text_of,
    within,
)
from ..sse import DONE, SSEReader, parse_frames

USER = {"role": "user", "content": QUESTION}
EXPECTED = [
    simulated_text([SOCRATES, USER], tokens=20),  # the hub's model: simulated:tokens=20
    simulated_text([PLATO, USER], tokens=20),
]


async def test_streaming_example_streams_the_contract_sequence(start_hub: StartHub) -> None:
    hub = await start_hub()
    thread_id, run_id = await hub.start("streaming-example")

    reply = await hub.stream(thread_id, run_id)

    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("text/event-stream")
    assert reply.headers["Cache-Control"] == "no-cache"
    assert reply.headers["X-Accel-Buffering"] == "no"
    assert "Content-Encoding" not in reply.headers
    frames = parse_frames(reply.body)
    # The first frame's block starts with the reconnection delay for EventSource.
    assert frames[0].fields[0] == ("retry", "1000")
    for index, frame in enumerate(frames):
        assert all(c == "ping" for c in frame.comments), frame
        fields = [name for name, _ in frame.fields]
        if index == 0:
            fields = fields[1:]
        assert fields == ["id", "data"], frame  # no event: line

    trace = check_run(reply.events(), "thread.run.completed")
    assert len(trace.messages) == 2
    assert trace.texts == EXPECTED  # Socrates, then Plato, each answering the question
    assert all(len(m.deltas) == 20 for m in trace.messages)  # one delta per token
    assert trace.events[0].data["id"] == run_id
    assert trace.events[0].data["thread_id"] == thread_id

    stored = await hub.messages(thread_id)
    assert [m["role"] for m in stored] == ["user", "assistant", "assistant"]
    assert text_of(stored[0]) == QUESTION
    assert [m["id"] for m in stored[1:]] == [m.id for m in trace.messages]
    assert [text_of(m) for m in stored[1:]] == trace.texts
    assert all(m["run_id"] == run_id and m["status"] == "completed" for m in stored[1:])
    completed = [m.final.data for m in trace.messages]
    assert completed == stored[1:]  # the completed events carry the stored objects

    run = await hub.run(thread_id, run_id)
    assert run["status"] == "completed"
    assert run["completed_at"] is not None
    assert trace.terminal.data == run


async def test_openai_framing_carries_the_same_events(start_hub: StartHub) -> None:
    hub = await start_hub()
    thread_id, run_id = await hub.start()
    default = (await hub.stream(thread_id, run_id)).events()

    reply = await hub.stream(thread_id, run_id, params={"format": "openai"})

    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("text/event-stream")
    frames = [f for f in parse_frames(reply.body) if not f.is_comment]
    assert all(f.event is not None for f in frames)
    events = reply.events("openai")
    assert events[-1].name == DONE and events[-1].data == "[DONE]"
    assert reply.body.endswith(b"event: done\ndata: [DONE]\n\n")
    events = events[:-1]
    assert [(e.id, e.name, e.data) for e in events] == [(e.id, e.name, e.data) for e in default]
    check_run(events)


async def test_api_v1_mirror_serves_the_whole_flow(start_hub: StartHub) -> None:
    hub = await start_hub()
    reply = await hub.request(
        "POST", "/api/v1/threads", json_body={"messages": [{"role": "user", "content": QUESTION}]}
    )
    assert reply.status == 200
    thread_id = reply.json()["id"]
    reply = await hub.request(
        "POST", f"/api/v1/threads/{thread_id}/runs", json_body={"assistant_id": "streaming-example"}
    )
    assert reply.status == 200
    run_id = reply.json()["id"]

    mirrored = await hub.stream(thread_id, run_id, prefix="/api/v1")
    trace = check_run(mirrored.events())
    assert trace.texts == EXPECTED
    direct = await hub.stream(thread_id, run_id, prefix="/v1")
    assert mirrored.body == direct.body

    reply = await hub.request("GET", f"/api/v1/threads/{thread_id}/messages?order=asc")
    assert [text_of(m) for m in reply.json()["data"][1:]] == EXPECTED


async def test_late_joiner_after_the_end_gets_the_whole_run(start_hub: StartHub) -> None:
    hub = await start_hub()
    thread_id, run_id = await hub.start()
    first = await hub.stream(thread_id, run_id)
    check_run(first.events())
    assert hub.hub.runs.live(run_id) is None  # the run is over

    late = await hub.stream(thread_id, run_id)

    assert late.status == 200
    assert late.events()[0].id == 1
    assert late.body == first.body
    check_run(late.events())


async def test_subscribers_of_a_live_run_receive_identical_bytes(start_hub: StartHub) -> None:
    hub = await start_hub(model=PACED_MODEL)
    thread_id, run_id = await hub.start()

    async with (
        hub.reader(thread_id, run_id) as one,
        hub.reader(thread_id, run_id) as two,
    ):
        async with within(2):
            await one.until(lambda e: e.name == "thread.message.delta")
            await two.until(lambda e: e.name == "thread.message.delta")
        assert hub.hub.runs.live(run_id) is not None, "both joined while the run was live"
        async with hub.reader(thread_id, run_id) as three:  # joins mid-message
            async with within(5):
                await asyncio.gather(one.rest(), two.rest(), three.rest())

    assert one.body == two.body == three.body
    trace = check_run(one.events)
    assert len(trace.messages) == 2


async def test_create_run_with_stream_true_answers_the_openai_stream(start_hub: StartHub) -> None:
    hub = await start_hub()
    thread_id = await hub.create_thread(QUESTION)

    async with within(5):
        reply = await hub.request(
            "POST",
            f"/v1/threads/{thread_id}/runs",
            json_body={"assistant_id": "streaming-example", "stream": True},
        )

    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("text/event-stream")
    events = reply.events("openai")
    assert events[-1].name == DONE
    trace = check_run(events[:-1])
    assert trace.texts == EXPECTED
    run_id = trace.events[0].data["id"]
    assert trace.events[0].data["thread_id"] == thread_id
    assert await hub.assistant_texts(thread_id) == EXPECTED
    assert (await hub.run(thread_id, run_id))["status"] == "completed"


async def test_create_thread_and_run(start_hub: StartHub) -> None:
    hub = await start_hub()
    body = {
        "assistant_id": "streaming-example",
        "thread": {"messages": [{"role": "user", "content": QUESTION}]},
    }

    reply = await hub.request("POST", "/v1/threads/runs", json_body=body)

    assert reply.status == 200
    run = reply.json()
    assert run["object"] == "thread.run" and run["status"] == "queued"
    assert run["id"].startswith("run_") and run["thread_id"].startswith("thread_")
    trace = check_run(await hub.events(run["thread_id"], run["id"]))
    assert trace.texts == EXPECTED
    stored = await hub.messages(run["thread_id"])
    assert [text_of(m) for m in stored] == [QUESTION, *EXPECTED]

    async with within(5):
        streamed = await hub.request("POST", "/v1/threads/runs", json_body={**body, "stream": True})
    events = streamed.events("openai")
    assert events[-1].name == DONE
    trace = check_run(events[:-1])
    assert trace.texts == EXPECTED
    assert trace.events[0].data["thread_id"] != run["thread_id"]  # a new thread each time


async def test_idle_stream_sends_comment_keepalives(start_hub: StartHub) -> None:
    hub = await start_hub(
        model="simulated:tokens=2,rate=0,delay=0.3", broker={"keepalive": 0.05 * UNIT}
    )
    thread_id, run_id = await hub.start("async-example")

    reply = await hub.stream(thread_id, run_id, units=5)

    frames = parse_frames(reply.body)
    # Each keepalive is one comment line joining the next event's block: never a block of
    # its own (the openai SDK would dispatch that as an empty event).
    assert b"\n: ping\n" in reply.body, "a keepalive while the model was quiet"
    assert not [f for f in frames if f.is_comment]
    assert all(c == "ping" for f in frames for c in f.comments)
    assert any(f.comments for f in frames)
    assert all(f.event != "ping" for f in frames)
    check_run(reply.events())


async def test_a_subscriber_leaving_does_not_stop_the_run(start_hub: StartHub) -> None:
    hub = await start_hub(model=PACED_MODEL)
    thread_id = await hub.create_thread(QUESTION)
    url = f"{hub.url}/v1/threads/{thread_id}/runs"
    body = {"assistant_id": "streaming-example", "stream": True}
    async with hub.session.post(url, json=body) as response:
        reader = SSEReader(response, "openai")
        async with within(2):
            first = await reader.until(lambda e: e.name == "thread.message.delta")
    assert first.name == "thread.message.delta"
    run_id = reader.events[0].data["id"]

    trace = check_run(await hub.events(thread_id, run_id))  # waits for the end

    assert len(trace.messages) == 2
    assert await hub.assistant_texts(thread_id) == trace.texts


async def test_queued_runs_wait_for_a_slot(start_hub: StartHub) -> None:
    hub = await start_hub(model=PACED_MODEL, runs={"max_concurrent_runs": 1})
    first = await hub.start("async-example")
    second = await hub.start("async-example")

    async with within(5):
        one, two = await asyncio.gather(hub.events(*first), hub.events(*second))

    check_run(one)
    check_run(two)
    ended = max(e.data["completed_at"] for e in one if e.name == "thread.run.completed")
    started = two[2].data["started_at"]
    assert started >= ended  # the second started once the first had ended


async def test_hub_shutdown_ends_live_runs_for_their_subscribers(start_hub: StartHub) -> None:
    hub = await start_hub(model="simulated:tokens=5000,rate=100")
    thread_id, run_id = await hub.start("streaming-example")
    async with hub.reader(thread_id, run_id) as reader:
        async with within(2):
            await reader.until(lambda e: e.name == "thread.message.delta")
            await asyncio.gather(hub.server.aclose(), reader.rest())

    trace = check_run(reader.events, "thread.run.failed")
    assert "shut down" in trace.terminal.data["last_error"]["message"]
