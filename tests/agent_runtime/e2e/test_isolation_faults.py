"""Misbehaving agents against a real ``agentstream serve`` process (issue 16's table).

Each test starts ``serve`` as a subprocess with a folder of bad agents beside the bundled
examples. Where it matters a *witness* run (the bundled ``streaming-example`` on a paced
simulated model) streams beside the bad agent, read over SSE with each event's arrival
time, while ``/healthz`` is polled, each poll with a short timeout.

In process mode (``--isolation process``):

* ``os._exit(7)``: the run fails alone (``last_error`` names "exited with status 7",
  subscribers get ``thread.run.failed``); the hub (same pid) serves the next run.
* ``time.sleep`` in ``async def run``, and heavy module-level code in an async agent: the
  witness never pauses for more than :data:`PAUSE_BOUND`, ``/healthz`` answers throughout.
* ``while True: pass`` in an async or a sync agent: the same; then a cancel ends the run
  ``cancelled`` within ``--cancel-grace`` plus a margin, its worker is killed and replaced,
  and the hub's process tree is idle afterwards (CPU time over an interval, from /proc).
* ``--run-cpu-seconds`` and ``--run-memory-mb``: a spinning or allocating agent fails
  naming the limit; the hub and a witness carry on.

In both modes: ``sys.exit(3)`` fails only its run. (``os._exit`` in the in-process mode
ends the hub, by definition, and is not tested.)
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agent_runtime.agents import bundled_examples_dir

from ..conftest import UNIT, check_run, eventually, write_agent
from ..provider_stub import ServeProcess, call
from ..sse import Ev, SSEReader

pytestmark = pytest.mark.slow

logger = logging.getLogger(__name__)

FAST = "simulated:tokens=12,rate=0"
WITNESS = "simulated:tokens=150,rate=100"
"""1.5 s per message, a delta every 10 ms: the witness streams for about 3 s."""
PAUSE_BOUND = 0.75 * UNIT
"""The witness's largest pause between two events, in process mode."""
HEALTH_TIMEOUT = 2.0 * UNIT
"""Each ``/healthz`` poll must answer within this (the witness's pauses are the finer check;
an allocating worker on a loaded machine once held a poll for 1.7 s)."""
GRACE = 1.0
"""``--cancel-grace`` of the cancel tests."""
BLOCK = 2.0
"""Seconds the blocking agents block for (well over :data:`PAUSE_BOUND`)."""
IDLE_CPU = 0.05
"""CPU seconds the hub's process tree may use in :data:`IDLE_WINDOW` to count as idle
(a spinning agent uses about that window's length, at least a third of it on a busy
machine)."""
IDLE_WINDOW = 0.5

_READY = 'await env.aadd_reply("misbehaving now")\n'

BAD_AGENTS: dict[str, str] = {
    "exits-7": f"""
import os

async def run(env):
    {_READY}
    os._exit(7)
""",
    "sys-exit-3": f"""
import sys

async def run(env):
    {_READY}
    sys.exit(3)
""",
    "sleeps": f"""
import time

async def run(env):
    {_READY}
    time.sleep({BLOCK})
    await env.aadd_reply("awake")
""",
    "heavy-module": f"""
import time

_start = time.monotonic()
while time.monotonic() - _start < {BLOCK}:
    pass

async def run(env):
    await env.aadd_reply("loaded")
""",
    "spins-async": f"""
async def run(env):
    {_READY}
    while True:
        pass
""",
    "spins-sync": """
if globals().get("env", None):
    env.add_reply("misbehaving now")
    while True:
        pass
""",
    "allocates": f"""
async def run(env):
    {_READY}
    blocks = []
    while True:
        blocks.append(bytearray(8 * 1024 * 1024))
""",
}


# -- the hub's process tree, from /proc --------------------------------------------------


def _stat(pid: int) -> list[str]:
    """Fields of ``/proc/PID/stat`` from the state on (the name may hold spaces)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()


def children(pid: int) -> set[int]:
    """Live child processes of ``pid`` (zombies left out)."""
    found: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = _stat(int(entry))
        except (OSError, ValueError):
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(entry))
    return found


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` (all its threads) so far; 0 once it is gone."""
    try:
        fields = _stat(pid)
    except (OSError, ValueError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def cpu_over(pids: set[int], window: float = IDLE_WINDOW) -> dict[int, float]:
    """CPU seconds each of ``pids`` used during ``window`` seconds."""
    before = {pid: cpu_seconds(pid) for pid in pids}
    await asyncio.sleep(window)  # measuring over an interval: nothing to await instead
    return {pid: cpu_seconds(pid) - before[pid] for pid in pids}


async def idle(pid: int, units: float = 5) -> None:
    """Wait until the process tree of ``pid`` uses under :data:`IDLE_CPU` in one
    :data:`IDLE_WINDOW` (a replacement worker's start takes a moment of CPU; a spinning
    agent never gets there)."""
    used: dict[int, float] = {}
    try:
        async with asyncio.timeout(units * UNIT):
            while sum(used.values()) >= IDLE_CPU or not used:
                used = await cpu_over({pid, *children(pid)})
    except TimeoutError:
        raise AssertionError(f"the hub's processes are not idle: {used}") from None


# -- a hub, a witness, a health poller --------------------------------------------------


@asynccontextmanager
async def serve(tmp_path: Path, mode: str, *extra: str) -> AsyncIterator[ServeProcess]:
    """``agentstream serve`` with the bad agents and the bundled examples, in ``mode``."""
    agents = tmp_path / "agents"
    for name, source in BAD_AGENTS.items():
        write_agent(agents, name, source)
    args = ["--store", "memory", "--agents", str(agents)]
    args += ["--agents", str(bundled_examples_dir()), "--isolation", mode]
    if mode == "process":
        args += ["--workers", "2"]
    process = ServeProcess(*args, *extra)
    try:
        await process.start()
        yield process
    except BaseException:
        logger.error("the hub's log:\n%s", process.output)
        raise
    finally:
        await process.aclose()


async def start_run(
    session: aiohttp.ClientSession, url: str, agent: str, model: str = FAST
) -> tuple[str, str]:
    """A new thread with one question and a run of ``agent`` on it: (thread, run) ids."""
    body = {"messages": [{"role": "user", "content": "What is virtue?"}]}
    thread = await call(session, "POST", f"{url}/v1/threads", body)
    run_body = {"assistant_id": agent, "model": model}
    run = await call(session, "POST", f"{url}/v1/threads/{thread['id']}/runs", run_body)
    return str(thread["id"]), str(run["id"])


@dataclass
class Stream:
    """A run's SSE stream read to its end in the background, with arrival times."""

    events: list[Ev] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    started: asyncio.Event = field(default_factory=asyncio.Event)
    """Set at the first ``thread.message.delta`` (or message) event."""
    task: asyncio.Task[None] | None = None

    async def read(self, session: aiohttp.ClientSession, url: str, thread: str, run: str) -> None:
        async with session.get(f"{url}/v1/threads/{thread}/stream/{run}") as response:
            assert response.status == 200
            reader = SSEReader(response)
            while (event := await reader.next()) is not None:
                self.events.append(event)
                self.times.append(time.monotonic())
                if event.name.startswith("thread.message"):
                    self.started.set()

    async def ended(self, units: float = 15) -> list[Ev]:
        assert self.task is not None
        async with asyncio.timeout(units * UNIT):
            await self.task
        return self.events

    def largest_pause(self, since: float) -> float:
        """The longest time between two events (or ``since`` and the first) after ``since``."""
        times = [since, *(t for t in self.times if t >= since)]
        return max(b - a for a, b in itertools.pairwise(times))

    def time_of(self, name: str) -> float:
        """When the first event named ``name`` arrived."""
        return next(t for t, e in zip(self.times, self.events, strict=True) if e.name == name)

    @property
    def terminal(self) -> str:
        return self.events[-1].name if self.events else ""


def follow(session: aiohttp.ClientSession, url: str, thread: str, run: str) -> Stream:
    stream = Stream()
    stream.task = asyncio.create_task(stream.read(session, url, thread, run))
    return stream


async def start_followed(
    session: aiohttp.ClientSession, url: str, agent: str, model: str = FAST
) -> tuple[str, str, Stream]:
    thread, run = await start_run(session, url, agent, model)
    return thread, run, follow(session, url, thread, run)


@dataclass
class Health:
    """Polls ``/healthz`` until stopped; every poll must answer 200 within its timeout."""

    url: str
    session: aiohttp.ClientSession
    polls: int = 0
    failures: list[str] = field(default_factory=list)
    slowest: float = 0.0
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=HEALTH_TIMEOUT)
        while not self._stop.is_set():
            start = time.monotonic()
            try:
                async with self.session.get(f"{self.url}/healthz", timeout=timeout) as response:
                    await response.read()
                    if response.status != 200:
                        self.failures.append(f"status {response.status}")
            except (TimeoutError, aiohttp.ClientError) as exc:
                self.failures.append(repr(exc))
            self.polls += 1
            self.slowest = max(self.slowest, time.monotonic() - start)
            try:  # a poll every 50 ms, or the stop
                async with asyncio.timeout(0.05):
                    await self._stop.wait()
            except TimeoutError:
                pass

    def check(self) -> None:
        assert self.polls > 0 and not self.failures, (self.polls, self.failures)


@asynccontextmanager
async def polling_health(session: aiohttp.ClientSession, url: str) -> AsyncIterator[Health]:
    health = Health(url, session)
    task = asyncio.create_task(health.run())
    try:
        yield health
    finally:
        health._stop.set()
        await task
    health.check()


async def run_status(session: aiohttp.ClientSession, url: str, thread: str, run: str) -> Any:
    return await call(session, "GET", f"{url}/v1/threads/{thread}/runs/{run}")


async def witnessed(
    session: aiohttp.ClientSession, url: str, bad_agent: str
) -> tuple[str, str, Stream, Stream]:
    """Start a witness, then (once it streams) the bad agent; wait until the witness ends
    and check that it never paused for :data:`PAUSE_BOUND` once the bad agent started, nor
    did ``/healthz`` fail. The bad run's (thread, run, stream) and the witness's stream."""
    async with polling_health(session, url):
        _, _, witness = await start_followed(session, url, "streaming-example", WITNESS)
        async with asyncio.timeout(10 * UNIT):
            await witness.started.wait()
        since = time.monotonic()
        thread, run, bad = await start_followed(session, url, bad_agent)
        check_run(await witness.ended())
    # The bad agent misbehaved while the witness streamed (for long enough to tell).
    overlap = witness.times[-1] - bad.time_of("thread.run.in_progress")
    assert overlap > 2 * PAUSE_BOUND, overlap
    assert witness.largest_pause(since) < PAUSE_BOUND, witness.largest_pause(since)
    return thread, run, bad, witness


async def hub_serves_another_run(session: aiohttp.ClientSession, url: str) -> None:
    _, _, stream = await start_followed(session, url, "streaming-example")
    check_run(await stream.ended())


# -- the tests --------------------------------------------------------------------------------


async def test_an_agent_that_exits_fails_its_run_alone(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    async with serve(tmp_path, "process") as hub:
        pid = hub.pid
        thread, run, stream = await start_followed(session, hub.url, "exits-7")
        events = await stream.ended()
        assert stream.terminal == "thread.run.failed", [e.name for e in events]
        check_run(events, "thread.run.failed")
        failed = await run_status(session, hub.url, thread, run)
        assert failed["status"] == "failed"
        assert "exited with status 7" in failed["last_error"]["message"], failed
        assert hub.returncode is None and hub.pid == pid
        await hub_serves_another_run(session, hub.url)


@pytest.mark.parametrize("mode", ["none", "process"])
async def test_sys_exit_fails_only_its_run(
    tmp_path: Path, session: aiohttp.ClientSession, mode: str
) -> None:
    async with serve(tmp_path, mode) as hub:
        thread, run, stream = await start_followed(session, hub.url, "sys-exit-3")
        check_run(await stream.ended(), "thread.run.failed")
        failed = await run_status(session, hub.url, thread, run)
        assert failed["last_error"]["message"] == "the agent exited (SystemExit: 3)", failed
        await hub_serves_another_run(session, hub.url)


@pytest.mark.parametrize("agent", ["sleeps", "heavy-module"])
async def test_a_blocking_async_agent_stalls_only_itself(
    tmp_path: Path, session: aiohttp.ClientSession, agent: str
) -> None:
    async with serve(tmp_path, "process") as hub:
        thread, run, bad, _ = await witnessed(session, hub.url, agent)
        check_run(await bad.ended())
        done = await run_status(session, hub.url, thread, run)
        assert done["status"] == "completed", done


@pytest.mark.parametrize("agent", ["spins-async", "spins-sync"])
async def test_a_spinning_agent_stalls_only_itself_and_cancel_stops_it(
    tmp_path: Path, session: aiohttp.ClientSession, agent: str
) -> None:
    async with serve(tmp_path, "process", "--cancel-grace", str(GRACE)) as hub:
        thread, run, bad, _ = await witnessed(session, hub.url, agent)
        assert bad.started.is_set() and not bad.task.done()  # type: ignore[union-attr]
        # The spinning worker: the hub's busiest child.
        used = await cpu_over(children(hub.pid), 0.3)
        spinner = max(used, key=used.__getitem__)
        assert used[spinner] > 0.05, used
        start = time.monotonic()
        await call(session, "POST", f"{hub.url}/v1/threads/{thread}/runs/{run}/cancel")
        events = await bad.ended(GRACE + 5)
        elapsed = time.monotonic() - start
        assert bad.terminal == "thread.run.cancelled", [e.name for e in events]
        assert elapsed < GRACE + 2 * UNIT, elapsed
        assert (await run_status(session, hub.url, thread, run))["status"] == "cancelled"
        # Its worker is killed and replaced; then nothing burns CPU.
        await eventually(lambda: spinner not in children(hub.pid), what="the worker killed")
        await eventually(lambda: len(children(hub.pid)) >= 2, what="the worker replaced")
        await idle(hub.pid)
        await hub_serves_another_run(session, hub.url)


async def check_limit(
    session: aiohttp.ClientSession, hub: ServeProcess, agent: str, flag: str
) -> None:
    thread, run, bad, _ = await witnessed(session, hub.url, agent)
    check_run(await bad.ended(), "thread.run.failed")
    failed = await run_status(session, hub.url, thread, run)
    assert flag in failed["last_error"]["message"], failed
    assert hub.returncode is None
    await hub_serves_another_run(session, hub.url)


async def test_the_cpu_limit_fails_a_spinning_run(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    async with serve(tmp_path, "process", "--run-cpu-seconds", "1") as hub:
        await check_limit(session, hub, "spins-async", "CPU limit (1 s, --run-cpu-seconds)")


async def test_the_memory_limit_fails_an_allocating_run(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    async with serve(tmp_path, "process", "--run-memory-mb", "100") as hub:
        await check_limit(session, hub, "allocates", "memory limit (100 MiB, --run-memory-mb)")
