"""Restarts of a real ``agentstream serve --store sqlite`` process.

* SIGKILL in the middle of a run, then a new process on the same ``--data-dir``: threads,
  messages and finished runs are all there, byte for byte; the run that was live is
  ``failed`` with a ``last_error`` saying why, its message kept ``incomplete`` with the
  text of its last checkpoint; its stream endpoint answers a protocol-valid rebuilt
  sequence in the run's own numbering (gap first, terminal ``thread.run.failed`` last,
  a cursor at the end answered 204).
* Run steps survive a SIGKILL: a finished run's are listed as before and rebuilt into its
  stream; the open step of the run that was live is ``failed`` with it.
* SIGTERM with a live subscriber: the stream ends with a terminal event (the run finishes
  within ``--shutdown-grace``, or is ended ``failed`` after it), and the process exits 0
  within grace + shutdown timeout. A second SIGTERM exits at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sqlite3
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from ..conftest import (
    GAP,
    TERMINAL_EVENTS,
    UNIT,
    ClientState,
    check_run,
    eventually,
    text_of,
    write_agent,
)
from ..provider_stub import ServeProcess, call
from ..sse import Ev, SSEReader, parse_events
from ..steps_helpers import StepsClientState, check_steps_run

FAST = "simulated:tokens=12,rate=0"
SLOW = "simulated:tokens=5000,rate=100"
"""Fifty seconds per message: live until the process goes."""
PACED = "simulated:tokens=30,rate=100"
"""0.3 s per message."""
SHUTDOWN_TIMEOUT = 10.0
"""``HubConfig.shutdown_timeout``'s default (``serve`` has no flag for it)."""


async def new_thread(session: aiohttp.ClientSession, url: str, *texts: str) -> str:
    body = {"messages": [{"role": "user", "content": text} for text in texts]}
    thread: dict[str, Any] = await call(session, "POST", f"{url}/v1/threads", body)
    return str(thread["id"])


async def new_run(
    session: aiohttp.ClientSession, url: str, thread_id: str, model: str
) -> dict[str, Any]:
    body = {"assistant_id": "streaming-example", "model": model}
    run: dict[str, Any] = await call(session, "POST", f"{url}/v1/threads/{thread_id}/runs", body)
    return run


async def whole_stream(
    session: aiohttp.ClientSession, url: str, thread_id: str, run_id: str, **headers: str
) -> tuple[int, list[Ev]]:
    async with asyncio.timeout(10 * UNIT):
        async with session.get(
            f"{url}/v1/threads/{thread_id}/stream/{run_id}", headers=headers
        ) as response:
            body = await response.read()
            if response.status != 200:
                return response.status, []
            assert response.headers["Content-Type"].startswith("text/event-stream")
            return 200, parse_events(body)


async def thread_state(session: aiohttp.ClientSession, url: str, thread_id: str) -> list[Any]:
    base = f"{url}/v1/threads/{thread_id}"
    return [
        await call(session, "GET", base),
        await call(session, "GET", f"{base}/messages?order=asc&limit=100"),
        await call(session, "GET", f"{base}/runs?order=asc&limit=100"),
    ]


def serve_args(data_dir: Path, *extra: str) -> tuple[str, ...]:
    return ("--store", "sqlite", "--data-dir", str(data_dir), *extra)


def checkpointed_text(data_dir: Path, run_id: str) -> str:
    """The text of the run's last checkpoint in the database (read-only, from outside)."""
    uri = f"file:{data_dir / 'agentstream.db'}?mode=ro"
    try:
        with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=1)) as db:
            row = db.execute("SELECT data FROM run_logs WHERE run_id = ?", (run_id,)).fetchone()
    except sqlite3.Error:
        return ""
    if row is None:
        return ""
    items = json.loads(row[0])["items"]
    return "".join(
        part["text"]["value"]
        for _first, _id, name, payload in items
        if name == "thread.message.delta"
        for part in payload["delta"]["content"]
    )


async def test_sigkill_mid_run_then_restart_keeps_everything_and_fails_the_live_run(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    data_dir = tmp_path / "data"
    first = ServeProcess(*serve_args(data_dir))
    second = ServeProcess(*serve_args(data_dir))
    try:
        url = await first.start()
        # A thread with two messages and a finished run.
        done_thread = await new_thread(session, url, "What is virtue?")
        await call(
            session,
            "POST",
            f"{url}/v1/threads/{done_thread}/messages",
            {"role": "user", "content": "And what is courage? ✓"},
        )
        done_run = (await new_run(session, url, done_thread, FAST))["id"]
        status, done_events = await whole_stream(session, url, done_thread, done_run)
        done_trace = check_run(done_events)
        # A second finished run on the same thread, then an empty thread.
        second_run = (await new_run(session, url, done_thread, FAST))["id"]
        check_run((await whole_stream(session, url, done_thread, second_run))[1])
        empty_thread = await new_thread(session, url)
        before = {
            done_thread: await thread_state(session, url, done_thread),
            empty_thread: await thread_state(session, url, empty_thread),
        }
        # A run live when the process dies, with a subscriber mid-stream, once a
        # checkpoint holds some of its text.
        live_thread = await new_thread(session, url, "What is justice?")
        live_run = await new_run(session, url, live_thread, SLOW)
        async with session.get(
            f"{url}/v1/threads/{live_thread}/stream/{live_run['id']}"
        ) as response:
            reader = SSEReader(response)
            async with asyncio.timeout(5 * UNIT):
                await reader.until(lambda e: e.name == "thread.message.delta")
            await eventually(
                lambda: len(checkpointed_text(data_dir, live_run["id"])) > 0,
                what="a checkpoint with text",
            )
            first.send(signal.SIGKILL)
            assert await first.wait(5 * UNIT) == -signal.SIGKILL
            with pytest.raises(aiohttp.ClientError):  # the connection dies, unterminated
                async with asyncio.timeout(5 * UNIT):
                    await reader.rest()
        assert not any(e.name in TERMINAL_EVENTS for e in reader.events)
        seen = ClientState().apply_all(reader.events).texts[0]
        seen_last = max(e.id for e in reader.events if e.id is not None)

        url = await second.start()
        assert "was live at the last stop: ended failed from its checkpoint" in second.output

        # Everything finished is there, unchanged.
        for thread_id, state in before.items():
            assert await thread_state(session, url, thread_id) == state
        assert [text_of(m) for m in before[done_thread][1]["data"][:2]] == [
            "What is virtue?",
            "And what is courage? ✓",
        ]
        # The live run: failed, saying so; its message is kept, incomplete, with the
        # text of its last checkpoint (consistent with what the subscriber saw).
        run = await call(session, "GET", f"{url}/v1/threads/{live_thread}/runs/{live_run['id']}")
        assert run["status"] == "failed", run
        assert run["last_error"]["message"] == (
            "the hub stopped while this run was live (it was not resumed on restart)"
        )
        assert run["failed_at"] is not None and run["created_at"] == live_run["created_at"]
        messages = (await thread_state(session, url, live_thread))[1]["data"]
        assert [(m["role"], m["status"]) for m in messages] == [
            ("user", "completed"),
            ("assistant", "incomplete"),
        ]
        kept = text_of(messages[1])
        assert kept and (seen.startswith(kept) or kept.startswith(seen)), (kept, seen)
        assert messages[1]["incomplete_details"] == {"reason": "run_failed"}

        # Its stream: rebuilt in the run's own numbering, an id on every event but the
        # gap; the last id is the end (204), and so is any cursor the subscriber held.
        status, events = await whole_stream(session, url, live_thread, run["id"])
        assert status == 200
        names = [e.name for e in events]
        assert names[0] == GAP and names[-1] == "thread.run.failed", names
        assert all(e.id is not None for e in events[1:]), names
        ids = [e.id for e in events[1:]]
        assert ids == sorted(ids) and len(set(ids)) == len(ids)
        client = ClientState().apply_all(events)
        assert client.terminal == "thread.run.failed" and client.run == run
        assert client.texts == [kept]
        last = events[-1].id
        assert last is not None and last > seen_last  # the endings come after any seen id
        status, _ = await whole_stream(
            session, url, live_thread, run["id"], **{"Last-Event-ID": str(last)}
        )
        assert status == 204
        # The subscriber's own cursor (it holds more text than was kept) gets a gap and
        # a snapshot of the kept state, ending with the run's end.
        status, tail = await whole_stream(
            session, url, live_thread, run["id"], **{"Last-Event-ID": str(seen_last)}
        )
        assert tail[0].name == GAP and tail[-1].name == "thread.run.failed"
        assert tail[-1].id == last and ClientState().apply_all(tail).texts == [kept]
        # A cursor between kept events continues exactly after it; one inside what the
        # kept message stands for gets a gap and a snapshot whose last event has the last id.
        created = next(e for e in events if e.name == "thread.message.created")
        assert created.id is not None
        status, tail = await whole_stream(
            session, url, live_thread, run["id"], **{"Last-Event-ID": str(created.id)}
        )
        assert [e.name for e in tail][1:] == names[names.index("thread.message.created") + 1 :]
        assert ClientState().apply_all([created, *tail]).texts == [kept]
        status, snapshot = await whole_stream(
            session, url, live_thread, run["id"], **{"Last-Event-ID": str(created.id + 3)}
        )
        assert snapshot[0].name == GAP and snapshot[-1].id == last
        assert all(e.id is None for e in snapshot[:-1]), [(e.id, e.name) for e in snapshot]
        assert ClientState().apply_all(snapshot).texts == [kept]

        # The finished run's stream (no longer in memory): rebuilt with the same texts, and
        # a cursor at its end is a 204.
        status, events = await whole_stream(session, url, done_thread, done_run)
        assert status == 200 and events[0].name == GAP
        assert events[-1].name == "thread.run.completed"
        assert events[-1].id == done_trace.last_id
        assert ClientState().apply_all(events).texts == done_trace.texts
        status, _ = await whole_stream(
            session, url, done_thread, done_run, **{"Last-Event-ID": str(done_trace.last_id)}
        )
        assert status == 204

        # The thread of the killed run is free again.
        again = await new_run(session, url, live_thread, FAST)
        check_run((await whole_stream(session, url, live_thread, again["id"]))[1])

        second.send(signal.SIGTERM)
        assert await second.wait(SHUTDOWN_TIMEOUT + 5 * UNIT) == 0, second.output
    finally:
        await first.aclose()
        await second.aclose()


STEP_AGENTS = {
    # A streamed completion that must call a tool, then a reply.
    "tool-user": """
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]

async def run(env):
    handler = await env.acompletions(await env.alist_messages(), stream=True, tools=TOOLS,
                                     tool_choice="required")
    async for _chunk in handler:
        pass
    await env.aadd_reply("called " + handler.tool_calls[0].function.name)
""",
    # A child run that never ends: its step stays open until the process goes.
    "waits-on-child": """
async def run(env):
    await env.arun_agent("sleeper", "take your time")
""",
    "sleeper": """
import asyncio

async def run(env):
    await asyncio.Event().wait()
""",
}


async def test_steps_survive_a_sigkill_and_the_live_runs_open_step_fails(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    agents = tmp_path / "agents"
    for name, source in STEP_AGENTS.items():
        write_agent(agents, name, source)
    args = serve_args(tmp_path / "data", "--agents", str(agents), "--model", FAST)
    first, second = ServeProcess(*args), ServeProcess(*args)
    try:
        url = await first.start()
        thread_id = await new_thread(session, url, "weather in Argos")
        body = {"assistant_id": "tool-user"}
        run_id = (await call(session, "POST", f"{url}/v1/threads/{thread_id}/runs", body))["id"]
        status, events = await whole_stream(session, url, thread_id, run_id)
        [step] = check_steps_run(events).steps
        steps_path = f"/v1/threads/{thread_id}/runs/{run_id}/steps"
        listed = await call(session, "GET", url + steps_path)
        assert listed["data"] == [step.final.data]

        # A run live when the process dies, with an open child_run step.
        live_thread = await new_thread(session, url, "delegate")
        body = {"assistant_id": "waits-on-child"}
        live_run = await call(session, "POST", f"{url}/v1/threads/{live_thread}/runs", body)
        live_path = f"/v1/threads/{live_thread}/runs/{live_run['id']}/steps"
        async with session.get(f"{url}/v1/threads/{live_thread}/stream/{live_run['id']}") as r:
            async with asyncio.timeout(5 * UNIT):
                await SSEReader(r).until(lambda e: e.name == "thread.run.step.in_progress")
        deadline = time.monotonic() + 5 * UNIT
        while not (await call(session, "GET", url + live_path))["data"]:  # stored soon after
            assert time.monotonic() < deadline, "the open step was never stored"
            await asyncio.sleep(0.01)  # another process's store: nothing to await
        first.send(signal.SIGKILL)
        assert await first.wait(5 * UNIT) == -signal.SIGKILL

        url = await second.start()
        assert await call(session, "GET", url + steps_path) == listed
        assert await call(session, "GET", f"{url}{steps_path}/{step.id}") == step.final.data
        [failed] = (await call(session, "GET", url + live_path))["data"]
        assert failed["type"] == "child_run" and failed["status"] == "failed", failed
        assert failed["failed_at"] is not None
        assert failed["last_error"] == {
            "code": "server_error",
            "message": "the hub stopped while this run was live (it was not resumed on restart)",
        }

        # Both streams, rebuilt from the store, show the steps.
        status, rebuilt = await whole_stream(session, url, thread_id, run_id)
        assert status == 200 and rebuilt[0].name == GAP
        state = StepsClientState().apply_all(rebuilt)
        assert state.tool_calls() == step.final_calls()
        assert state.steps == {step.id: step.final.data}
        status, rebuilt = await whole_stream(session, url, live_thread, live_run["id"])
        assert [e.name for e in rebuilt] == [
            GAP,
            "thread.run.in_progress",
            "thread.run.step.created",
            "thread.run.step.failed",
            "thread.run.failed",
        ]
        assert rebuilt[3].data == failed
    finally:
        await first.aclose()
        await second.aclose()


async def sigterm_with_a_subscriber(
    serve: ServeProcess, session: aiohttp.ClientSession, model: str
) -> tuple[list[Ev], float, int, str]:
    """Start a run, subscribe, SIGTERM once a delta arrived; the subscriber's events, the
    seconds until the process exited, its status and the run's id."""
    url = await serve.start()
    thread_id = await new_thread(session, url, "What is temperance?")
    run = await new_run(session, url, thread_id, model)
    async with session.get(f"{url}/v1/threads/{thread_id}/stream/{run['id']}") as response:
        reader = SSEReader(response)
        async with asyncio.timeout(5 * UNIT):
            await reader.until(lambda e: e.name == "thread.message.delta")
        started = time.monotonic()
        serve.send(signal.SIGTERM)
        async with asyncio.timeout(SHUTDOWN_TIMEOUT + 10 * UNIT):
            await reader.rest()  # the stream ENDS, cleanly: no hang, no broken body
    code = await serve.wait(SHUTDOWN_TIMEOUT + 10 * UNIT)
    return reader.events, time.monotonic() - started, code, run["id"]


async def test_sigterm_ends_a_run_outlasting_the_grace_with_a_terminal_event(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    grace = 0.5 * UNIT
    serve = ServeProcess(*serve_args(tmp_path / "data", "--shutdown-grace", str(grace)))
    try:
        events, lasted, code, run_id = await sigterm_with_a_subscriber(serve, session, SLOW)
        assert code == 0, serve.output
    finally:
        await serve.aclose()

    trace = check_run(events, "thread.run.failed")
    assert trace.terminal.data["last_error"]["message"] == (
        "the hub shut down before the run finished"
    )
    (message,) = trace.messages
    assert message.final.name == "thread.message.incomplete"
    assert grace <= lasted < grace + SHUTDOWN_TIMEOUT, lasted
    assert lasted < grace + 3 * UNIT, lasted  # nothing waits for the timeout here

    # What it wrote is what a restart finds.
    again = ServeProcess(*serve_args(tmp_path / "data"))
    try:
        url = await again.start()
        thread_id = trace.terminal.data["thread_id"]
        run = await call(session, "GET", f"{url}/v1/threads/{thread_id}/runs/{run_id}")
        assert run == trace.terminal.data
        messages = (await thread_state(session, url, thread_id))[1]["data"]
        assert [m["status"] for m in messages] == ["completed", "incomplete"]
        assert text_of(messages[1]) == message.delta_text  # the partial text was kept
    finally:
        await again.aclose()


async def test_sigterm_lets_a_run_finish_within_the_grace(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    serve = ServeProcess(*serve_args(tmp_path / "data", "--shutdown-grace", str(10 * UNIT)))
    try:
        events, lasted, code, _run_id = await sigterm_with_a_subscriber(serve, session, PACED)
        assert code == 0, serve.output
    finally:
        await serve.aclose()

    trace = check_run(events, "thread.run.completed")
    assert len(trace.messages) == 2 and all(trace.texts)
    assert lasted < 5 * UNIT, lasted


async def test_a_second_sigterm_exits_at_once(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    serve = ServeProcess(*serve_args(tmp_path / "data", "--shutdown-grace", "60"))
    try:
        url = await serve.start()
        thread_id = await new_thread(session, url, "What is piety?")
        await new_run(session, url, thread_id, SLOW)
        serve.send(signal.SIGTERM)
        deadline = time.monotonic() + 5 * UNIT
        while "shutting down gracefully" not in serve.output:  # a child process: poll its log
            assert time.monotonic() < deadline, serve.output
            await asyncio.sleep(0.01)
        started = time.monotonic()
        serve.send(signal.SIGTERM)
        assert await serve.wait(3 * UNIT) == 128 + signal.SIGTERM
        assert time.monotonic() - started < 2 * UNIT
    finally:
        await serve.aclose()
