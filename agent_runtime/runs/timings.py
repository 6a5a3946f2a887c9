"""Where a run's first delta spends its time: wall-clock stamps of its start, per run.

A run records, once each, the moments its start passes through (:data:`STAMPS`, in the
order they happen): the ``POST`` that creates it accepted by the API, the run created
(stored, its task scheduled: the answer to the ``POST`` follows), its task started, its
status ``in_progress`` stored and published, the agent's code running (its thread begun,
or its ``run`` called), its first completion requested, the model's first chunk, and the
first ``thread.message.delta`` published. A stamp the run never reached stays ``None``
(an agent that never streams; agents in worker processes have no ``agent_running``).

The hub serves them at ``GET /v1/threads/{thread_id}/runs/{run_id}/timings``
(:func:`timings_body`) for the runs it started, live or recently ended: they are kept in
memory on the node that ran the run, for its last :data:`KEEP` runs, never stored.

Stamps are ``time.time()`` (seconds since the epoch), so a client on the same machine can
line them up with its own clock; the ``*_ms`` offsets from ``accepted`` are the hub's own
and hold anywhere.

Concurrency: a stamp is one attribute write of a float, the first write winning; the
loop and an agent's thread may stamp (each stamps its own fields). Plain sync code.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any

__all__ = ["KEEP", "STAMPS", "RunTimings", "TimingsTable", "timings_body"]

STAMPS = (
    "accepted",
    "created",
    "task_started",
    "in_progress",
    "agent_running",
    "model_requested",
    "first_chunk",
    "first_delta_published",
)
"""The stamps of a run's start, in the order a run that streams reaches them."""

KEEP = 10_000
"""Runs whose timings a node keeps (the most recently started)."""


class RunTimings:
    """The stamps of one run (see the module docstring); ``None`` until reached."""

    __slots__ = STAMPS
    accepted: float | None
    created: float | None
    task_started: float | None
    in_progress: float | None
    agent_running: float | None
    model_requested: float | None
    first_chunk: float | None
    first_delta_published: float | None

    def __init__(self, accepted: float | None = None) -> None:
        for name in STAMPS:
            setattr(self, name, None)
        self.accepted = accepted if accepted is not None else time.time()

    def stamp(self, name: str, at: float | None = None) -> None:
        """Record ``name`` now (or ``at``) unless it was recorded already."""
        if getattr(self, name) is None:
            setattr(self, name, time.time() if at is None else at)

    def get(self, name: str) -> float | None:
        value: float | None = getattr(self, name)
        return value

    def as_dict(self) -> dict[str, float | None]:
        return {name: getattr(self, name) for name in STAMPS}


class TimingsTable:
    """The timings of a node's last ``keep`` runs, by run id (oldest dropped first)."""

    def __init__(self, keep: int = KEEP) -> None:
        self.keep = keep
        self._runs: OrderedDict[str, RunTimings] = OrderedDict()

    def add(self, run_id: str, timings: RunTimings) -> None:
        self._runs[run_id] = timings
        while len(self._runs) > self.keep:
            self._runs.popitem(last=False)

    def get(self, run_id: str) -> RunTimings | None:
        return self._runs.get(run_id)

    def __len__(self) -> int:
        return len(self._runs)


def timings_body(run_id: str, thread_id: str, timings: RunTimings) -> dict[str, Any]:
    """The JSON body of ``GET …/runs/{run_id}/timings``: the stamps (epoch seconds) and
    each reached stamp's offset from ``accepted`` in milliseconds."""
    stamps = timings.as_dict()
    accepted = timings.accepted
    offsets = {
        f"{name}_ms": None if value is None or accepted is None else (value - accepted) * 1000
        for name, value in stamps.items()
    }
    return {
        "object": "thread.run.timings",
        "run_id": run_id,
        "thread_id": thread_id,
        "clock": "time.time() of the hub's node, seconds since the epoch",
        "stamps": stamps,
        "offsets": {k: None if v is None else round(v, 3) for k, v in offsets.items()},
    }
