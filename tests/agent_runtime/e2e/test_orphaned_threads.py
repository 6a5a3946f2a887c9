"""A synchronous agent that ignores its run's cancel (it never calls the Environment) keeps
its thread: the hub reports it as orphaned in ``/healthz`` and ``/metrics`` and logs it
once, until the thread returns. The registry itself on a fake clock first."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from agent_runtime.runs.agent_thread import AgentThreads, Orphan

from ..conftest import FAST_MODEL, StartHub, check_run, eventually, within, write_agent
from .test_e2e_cancel import agent_thread_alive
from .test_watchdog import scrape


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_thread_that_returns_before_its_run_ends_is_never_an_orphan() -> None:
    threads = AgentThreads(Clock())
    threads.enter("run_1", "poet")
    threads.leave("run_1")
    assert threads.run_ended("run_1") is False
    assert threads.orphans() == []


def test_a_thread_still_running_when_its_run_ends_is_an_orphan_until_it_returns() -> None:
    clock = Clock()
    threads = AgentThreads(clock)
    threads.enter("run_1", "spinner")
    threads.enter("run_2", "poet")
    assert threads.orphans() == []  # running, its run live
    assert threads.run_ended("run_1") is True
    assert threads.run_ended("run_1") is False  # reported once
    clock.now += 4.0
    assert threads.orphans() == [Orphan("run_1", "spinner", 4.0)]
    threads.leave("run_1")
    assert threads.orphans() == []


SPINNER = """
from pathlib import Path

if globals().get('env', None):
    env.add_reply("spinning")
    release = Path({flag!r})
    while not release.exists():  # no Environment call: the cancel cannot reach it
        pass
"""


async def test_a_sync_agent_ignoring_the_cancel_is_reported_as_orphaned_until_it_returns(
    start_hub: StartHub, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="agent_runtime.runs.agent_thread")
    release = tmp_path / "release"
    agents = tmp_path / "agents"
    write_agent(agents, "spinner", SPINNER.format(flag=str(release)))
    write_agent(agents, "replier", 'if globals().get("env", None):\n    env.add_reply("hi")\n')
    hub = await start_hub(agents=(agents,), model=FAST_MODEL)
    threads = hub.hub.runs.agent_threads

    # A sync agent that returns is no orphan.
    thread_id, run_id = await hub.start("replier")
    check_run(await hub.events(thread_id, run_id))
    assert threads.orphans() == []

    thread_id, run_id = await hub.start("spinner")
    try:
        async with hub.reader(thread_id, run_id) as reader:
            async with within(2):
                await reader.until(lambda e: e.name == "thread.message.completed")
            reply = await hub.request("POST", f"/v1/threads/{thread_id}/runs/{run_id}/cancel")
            assert reply.json()["status"] == "cancelling"
            async with within(2):
                await reader.rest()
        check_run(reader.events, "thread.run.cancelled")
        assert (await hub.run(thread_id, run_id))["status"] == "cancelled"
        assert agent_thread_alive(run_id)

        health = (await hub.request("GET", "/healthz")).json()
        assert health["orphaned_agent_threads"] == 1
        (orphan,) = health["orphans"]
        assert orphan["run_id"] == run_id and orphan["agent"] == "spinner"
        assert orphan["seconds_since_run_ended"] >= 0
        assert (await scrape(hub))["agentstream_orphaned_agent_threads"] == 1
        (warning,) = [r for r in caplog.records if run_id in r.getMessage()]
        assert warning.levelno == logging.WARNING
        assert "only --isolation process can stop it" in warning.getMessage()
    finally:
        release.touch()

    await eventually(lambda: not agent_thread_alive(run_id), what="the spinner returns")
    assert threads.orphans() == []
    health = (await hub.request("GET", "/healthz")).json()
    assert health["orphaned_agent_threads"] == 0 and health["orphans"] == []
    assert (await scrape(hub))["agentstream_orphaned_agent_threads"] == 0
