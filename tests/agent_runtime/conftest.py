"""Shared fixtures of the runtime's tests (the groups below share them), and the helpers
of :mod:`.basics`, :mod:`.agent_sources`, :mod:`.servers` and :mod:`.contract` under the
names the tests import them by.

* :data:`UNIT` — seconds; every wait is bounded by a small multiple of it. Raise
  ``AGENTSTREAM_TEST_UNIT`` (e.g. to ``3``) on a slow or loaded machine.
* ``start_hub`` — starts a real hub (:class:`agent_runtime.server.Server`) on a real
  socket with the given :class:`~agent_runtime.config.HubConfig` settings and returns a
  :class:`HubClient` over it; everything is stopped and closed at teardown.
* ``agents_dir`` — a folder of small test agents (see :data:`TEST_AGENTS`) beside the
  bundled examples.
* :func:`check_run` — the contract's "Events of one run", checked strictly;
  :class:`ClientState` — what a client rebuilds from any sequence (gap, snapshots, tails).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agent_runtime.config import HubConfig
from agent_runtime.server import Server

from .agent_sources import TEST_AGENTS, with_examples, write_agent
from .basics import (
    FAST_MODEL,
    GAP,
    PACED_MODEL,
    PLATO,
    QUESTION,
    RUN_START,
    SLOW_MODEL,
    SOCRATES,
    TERMINAL_EVENTS,
    UNIT,
    eventually,
    within,
)
from .contract import ClientState, MessageTrace, RunTrace, check_run
from .servers import HubClient, Reply, StartHub, text_of

__all__ = [
    "FAST_MODEL",
    "GAP",
    "PACED_MODEL",
    "PLATO",
    "QUESTION",
    "RUN_START",
    "SLOW_MODEL",
    "SOCRATES",
    "TERMINAL_EVENTS",
    "TEST_AGENTS",
    "UNIT",
    "ClientState",
    "HubClient",
    "MessageTrace",
    "Reply",
    "RunTrace",
    "StartHub",
    "check_run",
    "eventually",
    "text_of",
    "with_examples",
    "within",
    "write_agent",
]


@pytest.fixture
def agents_dir(tmp_path: Path) -> Path:
    """A folder holding every agent of :data:`TEST_AGENTS`."""
    root = tmp_path / "agents"
    for name, source in TEST_AGENTS.items():
        write_agent(root, name, source)
    return root


CONTRACT_MODULES = frozenset(
    {
        "test_e2e_agent_usage",
        "test_e2e_cancel",
        "test_e2e_concurrency",
        "test_e2e_errors",
        "test_e2e_failures",
        "test_e2e_flow",
        "test_e2e_openai_sdk",
        "test_e2e_resume",
        "test_clients_openai_sdk",
    }
)
"""The end-to-end contract suite: each of its tests runs on both backends. Matched on the
module's own name, whichever group (``e2e``, ``clients``) holds it."""

ISOLATED_MODULES = frozenset(
    {"test_e2e_cancel", "test_e2e_flow", "test_e2e_resume", "test_clients_openai_sdk"}
)
"""Contract modules whose tests also run with agents in worker processes
(``--isolation process``, one warm worker), on the memory backend."""


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "in_process_only(reason): a test of ISOLATED_MODULES that does not run with agents "
        "in worker processes (it looks inside the hub's process, or relies on its timing)",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    module = metafunc.module.__name__.rsplit(".", 1)[-1]
    if module in CONTRACT_MODULES and "start_hub" in metafunc.fixturenames:
        params = [
            pytest.param("memory", "none", id="memory"),
            pytest.param("redis", "none", id="redis"),
        ]
        if module in ISOLATED_MODULES and not metafunc.definition.get_closest_marker(
            "in_process_only"
        ):
            params.append(pytest.param("memory", "process", id="memory-process"))
        metafunc.parametrize(("backend", "isolation"), params, indirect=True)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """A client session for tests that drive ``agentstream serve`` processes (a fresh
    connection per request: a killed process leaves nothing to reuse)."""
    client = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(force_close=True),
        timeout=aiohttp.ClientTimeout(total=30 * UNIT),
    )
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The hub's ``redis`` settings: ``{}`` in memory; on ``redis``, the test's Redis and
    its own prefix (then ``start_hub`` starts two nodes, see there)."""
    if getattr(request, "param", "memory") != "redis":
        return {}
    return {
        "url": request.getfixturevalue("redis_url"),
        "prefix": request.getfixturevalue("redis_prefix"),
    }


@pytest.fixture
def isolation(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The hub's ``isolation`` settings: ``{}`` (agents in the hub's process) unless the
    param is ``process`` (each run in a worker process; one worker kept ready)."""
    if getattr(request, "param", "none") != "process":
        return {}
    return {"mode": "process", "workers": 1}


@pytest.fixture
async def start_hub(backend: dict[str, Any], isolation: dict[str, Any]) -> AsyncIterator[StartHub]:
    """``await start_hub(model=..., **HubConfig settings)`` → a :class:`HubClient` on a
    fresh hub; ``model`` is forced on every completion (``None``: each run's own).

    Defaults: port 0, :data:`FAST_MODEL`, the bundled example agents. At teardown every
    session is closed and every hub shut down (live runs end, subscribers are released).

    On the Redis backend (the contract modules run on both) two nodes are started on one
    Redis: requests go to the first, which runs the runs, and stream requests to the
    second, which follows them through Redis. With the ``isolation`` fixture's process
    settings (:data:`ISOLATED_MODULES`) every hub runs its agents in worker processes.
    """
    started: list[HubClient] = []

    async def start(**settings: Any) -> HubClient:
        settings.setdefault("port", 0)
        settings["force_model"] = settings.pop("model", FAST_MODEL)
        settings.setdefault("shutdown_timeout", 2 * UNIT)
        if isolation:
            settings.setdefault("isolation", isolation)
        node = {"redis": {**backend, "node_id": "a"}} if backend else {}
        server = Server(HubConfig(**settings, **node))
        await server.start()
        watcher = None
        if backend:
            watcher = Server(HubConfig(**settings, redis={**backend, "node_id": "b"}))
            await watcher.start()
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(total=30 * UNIT),
        )
        client = HubClient(server, session, watcher)
        started.append(client)
        return client

    yield start
    for client in reversed(started):
        await client.session.close()
        await client.server.aclose()
        if client.watcher is not None:
            await client.watcher.aclose()
