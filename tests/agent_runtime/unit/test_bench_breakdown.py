"""The bench's time-to-first-delta breakdown and its self-check, as plain code: phases
consecutive and adding up to the time to first delta, missing stamps merged into the
next phase, the slowest runs' means; the loop-lag probe and the bottleneck verdict."""

from __future__ import annotations

import asyncio
import itertools
import time

from agent_runtime.bench.breakdown import PHASES, Breakdown, ClientStamps, run_phases
from agent_runtime.bench.hubproc import CpuPressure
from agent_runtime.bench.selfcheck import LAG_P99_MAX, LoopLag, verdict
from agent_runtime.bench.stats import Histogram
from agent_runtime.runs.timings import STAMPS

HUB = {name: 100.0 + i * 0.01 for i, name in enumerate(STAMPS)}
"""A hub's stamps 10 ms apart, from accepted at t=100 s."""


def test_phases_are_consecutive_from_the_post_to_the_receipt() -> None:
    names = [phase[0] for phase in PHASES]
    assert len(set(names)) == len(names)
    assert PHASES[0][1] == "post_sent" and PHASES[-1][2] == "first_rx"
    for before, after in itertools.pairwise(PHASES):
        assert before[2] == after[1]  # each phase starts where the previous ended
    hub_stamps = [phase[2] for phase in PHASES[:-1]]
    assert hub_stamps == list(STAMPS)  # every stamp of the hub, in the hub's order


def test_phases_add_up_to_the_time_to_first_delta() -> None:
    client = ClientStamps(post_sent=99.995, post_answered=100.02, first_rx=100.08)
    phases = run_phases(client, HUB)
    assert list(phases) == [phase[0] for phase in PHASES]
    assert all(value is not None and value >= 0 for value in phases.values())
    total = sum(v for v in phases.values() if v is not None)
    assert abs(total - (client.first_rx - client.post_sent)) < 1e-9  # type: ignore[operator]
    assert abs(phases["request"] - 0.005) < 1e-9  # type: ignore[operator]


def test_a_missing_stamp_is_merged_into_the_next_phase() -> None:
    hub = dict(HUB, agent_running=None)  # e.g. an agent in a worker process
    phases = run_phases(ClientStamps(post_sent=99.995, first_rx=100.08), hub)
    assert phases["agent_start"] is None
    assert abs(phases["agent_code"] - 0.02) < 1e-9  # type: ignore[operator]
    alone = run_phases(ClientStamps(post_sent=99.995, first_rx=100.08), None)  # an old hub
    assert [k for k, v in alone.items() if v is not None] == ["delivery"]
    assert abs(alone["delivery"] - 0.085) < 1e-9  # type: ignore[operator]


def test_the_summary_names_every_phase_and_the_slowest_runs() -> None:
    breakdown = Breakdown()
    for i in range(200):
        late = 0.5 if i == 199 else 0.0  # one run waited half a second for its task
        hub = dict(HUB, **{name: HUB[name] + late for name in STAMPS[2:]})
        client = ClientStamps(post_sent=99.995, post_answered=100.02, first_rx=100.08 + late)
        breakdown.add(client.first_rx - client.post_sent, client, hub)  # type: ignore[operator]
    summary = breakdown.summary()
    assert summary["runs"] == summary["hub_reported"] == 200
    phases = summary["phases_ms"]
    assert list(phases) == [phase[0] for phase in PHASES]
    for figures in phases.values():
        assert figures["n"] == 200 and figures["negative"] == 0
        assert 0 <= figures["p50"] <= figures["p99"] <= figures["max"]
    assert phases["task_start"]["max"] == 510.0
    tail = summary["slowest_runs"]
    assert tail["runs"] == 3  # ranks 198 (the p99 of 200) to 200
    assert abs(tail["mean_ms"]["task_start"] - 530 / 3) < 0.001  # (510 + 10 + 10) / 3
    assert summary["post_answered_ms"]["n"] == 200
    assert summary["first_subscriber_connected_ms"]["n"] == 0


def test_verdict_flags_a_lagging_or_saturated_bench() -> None:
    quiet = Histogram()
    for _ in range(100):
        quiet.add(0.001)
    calm = verdict([0.2, 0.3, 0.25], quiet)
    assert calm["bottleneck"] is False and calm["warning"] is None
    assert calm["loop_lag_ms"]["n"] == 100
    lagging = Histogram()
    for _ in range(100):
        lagging.add(LAG_P99_MAX * 4)
    late = verdict([0.2, 0.3, 0.25], lagging)
    assert late["bottleneck"] is True and "event loop" in late["warning"]
    busy = verdict([0.99, 0.98, 0.97, 0.99], quiet)
    assert busy["saturated"] is True and busy["bottleneck"] is True
    assert "core" in busy["warning"]


async def test_the_loop_lag_probe_sees_a_blocked_loop() -> None:
    probe = LoopLag(period=0.001)
    probe.start()
    try:
        await asyncio.sleep(0.01)
        time.sleep(0.1)  # noqa: ASYNC251 - the loop blocked on purpose: probes run late
        await asyncio.sleep(0.01)
    finally:
        probe.stop()
    assert probe.lag.n >= 2
    assert probe.lag.max >= 0.09
    assert verdict([0.1], probe.lag)["loop_lag_ms"]["max"] >= 90


def test_cpu_pressure_is_a_fraction_of_the_time_or_unknown() -> None:
    pressure = CpuPressure()
    pressure.start()
    sum(range(100_000))  # some time passes
    fraction = pressure.stop()
    assert fraction is None or 0.0 <= fraction <= 1.0
    assert pressure.fraction == fraction
