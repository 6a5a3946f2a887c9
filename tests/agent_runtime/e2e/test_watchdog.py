"""The event loop's watchdog: the sans-I/O stall tracker on a fake clock, then a real hub
whose async agent blocks the loop with ``time.sleep``: the stall is counted in
``/metrics``, timed in its histogram, logged naming the run and the agent's line, and
reported by ``/healthz``."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent_runtime.watchdog import Culprit, LoopWatchdog, StallTracker

from ..conftest import UNIT, HubClient, StartHub, check_run, write_agent

# -- the core, on a fake clock -----------------------------------------------------------------


def steady(tracker: StallTracker, until: float) -> None:
    """Beat every ``interval`` from the last beat up to ``until``: no stall."""
    while tracker.last_beat + tracker.interval <= until:
        assert tracker.beat(tracker.last_beat + tracker.interval) is None


def test_beats_within_the_threshold_are_no_stall() -> None:
    tracker = StallTracker(threshold=0.125, last_beat=0.0)  # binary fractions: exact
    assert tracker.interval == 0.03125
    steady(tracker, 3.0)
    assert tracker.beat(3.125) is None  # exactly the threshold: not yet a stall
    assert tracker.count == 0 and tracker.total_seconds == 0.0
    assert tracker.worst_recent(3.25) == 0.0


def test_a_gap_longer_than_the_threshold_is_one_stall_of_that_duration() -> None:
    tracker = StallTracker(threshold=0.1, last_beat=10.0)
    stall = tracker.beat(10.7)
    assert stall is not None and stall.duration == pytest.approx(0.7) and stall.ended == 10.7
    assert stall.culprit is None  # nobody looked while it happened
    assert tracker.beat(10.725) is None
    assert tracker.count == 1 and tracker.total_seconds == pytest.approx(0.7)
    assert tracker.cumulative_buckets() == [
        (0.1, 0),
        (0.25, 0),
        (0.5, 0),
        (1.0, 1),
        (2.5, 1),
        (5.0, 1),
        (10.0, 1),
        (float("inf"), 1),
    ]
    tracker.beat(10.725 + 30.0)
    assert tracker.count == 2
    assert tracker.cumulative_buckets()[-2:] == [(10.0, 1), (float("inf"), 2)]


def test_the_watcher_notices_a_stall_while_it_lasts_and_the_stall_carries_it() -> None:
    tracker = StallTracker(threshold=0.1, last_beat=0.0)
    assert tracker.deadline() == 0.1
    assert not tracker.overdue(0.05) and not tracker.overdue(0.1)
    assert tracker.overdue(0.11)
    culprit = Culprit(run_id="run_1", task="run run_1", where="/a/agent.py:3")
    tracker.noticed(culprit)
    assert not tracker.overdue(0.2)  # noticed once per stall
    stall = tracker.beat(0.5)
    assert stall is not None and stall.culprit == culprit
    assert tracker.overdue(0.61)  # the next stall is a new one
    later = tracker.beat(0.9)
    assert later is not None and later.culprit is None


def test_the_worst_recent_stall_includes_one_under_way_and_forgets_after_the_window() -> None:
    tracker = StallTracker(threshold=0.125, last_beat=0.0, window=300.0)
    tracker.beat(3.0)  # a 3 s stall, ended at 3.0
    steady(tracker, 10.0)
    tracker.beat(10.5)  # a 0.5 s stall, ended at 10.5
    steady(tracker, 20.0)
    assert tracker.worst_recent(20.0) == 3.0
    assert tracker.worst_recent(24.0) == 4.0  # one under way, longer
    steady(tracker, 302.5)
    assert tracker.worst_recent(302.5) == 3.0
    steady(tracker, 303.5)
    assert tracker.worst_recent(303.5) == 0.5  # the 3 s one is more than 300 s old
    steady(tracker, 311.0)
    assert tracker.worst_recent(311.0) == 0.0


def test_a_zero_threshold_turns_the_watchdog_off() -> None:
    with pytest.raises(ValueError, match="threshold"):
        StallTracker(threshold=0.0, last_beat=0.0)
    watchdog = LoopWatchdog(0.0, run_of_task=lambda _t: None, is_agent_file=lambda _f: False)
    assert not watchdog.enabled
    before = threading.active_count()
    watchdog.start()  # not on a loop, and no thread
    assert threading.active_count() == before
    assert watchdog.stalls() == 0 and watchdog.worst_recent() == 0.0
    watchdog.stop()


# -- a real hub --------------------------------------------------------------------------------

STALLER = """
import time

async def run(env):
    await env.aadd_reply("about to block the loop")
    time.sleep({seconds!r})  # the blocking call
    await env.aadd_reply("done")
"""


async def scrape(hub: HubClient) -> dict[str, float]:
    """Every sample of ``/metrics`` by name (and ``le`` label for buckets)."""
    reply = await hub.request("GET", "/metrics")
    assert reply.status == 200
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(reply.body.decode()):
        for sample in family.samples:
            key = sample.name
            if "le" in sample.labels:
                key += f"[{sample.labels['le']}]"
            samples[key] = samples.get(key, 0.0) + sample.value
    return samples


async def test_an_async_agent_blocking_the_loop_is_counted_timed_logged_and_reported(
    start_hub: StartHub, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="agent_runtime.watchdog")
    sleep = 0.5 * UNIT
    source = STALLER.format(seconds=sleep)
    folder = write_agent(tmp_path, "staller", source)
    hub = await start_hub(agents=(tmp_path,), loop_stall_threshold=0.2 * UNIT)
    assert hub.hub.watchdog.stalls() == 0

    thread_id, run_id = await hub.start("staller")
    check_run(await hub.events(thread_id, run_id))

    metrics = await scrape(hub)
    # A busy machine may add stalls of its own: at least ours.
    assert metrics["agentstream_event_loop_stalls_total"] >= 1
    assert metrics["agentstream_event_loop_stall_seconds_count"] >= 1
    assert metrics["agentstream_event_loop_stall_seconds_sum"] >= sleep
    assert metrics["agentstream_event_loop_stall_seconds_bucket[+Inf]"] >= 1

    line = source.splitlines().index(f"    time.sleep({sleep!r})  # the blocking call") + 1
    named = [r for r in caplog.records if f"in run {run_id}" in r.getMessage()]
    assert named, [r.getMessage() for r in caplog.records]
    assert named[0].levelno == logging.WARNING
    assert f"agent code at {folder / 'agent.py'}:{line}" in named[0].getMessage()

    health = (await hub.request("GET", "/healthz")).json()
    assert health["loop_stall_worst_recent_ms"] >= sleep * 1000


async def test_the_watchdog_thread_stops_with_the_hub(start_hub: StartHub) -> None:
    hub = await start_hub(loop_stall_threshold=0.2 * UNIT)
    watchdog = hub.hub.watchdog
    assert watchdog.running
    await hub.server.aclose()
    assert not watchdog.running
