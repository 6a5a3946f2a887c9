"""Hub settings: one pydantic model, filled by the CLI or by code that embeds the hub."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from broker import BrokerConfig

from .protocol import GAP

__all__ = ["HubConfig", "RunsConfig"]

MiB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class RunsConfig:
    """What the :class:`~agent_runtime.runs.RunManager` needs (from :class:`HubConfig`)."""

    expires_after: float = 600.0
    """Seconds from creation after which a live run ends ``expired``."""
    max_concurrent_runs: int | None = None
    """Runs executing at once; further runs wait ``queued`` for a slot."""
    checkpoint_interval: float = 1.0
    """Seconds between two checkpoints of a live run's state (its compacted event log,
    with the text streamed so far) in the store; ``0`` turns checkpoints off."""
    final_write_timeout: float = 10.0
    """Seconds a run's final store write may take before the run ends without it (its
    terminal event is published either way; the write is retried in the background)."""
    max_queued_runs: int | None = None
    """Runs waiting for a slot at once (with ``max_concurrent_runs``); further ones are
    refused (429). ``None``: no bound."""


class HubConfig(BaseModel):
    """Everything a hub needs to start. Defaults suit a single-node deployment."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    agents: tuple[Path, ...] = ()
    """Agent folders, or folders of agent folders. Empty: the bundled examples."""
    model: str | None = None
    """Force every completion onto this model (the CLI's ``--model``)."""
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
    redis_url: str | None = None
    """Run as one node of several sharing this Redis (``redis://host:port/db``): streams,
    threads, messages and runs live there, any node serves any run. Replaces ``store``."""
    redis_prefix: str = "agentstream:"
    """Prefix of every Redis key: deployments sharing one Redis need different ones."""
    node_id: str | None = None
    """This node's name in the cluster (default: host, pid and a random suffix)."""
    node_lease: float = Field(10.0, gt=0)
    """Seconds after a node stops renewing its lease that the others fail its live runs."""
    redis_linger: float = Field(0.001, ge=0, le=1)
    """Seconds a node waits between two writes to Redis, and between two reads of its
    mirrored streams once a read returned events: more is less CPU under load, for up to
    twice that much more latency on the other nodes (its own subscribers never wait)."""
    data_dir: Path = Path("agentstream-data")
    """Folder of the SQLite database (``agentstream.db``) when ``store`` is ``sqlite``."""
    max_body_bytes: int = Field(4 * MiB, ge=1024)
    """Largest request body (413 beyond)."""
    max_message_bytes: int = Field(1 * MiB, ge=1)
    """Largest message content accepted through the API (413 beyond)."""
    run_expires_after: float = Field(600.0, gt=0)
    checkpoint_interval: float = Field(1.0, ge=0)
    """Seconds between checkpoints of a live run's state (its text so far) in the store,
    so that a crash loses at most this much; ``0`` turns them off."""
    max_concurrent_runs: int | None = Field(None, ge=1)
    max_queued_runs: int | None = Field(1000, ge=0)
    """With ``max_concurrent_runs``: runs waiting for a slot at once; further runs are
    refused (429 with ``retry-after``). ``None``: unbounded."""
    retention: float = Field(300.0, gt=0)
    keepalive: float = Field(15.0, gt=0)
    stall_timeout: float = Field(30.0, gt=0)
    high_water: int = Field(256 * 1024, ge=1024)
    max_events_per_stream: int = Field(10_000, ge=1)
    max_bytes_per_stream: int = Field(8 * MiB, ge=1024)
    max_total_bytes: int | None = Field(512 * MiB, ge=1024)
    max_subscribers_per_stream: int | None = Field(None, ge=1)
    max_subscribers: int | None = Field(None, ge=1)
    max_streams: int | None = Field(None, ge=1)
    """Run streams open or retained at once; retained ones are dropped first to make room,
    then new runs are refused (429 naming the limit)."""
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

    @model_validator(mode="after")
    def _adopter_is_a_key(self) -> HubConfig:
        if self.adopt_unowned_threads is not None and (
            self.adopt_unowned_threads not in self.api_keys
        ):
            raise ValueError("adopt_unowned_threads must be one of api_keys")
        return self

    @property
    def database_path(self) -> Path:
        return self.data_dir / "agentstream.db"

    def broker_config(self) -> BrokerConfig:
        return BrokerConfig(
            max_events_per_stream=self.max_events_per_stream,
            max_bytes_per_stream=self.max_bytes_per_stream,
            max_total_bytes=self.max_total_bytes,
            retention=self.retention,
            max_subscribers_per_stream=self.max_subscribers_per_stream,
            max_subscribers=self.max_subscribers,
            max_streams=self.max_streams,
            keepalive=self.keepalive,
            high_water=self.high_water,
            stall_timeout=self.stall_timeout,
            gap_event=GAP,
        )

    def runs_config(self) -> RunsConfig:
        return RunsConfig(
            expires_after=self.run_expires_after,
            max_concurrent_runs=self.max_concurrent_runs,
            checkpoint_interval=self.checkpoint_interval,
            max_queued_runs=self.max_queued_runs,
        )
