"""The SQLite data directory: one process at a time, and a clear refusal when unusable.

* A second ``agentstream serve`` on a ``--data-dir`` in use exits 2 with one line naming
  the directory and the holder's pid, without touching the database: the first
  process's live run stays live. Once the first stops, the directory is free again.
* An embedded hub (``agent_runtime.hub.Hub``, ``store="sqlite"``) is refused the same way.
* ``serve`` on an unusable data directory (under a regular file, a regular file, a
  database that is not one) exits 2 with one line on stderr, no traceback.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import aiohttp
import pytest

from agent_runtime.config import HubConfig
from agent_runtime.errors import DataDirError, DataDirInUse
from agent_runtime.hub import Hub

from ..conftest import UNIT
from ..provider_stub import ServeProcess, call, spawn_serve
from .test_restart import SHUTDOWN_TIMEOUT, SLOW, new_run, new_thread, serve_args


async def serve_fails(*args: str) -> tuple[int, list[str]]:
    """Run ``agentstream serve --port 0 ARGS…`` expecting it to exit at once: its exit
    status and its stderr lines."""
    proc = await spawn_serve(*args)
    try:
        async with asyncio.timeout(30 * UNIT):
            _, err = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, err.decode(errors="replace").splitlines()


async def test_a_second_serve_on_a_data_dir_in_use_exits_2_and_leaves_it_alone(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    data_dir = tmp_path / "data"
    first = ServeProcess(*serve_args(data_dir))
    again = ServeProcess(*serve_args(data_dir))
    try:
        url = await first.start()
        thread_id = await new_thread(session, url, "What is justice?")
        run = await new_run(session, url, thread_id, SLOW)

        code, lines = await serve_fails(*serve_args(data_dir))

        assert code == 2, lines
        assert len(lines) == 1, lines
        assert lines[0].startswith("agentstream: data directory ")
        assert str(data_dir) in lines[0] and f"pid {first.pid}" in lines[0]
        # It touched nothing: the first process's run is still live, in the database too.
        stored = await call(session, "GET", f"{url}/v1/threads/{thread_id}/runs/{run['id']}")
        assert stored["status"] == "in_progress", stored
        assert first.returncode is None
        assert (data_dir / "agentstream.lock").read_text().strip() == str(first.pid)

        first.send(signal.SIGTERM)
        assert await first.wait(SHUTDOWN_TIMEOUT + 10 * UNIT) == 0, first.output
        url = await again.start()  # released at exit: the directory is free
        assert await call(session, "GET", f"{url}/v1/threads/{thread_id}") is not None
    finally:
        await first.aclose()
        await again.aclose()


async def test_an_embedded_hub_on_a_data_dir_in_use_is_refused(tmp_path: Path) -> None:
    config = HubConfig(store="sqlite", data_dir=tmp_path / "data")
    first = Hub(config)
    await first.start()
    try:
        second = Hub(config)
        with pytest.raises(DataDirInUse) as info:
            await second.start()
        assert info.value.pid == os.getpid()
        assert str(config.data_dir) in str(info.value)
        await second.aclose()
    finally:
        await first.aclose()
    third = Hub(config)  # the lock went with the first hub's store
    await third.start()
    await third.aclose()


@pytest.mark.parametrize("kind", ["under a file", "a file", "not a database"])
async def test_serve_on_an_unusable_data_dir_exits_2_with_one_line(
    tmp_path: Path, kind: str
) -> None:
    # Tests may run as root, where permission bits stop nothing: these fail for root too.
    regular = tmp_path / "regular"
    regular.write_text("not a directory\n")
    data_dir = {"under a file": regular / "data", "a file": regular}.get(kind, tmp_path / "db")
    if kind == "not a database":
        data_dir.mkdir()
        (data_dir / "agentstream.db").write_bytes(b"this is not a SQLite database\n" * 100)

    code, lines = await serve_fails(*serve_args(data_dir))

    assert code == 2, lines
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"agentstream: cannot use data directory {data_dir}: "), lines


async def test_the_store_maps_an_unusable_directory_to_a_domain_error(tmp_path: Path) -> None:
    regular = tmp_path / "regular"
    regular.write_text("")
    hub = Hub(HubConfig(store="sqlite", data_dir=regular / "data"))
    with pytest.raises(DataDirError, match="Not a directory"):
        await hub.start()
    await hub.aclose()
