"""Error answers: bad cursors and formats (400 naming the parameter), unknown threads, runs
and agents (404), a second live run on a thread (409, never retried), malformed JSON (400).
Every error is ``{"error": {"message", "type", "param", "code"}}`` with
``x-should-retry: false``."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from agent_runtime.config import HubConfig
from agent_runtime.errors import Conflict
from agent_runtime.hub import Hub
from agent_runtime.objects import Message, Run, Thread, new_id, now
from agent_runtime.runs import RunContext
from agent_runtime.store import MemoryStore, RedisStore

from ..conftest import SLOW_MODEL, UNIT, HubClient, Reply, StartHub, check_run, within

MISSING_THREAD = "thread_" + "0" * 24
MISSING_RUN = "run_" + "0" * 24


def check_error(reply: Reply, status: int, *, param: str | None = None, kind: str = "") -> None:
    assert reply.status == status, (reply.status, reply.body)
    assert reply.headers["Content-Type"].startswith("application/json")
    assert reply.headers.get("x-should-retry") == "false"
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"]
    if param is not None:
        assert error["param"] == param, error
    if kind:
        assert error["type"] == kind, error


async def finished_run(hub: HubClient) -> tuple[str, str, int]:
    thread_id, run_id = await hub.start()
    last = check_run(await hub.events(thread_id, run_id)).last_id
    return thread_id, run_id, last


@pytest.mark.parametrize(
    ("where", "value", "param"),
    [
        ("header", "abc", "Last-Event-ID"),
        ("header", "-1", "Last-Event-ID"),
        ("header", "1.5", "Last-Event-ID"),
        ("query", "x", "last_event_id"),
        ("query", "0x10", "last_event_id"),
        ("query", "1e3", "last_event_id"),
    ],
)
async def test_cursor_that_is_not_a_number_is_400(
    start_hub: StartHub, where: str, value: str, param: str
) -> None:
    hub = await start_hub()
    thread_id, run_id, _last = await finished_run(hub)
    if where == "header":
        reply = await hub.stream(thread_id, run_id, headers={"Last-Event-ID": value})
    else:
        reply = await hub.stream(thread_id, run_id, params={"last_event_id": value})
    check_error(reply, 400, param=param, kind="invalid_request_error")


async def test_cursor_ahead_of_the_stream_is_400(start_hub: StartHub) -> None:
    hub = await start_hub()
    thread_id, run_id, last = await finished_run(hub)

    reply = await hub.stream(thread_id, run_id, params={"last_event_id": str(last + 1)})
    check_error(reply, 400, param="last_event_id", kind="invalid_request_error")
    reply = await hub.stream(thread_id, run_id, headers={"Last-Event-ID": str(10**6)})
    check_error(reply, 400, kind="invalid_request_error")
    assert reply.json()["error"]["param"] in ("Last-Event-ID", "last_event_id")


async def test_cursor_at_the_end_is_204_on_both_prefixes(start_hub: StartHub) -> None:
    hub = await start_hub()
    thread_id, run_id, last = await finished_run(hub)
    for prefix in ("/v1", "/api/v1"):
        reply = await hub.stream(
            thread_id, run_id, headers={"Last-Event-ID": str(last)}, prefix=prefix
        )
        assert reply.status == 204 and reply.body == b""


async def test_unknown_stream_format_is_400(start_hub: StartHub) -> None:
    hub = await start_hub()
    thread_id, run_id, _last = await finished_run(hub)
    reply = await hub.stream(thread_id, run_id, params={"format": "xml"})
    check_error(reply, 400, param="format")


async def test_unknown_thread_run_and_agent_are_404(start_hub: StartHub) -> None:
    hub = await start_hub()
    thread_id, run_id, _last = await finished_run(hub)
    other_thread = await hub.create_thread("Another question?")
    not_found = [
        ("GET", f"/v1/threads/{MISSING_THREAD}", None, "thread_id"),
        ("GET", f"/v1/threads/{MISSING_THREAD}/messages", None, "thread_id"),
        ("GET", f"/v1/threads/{MISSING_THREAD}/stream/{run_id}", None, None),
        ("GET", f"/v1/threads/{thread_id}/stream/{MISSING_RUN}", None, None),
        ("GET", f"/v1/threads/{other_thread}/stream/{run_id}", None, None),  # another's run
        ("GET", f"/v1/threads/{thread_id}/runs/{MISSING_RUN}", None, None),
        ("POST", f"/v1/threads/{thread_id}/runs/{MISSING_RUN}/cancel", None, None),
        (
            "POST",
            f"/v1/threads/{MISSING_THREAD}/runs",
            {"assistant_id": "streaming-example"},
            "thread_id",
        ),
        ("POST", f"/v1/threads/{thread_id}/runs", {"assistant_id": "no-such-agent"}, None),
        ("POST", "/v1/threads/runs", {"assistant_id": "no-such-agent"}, "assistant_id"),
        (
            "POST",
            f"/v1/threads/{thread_id}/runs",
            {"assistant_id": "streaming-example/9.9.9"},
            "assistant_id",
        ),
        ("GET", f"/api/v1/threads/{MISSING_THREAD}", None, "thread_id"),
    ]
    for method, path, body, param in not_found:
        reply = await hub.request(method, path, json_body=body)
        check_error(reply, 404, param=param, kind="not_found_error")

    reply = await hub.request(
        "POST", f"/v1/threads/{thread_id}/runs", json_body={"assistant_id": "no-such-agent"}
    )
    assert reply.json()["error"]["param"] == "assistant_id"
    runs = await hub.request("GET", f"/v1/threads/{thread_id}/runs")
    assert [r["id"] for r in runs.json()["data"]] == [run_id]  # nothing was started


async def test_thread_and_run_with_unknown_agent_creates_no_thread(start_hub: StartHub) -> None:
    hub = await start_hub()
    body = {"assistant_id": "nobody", "thread": {"messages": [{"role": "user", "content": "hi"}]}}
    reply = await hub.request("POST", "/v1/threads/runs", json_body=body)
    check_error(reply, 404, param="assistant_id")
    store = hub.hub.store
    if isinstance(store, RedisStore):
        assert await store._client.keys(f"{store.prefix}thread:*") == []
    else:
        assert store._threads == {}  # type: ignore[attr-defined]  # MemoryStore


async def test_second_run_on_a_thread_with_a_live_run_is_409(start_hub: StartHub) -> None:
    hub = await start_hub(model=SLOW_MODEL)
    thread_id, run_id = await hub.start()

    reply = await hub.request(
        "POST", f"/v1/threads/{thread_id}/runs", json_body={"assistant_id": "async-example"}
    )
    check_error(reply, 409)
    assert run_id in reply.json()["error"]["message"]
    streamed = await hub.request(
        "POST",
        f"/v1/threads/{thread_id}/runs",
        json_body={"assistant_id": "streaming-example", "stream": True},
    )
    check_error(streamed, 409)  # refused before any byte of a stream

    async with hub.reader(thread_id, run_id) as reader, within(2):
        # Running (a run cancelled while still queued never starts, and the check below
        # expects its whole life).
        await reader.until(lambda e: e.name == "thread.run.in_progress")
    cancelled = await hub.request("POST", f"/v1/threads/{thread_id}/runs/{run_id}/cancel")
    assert cancelled.status == 200
    events = await hub.events(thread_id, run_id)
    check_run(events, "thread.run.cancelled")


async def test_deleting_a_thread_with_a_live_run_is_409(start_hub: StartHub) -> None:
    hub = await start_hub(model=SLOW_MODEL)
    thread_id, run_id = await hub.start("async-example")
    check_error(await hub.request("DELETE", f"/v1/threads/{thread_id}"), 409)

    async with hub.reader(thread_id, run_id) as reader, within(2):
        # Running (a run cancelled while still queued never starts, and the check below
        # expects its whole life).
        await reader.until(lambda e: e.name == "thread.run.in_progress")
    await hub.request("POST", f"/v1/threads/{thread_id}/runs/{run_id}/cancel")
    check_run(await hub.events(thread_id, run_id, units=1), "thread.run.cancelled")
    deleted = await hub.request("DELETE", f"/v1/threads/{thread_id}")
    assert deleted.status == 200 and deleted.json()["deleted"] is True
    gone = await hub.stream(thread_id, run_id)
    check_error(gone, 404)


async def test_malformed_json_is_400(start_hub: StartHub) -> None:
    hub = await start_hub()
    thread_id = await hub.create_thread("What is virtue?")
    headers = {"Content-Type": "application/json"}
    for path in (
        "/v1/threads",
        f"/v1/threads/{thread_id}/messages",
        f"/v1/threads/{thread_id}/runs",
        "/v1/threads/runs",
        "/api/v1/threads",
    ):
        for data in ('{"assistant_id": ', "[1, 2]", "nul"):
            reply = await hub.request("POST", path, data=data, headers=headers)
            check_error(reply, 400, kind="invalid_request_error")

    reply = await hub.request(
        "POST",
        f"/v1/threads/{thread_id}/runs",
        json_body={"assistant_id": "streaming-example", "bogus": 1},
    )
    check_error(reply, 400, param="bogus")
    reply = await hub.request("POST", f"/v1/threads/{thread_id}/runs", json_body={})
    check_error(reply, 400, param="assistant_id")
    runs = await hub.request("GET", f"/v1/threads/{thread_id}/runs")
    assert runs.json()["data"] == []


async def test_cancelling_a_finished_run_is_400(start_hub: StartHub) -> None:
    hub = await start_hub()
    thread_id, run_id, _last = await finished_run(hub)
    reply = await hub.request("POST", f"/v1/threads/{thread_id}/runs/{run_id}/cancel")
    check_error(reply, 400, param="run_id")
    assert "completed" in reply.json()["error"]["message"]


class SuspendingStore(MemoryStore):
    """The in-memory store, but every call suspends once, as a durable store's I/O does
    (the Store interface is async "so that a durable store can keep its I/O off the
    event loop")."""

    async def get_thread(self, thread_id: str) -> Thread:
        await asyncio.sleep(0)
        return await super().get_thread(thread_id)

    async def create_run(
        self, run: Run, *, messages: Sequence[Message] = (), thread: Thread | None = None
    ) -> None:
        await asyncio.sleep(0)
        await super().create_run(run, messages=messages, thread=thread)

    async def update_run(self, run: Run) -> None:
        await asyncio.sleep(0)
        await super().update_run(run)

    async def add_message(self, message: Message) -> None:
        await asyncio.sleep(0)
        await super().add_message(message)


async def test_concurrent_runs_on_one_thread_with_a_durable_store() -> None:
    """Runtime bug: RunManager.create checks for a live run on the thread, then awaits the
    store, and only then registers the run; two requests interleaving there both start."""
    hub = Hub(HubConfig(force_model=SLOW_MODEL, shutdown_timeout=2 * UNIT), store=SuspendingStore())
    try:
        thread = Thread(id=new_id("thread"), created_at=now())
        await hub.store.create_thread(thread)

        results = await asyncio.gather(
            hub.runs.create(thread.id, "async-example"),
            hub.runs.create(thread.id, "async-example"),
            return_exceptions=True,
        )

        started = [r for r in results if isinstance(r, RunContext)]
        refused = [r for r in results if isinstance(r, Conflict)]
        assert len(started) == 1 and len(refused) == 1, results
        assert hub.runs.live_count == 1
    finally:
        await hub.aclose()
