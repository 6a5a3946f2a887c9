"""Time to first delta, broken down: where each run's first delta spent its time.

Per run, the bench has its own stamps (the ``POST`` sent and answered, its first
subscriber connected, the first delta received) and the hub's (``GET
…/runs/{run_id}/timings``, :mod:`agent_runtime.runs.timings`). :func:`run_phases` turns
them into consecutive phases whose durations add up to the time to first delta;
:class:`Breakdown` collects them over runs and summarises each phase (p50, p99, max) and,
for the slowest runs (the time to first delta at or above its p99), the mean of each
phase: where the tail goes.

The two ends (``request``: the ``POST`` sent to the hub accepting it; ``delivery``: the
delta published to its first receipt) compare the bench's clock with the hub's: valid for
a hub on the same machine (the default), skewed by the clocks' difference otherwise.

Plain sync code: no I/O, no clock.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .stats import summary_ms

__all__ = ["PHASES", "Breakdown", "ClientStamps", "run_phases"]

PHASES: tuple[tuple[str, str, str, str], ...] = (
    ("request", "post_sent", "accepted", "the POST on its way to the hub (bench -> hub clock)"),
    ("create", "accepted", "created", "thread, messages and run stored, run task scheduled"),
    ("task_start", "created", "task_started", "the run's task waiting for the event loop"),
    ("in_progress", "task_started", "in_progress", "a run slot, in_progress stored, published"),
    ("agent_start", "in_progress", "agent_running", "the agent's thread started (or run called)"),
    ("agent_code", "agent_running", "model_requested", "agent code up to its completion call"),
    ("model", "model_requested", "first_chunk", "the model's first chunk"),
    ("publish", "first_chunk", "first_delta_published", "the first delta published"),
    ("delivery", "first_delta_published", "first_rx", "published to first receipt (hub -> bench)"),
)
"""(phase, from stamp, to stamp, what it is): consecutive, from the POST to the receipt."""


@dataclass(slots=True)
class ClientStamps:
    """The bench's stamps of one run, on the hub's clock (``time.time()`` seconds)."""

    post_sent: float
    post_answered: float | None = None
    first_connected: float | None = None
    first_rx: float | None = None


def run_phases(
    client: ClientStamps, hub: Mapping[str, float | None] | None
) -> dict[str, float | None]:
    """The duration in seconds of each phase of :data:`PHASES` for one run (``None`` where
    a stamp is missing: then the phase across the gap is the difference of the nearest
    stamps known, attributed to the later phase). Negative durations (clock skew,
    stamps taken on different threads) are kept as measured."""
    stamps: dict[str, float | None] = dict(hub or {})
    stamps["post_sent"] = client.post_sent
    stamps["first_rx"] = client.first_rx
    out: dict[str, float | None] = {}
    last: float | None = client.post_sent
    for name, _start, end, _what in PHASES:
        value = stamps.get(end)
        if value is None or last is None:
            out[name] = None
            continue
        out[name] = value - last
        last = value
    return out


class Breakdown:
    """The phases of every run measured, and their summary (see the module docstring)."""

    def __init__(self) -> None:
        self.runs: list[tuple[float, dict[str, float | None]]] = []
        """(time to first delta, phases) per run that got a first delta."""
        self.answered: list[float] = []
        self.connected: list[float] = []
        self.hub_reported = 0

    def add(
        self, ttfd: float, client: ClientStamps, hub: Mapping[str, float | None] | None
    ) -> None:
        self.runs.append((ttfd, run_phases(client, hub)))
        if hub is not None:
            self.hub_reported += 1
        if client.post_answered is not None:
            self.answered.append(client.post_answered - client.post_sent)
        if client.first_connected is not None:
            self.connected.append(client.first_connected - client.post_sent)

    def summary(self) -> dict[str, Any]:
        phases: dict[str, Any] = {}
        for name, start, end, what in PHASES:
            values = [v for _t, p in self.runs if (v := p[name]) is not None]
            phases[name] = {
                "from": start,
                "to": end,
                "what": what,
                **summary_ms(max(v, 0.0) for v in values),
                "negative": sum(1 for v in values if v < 0),
            }
        tail = _slowest(self.runs)
        return {
            "definition": "time to first delta cut into consecutive phases by the bench's "
            "stamps and the hub's (GET /v1/threads/{thread_id}/runs/{run_id}/timings); "
            "'request' and 'delivery' compare the two processes' clocks",
            "runs": len(self.runs),
            "hub_reported": self.hub_reported,
            "phases_ms": phases,
            "slowest_runs": tail,
            "post_answered_ms": summary_ms(self.answered),
            "first_subscriber_connected_ms": summary_ms(self.connected),
        }


def _slowest(runs: list[tuple[float, dict[str, float | None]]]) -> dict[str, Any]:
    """The mean of each phase over the runs whose time to first delta is at or above the
    p99 (at least one run): where the tail's time goes."""
    if not runs:
        return {"runs": 0, "mean_ms": {}}
    ordered = sorted(runs, key=lambda r: r[0])
    count = max(1, len(ordered) - math.ceil(0.99 * len(ordered)) + 1)
    worst = ordered[-count:]
    means: dict[str, float | None] = {}
    for name, *_ in PHASES:
        values = [v for _t, p in worst if (v := p[name]) is not None]
        means[name] = round(sum(values) / len(values) * 1000, 3) if values else None
    return {
        "runs": count,
        "ttfd_ms": round(sum(t for t, _ in worst) / count * 1000, 3),
        "mean_ms": means,
    }
