"""Every run ends whatever its store does: a failed or full store, a thread deleted while a
run starts on it.

* A store that fails when a run ends (injected): the run's subscribers still get its
  terminal event, its stream closes, the hub logs the run's id, and the final state is
  written once the store takes writes again. API writes meanwhile answer 503 with a body
  naming the cause.
* A real full disk (a 3 MiB tmpfs, as root): the same, through ``agentstream serve``.
* ``POST …/runs {"stream": true}`` racing ``DELETE /threads/{id}``, many times on the
  SQLite store: no request is left open, and no run is left on a deleted thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agent_runtime.errors import StorageUnavailable
from agent_runtime.objects import Run, new_id, now
from agent_runtime.store import Store

from ..conftest import PACED_MODEL, TERMINAL_EVENTS, UNIT, StartHub, within
from ..provider_stub import ServeProcess, call
from ..sse import SSEReader, parse_events

FULL = "the data directory /nowhere is full (database or disk is full)"


class Faults:
    """Makes a live store's writes fail while ``on`` (an injected full disk)."""

    WRITES = ("create_thread", "add_message", "update_run", "create_run", "save_run_log")

    def __init__(self, store: Store) -> None:
        self.on = False
        self.refused = 0
        for name in self.WRITES:
            real = getattr(store, name)
            setattr(store, name, self._wrap(real))

    def _wrap(self, real: Any) -> Any:
        async def write(*args: Any, **kwargs: Any) -> Any:
            if self.on:
                self.refused += 1
                raise StorageUnavailable(FULL)
            return await real(*args, **kwargs)

        return write


async def poll(predicate: Any, *, units: float = 10, what: str = "") -> None:
    """Wait, bounded, for an async condition (a background retry's effect)."""
    try:
        async with within(units):
            while not await predicate():  # noqa: ASYNC110 - a retry timer: no event exists
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"not reached within {units * UNIT:.2f}s: {what}") from None


async def test_a_run_whose_final_writes_fail_still_ends_and_is_stored_later(
    start_hub: StartHub, caplog: pytest.LogCaptureFixture
) -> None:
    hub = await start_hub(model=PACED_MODEL)
    faults = Faults(hub.hub.store)
    thread_id, run_id = await hub.start()
    async with hub.reader(thread_id, run_id) as reader:
        async with within(5):
            await reader.until(lambda e: e.name == "thread.message.delta")
        faults.on = True
        async with within(5):
            await reader.rest()  # the stream ends: no subscriber waits forever
    names = [e.name for e in reader.events]
    assert names[-1] == "thread.run.failed", names
    assert FULL in reader.events[-1].data["last_error"]["message"]
    assert "thread.message.completed" not in names  # never shown, since never stored
    assert names.count("thread.message.incomplete") == 1
    assert faults.refused >= 2
    assert any(
        run_id in r.getMessage() and "could not be stored" in r.getMessage() for r in caplog.records
    )

    # The run is not live any more: a new subscriber gets the whole run, at once.
    async with within(5):
        replay = await hub.events(thread_id, run_id)
    assert replay[-1].name == "thread.run.failed"
    # API writes answer 503 naming the cause, never a bare 500.
    reply = await hub.request("POST", "/v1/threads", json_body={})
    assert reply.status == 503
    assert reply.json()["error"]["code"] == "storage_unavailable"
    assert "is full" in reply.json()["error"]["message"]

    # Reads answer the run as it ended; a cancel says it has ended.
    assert (await hub.run(thread_id, run_id))["status"] == "failed"
    reply = await hub.request("POST", f"/v1/threads/{thread_id}/runs/{run_id}/cancel")
    assert reply.status == 400 and "'failed'" in reply.json()["error"]["message"]

    # Once the store takes writes again, the run's final state is written.
    stored = hub.hub.store
    assert (await stored.get_run(thread_id, run_id)).status == "in_progress"
    faults.on = False

    async def written() -> bool:
        return (await stored.get_run(thread_id, run_id)).status == "failed"

    await poll(written, what="the final state is repaired")
    messages = await hub.messages(thread_id)
    assert [m["status"] for m in messages if m["role"] == "assistant"] == ["incomplete"]
    # And the thread takes new runs.
    again = await hub.create_run(thread_id)
    async with within(5):
        events = await hub.events(thread_id, again["id"])
    assert events[-1].name == "thread.run.completed"


async def test_deleting_a_thread_while_a_streaming_run_starts_leaves_nothing_open(
    start_hub: StartHub, tmp_path: Path
) -> None:
    hub = await start_hub(store="sqlite", data_dir=tmp_path / "data")
    outcomes: dict[tuple[int, int], int] = {}

    async def start_streaming(thread_id: str) -> int:
        async with hub.session.post(
            f"{hub.url}/v1/threads/{thread_id}/runs",
            json={"assistant_id": "streaming-example", "stream": True},
        ) as response:
            body = await response.read()
            if response.status == 200:
                events = parse_events(body, "openai")
                assert events[-1].name == "done" and events[-2].name in TERMINAL_EVENTS
            return response.status

    for _ in range(200):
        thread_id = await hub.create_thread("What is piety?")
        async with within(10):
            started, deleted = await asyncio.gather(
                start_streaming(thread_id),
                hub.request("DELETE", f"/v1/threads/{thread_id}"),
            )
        assert started in (200, 404, 409), started
        assert deleted.status in (200, 409), deleted.body
        if deleted.status == 409:  # the run won: it ran, and the thread is still there
            assert started == 200
            runs = (await hub.request("GET", f"/v1/threads/{thread_id}/runs")).json()["data"]
            assert [r["status"] for r in runs] == ["completed"]
        else:  # the delete won: no run was left on the deleted thread
            assert started in (404, 409)
        outcomes[(started, deleted.status)] = outcomes.get((started, deleted.status), 0) + 1
    assert not hub.hub.runs.live_count
    assert outcomes  # (for a failure's report: which interleavings happened)


# -- a real full disk ----------------------------------------------------------------------


@contextlib.contextmanager
def small_disk(path: Path, size: str = "3m") -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``path`` (root only; skips otherwise)."""
    path.mkdir(parents=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root (the injected-fault test covers this)")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(path: Path) -> None:
    """Write zeros to ``path`` until the disk is full."""
    block = b"\0" * 65536
    with open(path, "wb", buffering=0) as out:
        try:
            while True:
                out.write(block)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    with contextlib.suppress(OSError), open(path, "ab", buffering=0) as out:
        while True:
            out.write(b"\0")


async def test_a_full_disk_ends_the_run_answers_503_and_recovers(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    with small_disk(tmp_path / "disk") as disk:
        serve = ServeProcess(
            "--data-dir", str(disk / "data"), "--model", "simulated:tokens=300,rate=100"
        )
        try:
            url = await serve.start()
            thread = await call(
                session,
                "POST",
                f"{url}/v1/threads",
                {"messages": [{"role": "user", "content": "What is virtue?"}]},
            )
            run = await call(
                session,
                "POST",
                f"{url}/v1/threads/{thread['id']}/runs",
                {"assistant_id": "streaming-example"},
            )
            stream = f"{url}/v1/threads/{thread['id']}/stream/{run['id']}"
            async with session.get(stream) as response:
                reader = SSEReader(response)
                async with asyncio.timeout(5 * UNIT):
                    await reader.until(lambda e: e.name == "thread.message.delta")
                fill(disk / "filler")
                async with asyncio.timeout(15 * UNIT):
                    await reader.rest()
            final = reader.events[-1]
            assert final.name == "thread.run.failed", [e.name for e in reader.events]
            assert "is full" in final.data["last_error"]["message"]
            assert "Traceback" not in serve.output, serve.output

            async with session.post(f"{url}/v1/threads", json={}) as response:
                assert response.status == 503
                error = (await response.json())["error"]
            assert error["code"] == "storage_unavailable" and "is full" in error["message"]

            (disk / "filler").unlink()

            async def stored() -> bool:
                got = await call(
                    session, "GET", f"{url}/v1/threads/{thread['id']}/runs/{run['id']}"
                )
                return bool(got["status"] == "failed")

            await poll(stored, units=20, what="the final state is written once there is room")
            again = await call(
                session,
                "POST",
                f"{url}/v1/threads/{thread['id']}/runs",
                {"assistant_id": "streaming-example", "model": "simulated:tokens=5,rate=0"},
            )
            async with session.get(
                f"{url}/v1/threads/{thread['id']}/stream/{again['id']}"
            ) as response:
                events = parse_events(await response.read())
            assert events[-1].name == "thread.run.completed"
        finally:
            await serve.aclose()


async def test_a_run_ended_elsewhere_with_only_a_checkpoint_is_rebuilt_with_its_end(
    start_hub: StartHub,
) -> None:
    """A run failed by another node (its own died) may have only a checkpoint stored: its
    stream is rebuilt from its messages and ends with its terminal event all the same."""
    hub = await start_hub()
    store = hub.hub.store
    thread_id = await hub.create_thread("What is virtue?")
    run = Run(
        id=new_id("run"),
        thread_id=thread_id,
        assistant_id="streaming-example",
        created_at=now(),
        expires_at=None,
        model="simulated",
        status="failed",
        last_error={"code": "server_error", "message": "node a died"},
    )
    await store.create_run(run)
    checkpoint = {"head": 3, "items": [[3, 3, "thread.run.in_progress", run.to_dict()]]}
    await store.save_run_log(thread_id, run.id, checkpoint)
    async with within(5):
        events = await hub.events(thread_id, run.id)
    assert events[0].name == "thread.stream.gap"
    assert events[-1].name == "thread.run.failed"
    assert events[-1].data["last_error"]["message"] == "node a died"
