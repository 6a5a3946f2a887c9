"""The worker pool starts its workers a few at a time (one per core), so a large pool on
a small machine does not have every worker miss its start timeout."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest

from agent_runtime.config import IsolationConfig
from agent_runtime.isolation import pool as pool_module
from agent_runtime.isolation.pool import WorkerPool

from ..conftest import within


async def test_workers_start_at_most_one_per_core_at_a_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cores = len(os.sched_getaffinity(0))
    workers = cores + 2
    pool = WorkerPool(IsolationConfig(mode="process", workers=workers))
    starting_at_once: list[int] = []
    real_exec = asyncio.create_subprocess_exec

    async def counting_exec(*args: Any, **kwargs: Any) -> asyncio.subprocess.Process:
        # Workers already started that have not said they are ready yet.
        ready = sum(1 for w in pool._all if w.ready.done())
        starting_at_once.append(len(starting_at_once) - ready)
        return await real_exec(*args, **kwargs)

    monkeypatch.setattr(pool_module.asyncio, "create_subprocess_exec", counting_exec)
    try:
        async with within(30):
            await pool.start()
        assert pool.size == workers
        assert len(starting_at_once) == workers
        assert max(starting_at_once) <= cores - 1, starting_at_once
    finally:
        await pool.aclose()


def niceness(pid: int) -> int:
    """The niceness of process ``pid`` (field 19 of ``/proc/PID/stat``)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return int(fields[16])


@pytest.mark.parametrize("nice", [0, 7])
async def test_workers_run_with_the_configured_niceness(nice: int) -> None:
    pool = WorkerPool(IsolationConfig(mode="process", workers=1, worker_nice=nice))
    try:
        async with within(30):
            await pool.start()
        (worker,) = pool._all
        assert niceness(worker.process.pid) == niceness(os.getpid()) + nice
    finally:
        await pool.aclose()


def test_worker_nice_is_bounded() -> None:
    with pytest.raises(ValueError, match="worker_nice"):
        IsolationConfig(mode="process", worker_nice=20)
