"""Hub settings: one pydantic model, filled by the CLI or by code that embeds the hub.

Every setting has one home and one default. :class:`HubConfig` holds the hub's own
settings and three sections that belong to its parts: ``broker``
(:class:`~broker.BrokerConfig`: replay buffers, retention, subscribers, keepalives),
``runs`` (:class:`RunsConfig`) and ``redis`` (:class:`RedisConfig`, ``None`` for one
node). A section is given as its object or as a mapping of its fields::

    HubConfig(broker={"retention": 60}, runs={"max_concurrent_runs": 8})

``agentstream serve`` starts from :data:`SERVE_DEFAULTS` where a server's needs differ
from an embedded hub's; its flags (see :mod:`agent_runtime.cli`) set only what is given.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from broker import BrokerConfig
from broker.config import DEFAULT_GAP_EVENT, RedisSettings

from .protocol import GAP

__all__ = ["SERVE_DEFAULTS", "HubConfig", "IsolationConfig", "RedisConfig", "RunsConfig"]

MiB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class RunsConfig:
    """How runs are executed and bounded (the :class:`~agent_runtime.runs.RunManager`'s)."""

    expires_after: float = 600.0
    """Seconds from creation after which a live run ends ``expired``."""
    max_concurrent_runs: int | None = None
    """Runs executing at once, child runs included; further runs wait ``queued`` for a
    slot (a child never waits: see :mod:`agent_runtime.runs.children`)."""
    max_queued_runs: int | None = 1000
    """With ``max_concurrent_runs``: runs waiting for a slot at once; further runs are
    refused (429 with ``retry-after``). ``None``: unbounded."""
    checkpoint_interval: float = 1.0
    """Seconds between two checkpoints of a live run's state (its compacted event log,
    with the text streamed so far) in the store, so that a crash loses at most this much;
    ``0`` turns checkpoints off."""
    max_child_depth: int = 8
    """How deep child runs (``env.run_agent``) may nest: a root run is depth 0, its
    children depth 1… A child beyond it is refused (the call raises
    :class:`~agent_runtime.errors.ChildRunLimitReached`); 0 allows no child runs."""
    max_descendants: int = 64
    """Child runs live at once under one root run, every generation counted; one more is
    refused like a child too deep. 64 leaves room for an agent that fans out to dozens of
    helpers at once (and for the depth limit's chain of 8), while a runaway tree stops
    at a few dozen runs instead of thousands: with ``max_concurrent_runs`` it bounds every
    live run to ``max_concurrent_runs × (1 + max_descendants)`` (see
    :mod:`agent_runtime.runs.children`)."""
    final_write_timeout: float = 10.0
    """Seconds a run's final store write may take before the run ends without it (its
    terminal event is published either way; the write is retried in the background)."""

    def __post_init__(self) -> None:
        for name in ("expires_after", "final_write_timeout"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")
        if self.checkpoint_interval < 0:
            raise ValueError("checkpoint_interval must not be negative")
        if self.max_concurrent_runs is not None and self.max_concurrent_runs < 1:
            raise ValueError("max_concurrent_runs must be at least 1")
        for name in ("max_child_depth", "max_descendants"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if self.max_queued_runs is not None and self.max_queued_runs < 0:
            raise ValueError("max_queued_runs must not be negative")


@dataclass(frozen=True, slots=True)
class RedisConfig(RedisSettings):
    """One node of several sharing a Redis server: the broker's
    :class:`~broker.config.RedisSettings` (``url``, ``prefix``, ``linger``, …) and the
    node's place in the cluster. Streams, threads, messages and runs live in Redis; any
    node serves any run."""

    node_id: str | None = None
    """This node's name in the cluster (default: host, pid and a random suffix)."""
    node_lease: float = 10.0
    """Seconds after a node stops renewing its lease that the others fail its live runs."""

    def __post_init__(self) -> None:
        if not self.url:
            raise ValueError("url is required")
        if self.node_lease <= 0:
            raise ValueError("node_lease must be positive")
        if not 0 <= self.linger <= 1:
            raise ValueError("linger must be between 0 and 1 second")


@dataclass(frozen=True, slots=True)
class IsolationConfig:
    """Where agents run (see :mod:`agent_runtime.isolation`)."""

    mode: Literal["none", "process"] = "none"
    """``none``: in the hub's process, async agents as tasks on its event loop and sync
    agents in threads (the fastest; an agent can stall or crash the hub). ``process``:
    every run in a worker process of a pool (an agent can only fail its own run)."""
    workers: int | None = None
    """Worker processes started with the hub and kept ready (``None``: one per core)."""
    max_workers: int = 64
    """Worker processes at most: a run finding them all busy waits for a free one. Each
    worker is a Python process (about 75 MB resident, 55 MB of it its own)."""
    cancel_grace: float = 3.0
    """Seconds a cancelled run's agent has to stop on its own before its worker is
    killed (and replaced)."""
    run_cpu_seconds: float | None = None
    """CPU seconds a run may use in its worker (``None``: no limit)."""
    run_memory_mb: int | None = None
    """Memory a run may add to its worker, in MiB (``None``: no limit)."""
    worker_nice: int = 10
    """Niceness added to each worker process (0 to 19): an agent that spins competes for
    the CPU with less weight than the hub, whose event loop serves every stream, so a
    machine with fewer free cores than busy agents still streams on time."""

    def __post_init__(self) -> None:
        if self.workers is not None and self.workers < 0:
            raise ValueError("workers must not be negative")
        if self.max_workers < 1:
            raise ValueError("max_workers must be at least 1")
        if self.cancel_grace < 0:
            raise ValueError("cancel_grace must not be negative")
        if not 0 <= self.worker_nice <= 19:
            raise ValueError("worker_nice must be from 0 to 19")
        for name in ("run_cpu_seconds", "run_memory_mb"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive")
        for name in ("run_cpu_seconds", "run_memory_mb"):
            if getattr(self, name) is not None and self.mode != "process":
                raise ValueError(f"{name} needs isolation mode 'process'")

    @property
    def warm_workers(self) -> int:
        count = self.workers if self.workers is not None else (os.cpu_count() or 1)
        return min(count, self.max_workers)


SERVE_DEFAULTS: Mapping[str, Any] = {"store": "sqlite", "shutdown_grace": 10.0}
"""Where ``agentstream serve`` differs from an embedded hub: threads are kept on disk,
and live runs get ten seconds to finish at shutdown."""


class HubConfig(BaseModel):
    """Everything a hub needs to start. Defaults suit a single-node deployment."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    agents: tuple[Path, ...] = ()
    """Agent folders, or folders of agent folders. Empty: the bundled examples."""
    force_model: str | None = None
    """Force every completion onto this model (the CLI's ``--model``; see
    :meth:`~agent_runtime.models.router.ModelRouter.model_for_run`)."""
    default_model: str = "simulated"
    """Model of agents whose metadata names none."""
    default_provider: str = "fireworks"
    provider_timeout: float = Field(120.0, gt=0)
    """Seconds a model provider may take per request (a stalled stream fails the run)."""
    provider_max_retries: int = Field(1, ge=0)
    """Retries of a failed provider request before the run fails."""
    store: Literal["memory", "sqlite"] = "memory"
    """Where threads, messages and runs live: in memory (lost at exit) or in SQLite under
    ``data_dir`` (what ``agentstream serve`` uses by default)."""
    data_dir: Path = Path("agentstream-data")
    """Folder of the SQLite database (``agentstream.db``) when ``store`` is ``sqlite``."""
    max_body_bytes: int = Field(4 * MiB, ge=1024)
    """Largest request body (413 beyond)."""
    max_message_bytes: int = Field(1 * MiB, ge=1)
    """Largest message content accepted through the API (413 beyond)."""
    broker: BrokerConfig = Field(default_factory=lambda: BrokerConfig(gap_event=GAP))
    """The broker's limits and timings: replay buffers, retention, subscribers,
    keepalives, slow subscribers (its gap event is named :data:`~agent_runtime.protocol.GAP`)."""
    runs: RunsConfig = Field(default_factory=RunsConfig)
    """How runs are executed and bounded."""
    redis: RedisConfig | None = None
    """Run as one node of several sharing this Redis (replaces ``store``)."""
    isolation: IsolationConfig = Field(default_factory=IsolationConfig)
    """Where agents run: in the hub's process, or each run in a worker process."""
    max_connections: int | None = Field(None, ge=1)
    """Client connections open at once (``None``: the open-files limit minus a reserve for
    the hub's own descriptors). Beyond it a new connection replaces the one waiting
    longest without a request in progress; a few are kept for ``/healthz`` (see
    :mod:`agent_runtime.connections`); refusals are ``503`` naming the limit."""
    header_timeout: float = Field(10.0, gt=0)
    """Seconds a new connection has to send a complete request head before it is closed
    (``idle_timeout`` if that is shorter)."""
    idle_timeout: float = Field(75.0, gt=0)
    """Seconds a keep-alive connection may stay idle (or take to send its next request
    head) before it is closed. Neither timeout applies while a request (a stream) runs."""
    api_keys: tuple[str, ...] = ()
    """With keys, every API route needs ``Authorization: Bearer <key>`` (the stream route
    also takes ``?token=``) and threads belong to the key that created them."""
    adopt_unowned_threads: str | None = None
    """One of ``api_keys``: at start-up, threads without an owner (made while keys were
    off, which no key can reach once keys are on) become this key's."""
    cors_origins: tuple[str, ...] = ()
    """Origins allowed to call the API from a browser (``*`` for any); none by default."""
    shutdown_grace: float = Field(0.0, ge=0)
    """Seconds live runs get to finish on their own at shutdown before they are ended
    (``agentstream serve`` gives them 10 by default; embedded hubs end them at once)."""
    shutdown_timeout: float = Field(10.0, gt=0)
    """Seconds graceful shutdown then waits for ended runs to publish their terminal
    events and for subscribers to read to the end."""
    loop_stall_threshold: float = Field(0.1, ge=0)
    """Seconds the event loop may run no callback before it counts as a stall (counted,
    timed, logged naming the run; see :mod:`agent_runtime.watchdog`); ``0`` turns the
    watchdog off."""

    @field_validator("broker", mode="after")
    @classmethod
    def _gap_in_our_vocabulary(cls, broker: BrokerConfig) -> BrokerConfig:
        if broker.gap_event == DEFAULT_GAP_EVENT:
            return dataclasses.replace(broker, gap_event=GAP)
        return broker

    @model_validator(mode="after")
    def _adopter_is_a_key(self) -> HubConfig:
        if self.adopt_unowned_threads is not None and (
            self.adopt_unowned_threads not in self.api_keys
        ):
            raise ValueError("adopt_unowned_threads needs one of the API keys (api_keys)")
        return self

    @property
    def database_path(self) -> Path:
        return self.data_dir / "agentstream.db"
