"""Limits at the API edge: the size of ``metadata`` and ``instructions``, the queue of runs
waiting for a slot, the simulated model's parameters, and model names naming a provider
that is not configured. Each refusal is an OpenAI-style error naming what was refused."""

from __future__ import annotations

from typing import Any

import pytest

from .conftest import FAST_MODEL, SLOW_MODEL, StartHub, eventually

PAIRS = {f"k{i}": "v" for i in range(17)}
LONG_KEY = {"k" * 65: "v"}
LONG_VALUE = {"k": "v" * 513}
AT_THE_LIMITS = {f"{i:02d}" + "k" * 62: "v" * 512 for i in range(16)}


def refused(reply: Any, param: str, *words: str) -> None:
    assert reply.status == 400, reply.body[:300]
    error = reply.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param, error
    for word in words:
        assert word in error["message"], error["message"]


@pytest.mark.parametrize(
    ("metadata", "words"),
    [(PAIRS, ["16", "17"]), (LONG_KEY, ["64", "65"]), (LONG_VALUE, ["512", "513"])],
)
async def test_metadata_is_capped_everywhere(
    start_hub: StartHub, metadata: dict[str, str], words: list[str]
) -> None:
    hub = await start_hub(model=FAST_MODEL)
    thread_id = await hub.create_thread()
    message = {"role": "user", "content": "hi", "metadata": metadata}
    run = {"assistant_id": "streaming-example"}
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("/v1/threads", {"metadata": metadata}, "metadata"),
        ("/v1/threads", {"messages": [message]}, "messages.0.metadata"),
        (f"/v1/threads/{thread_id}/messages", message, "metadata"),
        (f"/v1/threads/{thread_id}/runs", run | {"metadata": metadata}, "metadata"),
        (
            f"/v1/threads/{thread_id}/runs",
            run | {"additional_messages": [message]},
            "additional_messages.0.metadata",
        ),
        ("/v1/threads/runs", run | {"metadata": metadata}, "metadata"),
        ("/v1/threads/runs", run | {"thread": {"metadata": metadata}}, "thread.metadata"),
    ]
    for path, body, param in cases:
        refused(await hub.request("POST", path, json_body=body), param, "metadata", *words)
    # Nothing was stored on the way: the thread holds no message and no run.
    assert await hub.messages(thread_id) == []
    runs = await hub.request("GET", f"/v1/threads/{thread_id}/runs")
    assert runs.json()["data"] == []


async def test_instructions_are_capped(start_hub: StartHub) -> None:
    hub = await start_hub(model=FAST_MODEL)
    thread_id = await hub.create_thread("hi")
    path = f"/v1/threads/{thread_id}/runs"
    run = {"assistant_id": "streaming-example"}
    too_long = "x" * 256_001
    refused(
        await hub.request("POST", path, json_body=run | {"instructions": too_long}),
        "instructions",
        "256000",
    )
    refused(
        await hub.request("POST", "/v1/threads/runs", json_body=run | {"instructions": too_long}),
        "instructions",
        "256000",
    )
    refused(
        await hub.request("POST", path, json_body=run | {"additional_instructions": too_long}),
        "additional_instructions",
        "256000",
    )
    both = run | {"instructions": "x" * 200_000, "additional_instructions": "y" * 100_000}
    refused(await hub.request("POST", path, json_body=both), "additional_instructions", "256000")


async def test_metadata_and_instructions_at_the_limits_are_taken(start_hub: StartHub) -> None:
    hub = await start_hub(model=FAST_MODEL)
    made = await hub.request("POST", "/v1/threads", json_body={"metadata": AT_THE_LIMITS})
    assert made.status == 200, made.body[:300]
    thread_id = made.json()["id"]
    body = {
        "assistant_id": "streaming-example",
        "metadata": AT_THE_LIMITS,
        "instructions": "x" * 256_000,
        "additional_messages": [{"role": "user", "content": "hi", "metadata": AT_THE_LIMITS}],
    }
    run = await hub.request("POST", f"/v1/threads/{thread_id}/runs", json_body=body)
    assert run.status == 200, run.body[:300]
    assert run.json()["metadata"] == AT_THE_LIMITS


# -- the queue of runs waiting for a slot ------------------------------------------------


async def test_runs_waiting_for_a_slot_are_bounded(start_hub: StartHub) -> None:
    hub = await start_hub(model=SLOW_MODEL, max_concurrent_runs=1, max_queued_runs=2)
    _running, first, _second = [await hub.start() for _ in range(3)]
    assert (await hub.run(*first))["status"] == "queued"  # behind the running one
    thread_id = await hub.create_thread("one too many")
    body = {"assistant_id": "streaming-example"}
    full = await hub.request("POST", f"/v1/threads/{thread_id}/runs", json_body=body)
    assert full.status == 429, full.body
    assert full.headers["retry-after"] == "1"
    assert full.headers["x-should-retry"] == "false"
    error = full.json()["error"]
    assert error["type"] == "rate_limit_error" and error["param"] == "max_queued_runs"
    assert "2 runs are already waiting" in error["message"]
    assert "--max-queued-runs" in error["message"]
    also_full = await hub.request("POST", "/v1/threads/runs", json_body=body)
    assert also_full.status == 429
    # A waiting run that goes makes room for one more.
    cancel = await hub.request("POST", f"/v1/threads/{first[0]}/runs/{first[1]}/cancel")
    assert cancel.status == 200
    await eventually(lambda: hub.hub.runs.live(first[1]) is None, what="the run ended")
    taken = await hub.request("POST", f"/v1/threads/{thread_id}/runs", json_body=body)
    assert taken.status == 200, taken.body
    assert taken.json()["status"] == "queued"


async def test_without_a_slot_limit_nothing_waits_and_nothing_is_refused(
    start_hub: StartHub,
) -> None:
    hub = await start_hub(model=SLOW_MODEL, max_queued_runs=0)
    for _ in range(3):
        thread_id, run_id = await hub.start()
        assert (await hub.run(thread_id, run_id))["status"] in ("queued", "in_progress")
