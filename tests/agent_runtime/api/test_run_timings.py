"""``GET /v1/threads/{thread_id}/runs/{run_id}/timings``: where a run's start spent its
time, as the node that ran it stamped it: every stamp present for a run that streams, in
the order a run reaches them, offsets consistent with the stamps; 404 for an unknown run
or another thread's; async agents stamp too."""

from __future__ import annotations

import time

from agent_runtime.runs.timings import STAMPS, RunTimings, TimingsTable

from ..conftest import StartHub


def check_ordered(stamps: dict[str, float | None], names: tuple[str, ...] = STAMPS) -> None:
    values = [stamps[name] for name in names]
    assert all(value is not None for value in values), stamps
    assert values == sorted(values), stamps  # type: ignore[type-var]


async def test_a_streamed_run_has_every_stamp_in_order(start_hub: StartHub) -> None:
    hub = await start_hub()
    before = time.time()
    thread_id, run_id = await hub.start("streaming-example")
    await hub.events(thread_id, run_id)  # the whole stream: the run has ended
    reply = await hub.request("GET", f"/v1/threads/{thread_id}/runs/{run_id}/timings")
    assert reply.status == 200, reply.body
    body = reply.json()
    assert body["object"] == "thread.run.timings"
    assert (body["run_id"], body["thread_id"]) == (run_id, thread_id)
    stamps = body["stamps"]
    assert list(stamps) == list(STAMPS)
    check_ordered(stamps)
    assert before <= stamps["accepted"] <= time.time()
    offsets = body["offsets"]
    assert offsets["accepted_ms"] == 0
    for name in STAMPS:
        expected = (stamps[name] - stamps["accepted"]) * 1000
        assert abs(offsets[f"{name}_ms"] - expected) < 0.01


async def test_an_async_agent_stamps_too(start_hub: StartHub) -> None:
    hub = await start_hub()
    thread_id, run_id = await hub.start("async-example")
    await hub.events(thread_id, run_id)
    reply = await hub.request("GET", f"/v1/threads/{thread_id}/runs/{run_id}/timings")
    assert reply.status == 200, reply.body
    check_ordered(reply.json()["stamps"])


async def test_unknown_run_or_another_thread_is_404(start_hub: StartHub) -> None:
    hub = await start_hub()
    thread_id, run_id = await hub.start("streaming-example")
    await hub.events(thread_id, run_id)
    other = await hub.create_thread("hello")
    for path in (
        f"/v1/threads/{thread_id}/runs/run_missing/timings",
        f"/v1/threads/{other}/runs/{run_id}/timings",
    ):
        reply = await hub.request("GET", path)
        assert reply.status == 404, (path, reply.body)
        plain = await hub.request("GET", path.removesuffix("/timings"))
        assert reply.json()["error"] == plain.json()["error"]  # as GET of the run says


def test_stamps_are_first_write_wins_and_the_table_is_bounded() -> None:
    timings = RunTimings(accepted=10.0)
    timings.stamp("created", at=11.0)
    timings.stamp("created", at=12.0)
    assert timings.created == 11.0
    assert timings.first_chunk is None
    table = TimingsTable(keep=3)
    for i in range(5):
        table.add(f"run_{i}", RunTimings(accepted=float(i)))
    assert len(table) == 3
    assert table.get("run_0") is None and table.get("run_1") is None
    assert table.get("run_4") is not None
