"""``agentstream serve``'s flags: one table from flag to :class:`HubConfig` setting.

Each flag names the setting it fills (``retention`` → ``broker.retention``). Flags default
to ``None`` and only the flags given are passed on, so every default lives in
:mod:`agent_runtime.config` (with :data:`~agent_runtime.config.SERVE_DEFAULTS`); ``--help``
shows it from there. :func:`config_from_flags` builds the config and turns a rejected
value into a :class:`~agent_runtime.errors.ConfigError` naming the flag.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from broker import BrokerConfig

from .config import SERVE_DEFAULTS, HubConfig, IsolationConfig, RedisConfig, RunsConfig
from .errors import ConfigError

__all__ = ["SERVE_FLAGS", "add_serve_flags", "api_keys_from", "config_from_flags", "default_of"]

_SECTIONS: dict[str, type[Any]] = {
    "broker": BrokerConfig,
    "runs": RunsConfig,
    "redis": RedisConfig,
    "isolation": IsolationConfig,
}


@dataclass(frozen=True, slots=True)
class Flag:
    """One ``serve`` flag and the setting (``path`` in :class:`HubConfig`) it fills."""

    name: str
    path: str
    help: str
    type: Callable[[str], Any] = str
    metavar: str | None = None
    repeatable: bool = False
    choices: tuple[str, ...] | None = None
    unset: str | None = None
    """What the setting's ``None`` default means, for ``--help`` (``unbounded``…)."""


SERVE_FLAGS: tuple[Flag, ...] = (
    Flag("--host", "host", "address to listen on"),
    Flag("--port", "port", "port to listen on (0: any free port)", int),
    Flag(
        "--agents",
        "agents",
        "an agent folder or a folder of agent folders (repeatable)",
        Path,
        "DIR",
        repeatable=True,
        unset="the bundled examples",
    ),
    Flag(
        "--model",
        "force_model",
        "force every completion onto MODEL, e.g. 'simulated'",
        unset="each agent's own",
    ),
    Flag(
        "--store",
        "store",
        "sqlite: threads survive restarts; memory: ephemeral",
        choices=("sqlite", "memory"),
    ),
    Flag("--data-dir", "data_dir", "folder of the SQLite database", Path, "DIR"),
    Flag(
        "--redis",
        "redis.url",
        "run as one node of several sharing this Redis (redis://host:port/db): streams, "
        "threads and runs live there, any node serves any run; replaces --store",
        metavar="URL",
        unset="one node",
    ),
    Flag("--redis-prefix", "redis.prefix", "prefix of every Redis key"),
    Flag(
        "--redis-linger",
        "redis.linger",
        "time between two writes to (reads from) Redis under load: more is less CPU, for "
        "up to twice that much more latency on other nodes",
        float,
        "SECONDS",
    ),
    Flag("--node-id", "redis.node_id", "this node's name", unset="host-pid-random"),
    Flag(
        "--node-lease",
        "redis.node_lease",
        "seconds after a node stops that the others fail its live runs",
        float,
        "SECONDS",
    ),
    Flag(
        "--api-key",
        "api_keys",
        "require 'Authorization: Bearer KEY' (repeatable; also AGENTSTREAM_API_KEYS, "
        "comma-separated)",
        metavar="KEY",
        repeatable=True,
    ),
    Flag(
        "--adopt-unowned-threads",
        "adopt_unowned_threads",
        "at start-up, give threads created while API keys were off (which no key can "
        "reach) to KEY, one of the API keys",
        metavar="KEY",
    ),
    Flag(
        "--cors-origin",
        "cors_origins",
        "allow browser calls from ORIGIN ('*' for any; repeatable)",
        metavar="ORIGIN",
        repeatable=True,
    ),
    Flag(
        "--isolation",
        "isolation.mode",
        "none: agents run in the hub's process (fastest; an agent can stall or crash the "
        "hub); process: each run in a worker process (an agent can only fail its own run; "
        "recommended for agents you did not write)",
        choices=("none", "process"),
    ),
    Flag(
        "--workers",
        "isolation.workers",
        "with --isolation process: worker processes kept ready",
        int,
        "N",
        unset="one per core",
    ),
    Flag(
        "--max-workers",
        "isolation.max_workers",
        "with --isolation process: worker processes at most (further runs wait queued)",
        int,
        "N",
    ),
    Flag(
        "--cancel-grace",
        "isolation.cancel_grace",
        "with --isolation process: seconds a cancelled agent has to stop before its "
        "worker is killed",
        float,
        "SECONDS",
    ),
    Flag(
        "--worker-nice",
        "isolation.worker_nice",
        "with --isolation process: niceness added to worker processes (0-19), so agents "
        "that spin yield the CPU to the hub's event loop",
        int,
        "N",
    ),
    Flag(
        "--run-cpu-seconds",
        "isolation.run_cpu_seconds",
        "with --isolation process: CPU seconds a run may use",
        float,
        "SECONDS",
        unset="no limit",
    ),
    Flag(
        "--run-memory-mb",
        "isolation.run_memory_mb",
        "with --isolation process: memory a run may use, in MiB",
        int,
        "MIB",
        unset="no limit",
    ),
    Flag(
        "--provider-timeout", "provider_timeout", "seconds per provider request", float, "SECONDS"
    ),
    Flag(
        "--max-concurrent-runs",
        "runs.max_concurrent_runs",
        "runs executing at once, child runs included; further runs wait queued (a child "
        "run never waits)",
        int,
        "N",
        unset="unbounded",
    ),
    Flag(
        "--max-queued-runs",
        "runs.max_queued_runs",
        "with --max-concurrent-runs: runs waiting for a slot at once; further runs are "
        "refused with 429",
        int,
        "N",
    ),
    Flag(
        "--max-child-depth",
        "runs.max_child_depth",
        "how deep child runs (env.run_agent) may nest, a root run being depth 0; a deeper "
        "child is refused with an error the agent can catch",
        int,
        "N",
    ),
    Flag(
        "--max-descendants",
        "runs.max_descendants",
        "child runs live at once under one root run, every generation counted; one more "
        "is refused with an error the agent can catch",
        int,
        "N",
    ),
    Flag(
        "--run-expires-after",
        "runs.expires_after",
        "seconds after which a live run ends expired",
        float,
        "SECONDS",
    ),
    Flag(
        "--checkpoint-interval",
        "runs.checkpoint_interval",
        "how often a live run's text so far is written to the store, so a crash loses at "
        "most this much (0 turns checkpoints off)",
        float,
        "SECONDS",
    ),
    Flag(
        "--shutdown-grace",
        "shutdown_grace",
        "seconds live runs get to finish at shutdown before they are ended",
        float,
        "SECONDS",
    ),
    Flag("--max-body-bytes", "max_body_bytes", "largest request body (413 beyond)", int, "N"),
    Flag(
        "--max-message-bytes", "max_message_bytes", "largest message content (413 beyond)", int, "N"
    ),
    Flag(
        "--max-events-per-stream",
        "broker.max_events_per_stream",
        "events each run's replay buffer keeps for late joiners and resumes",
        int,
        "N",
    ),
    Flag(
        "--max-subscribers",
        "broker.max_subscribers",
        "subscribers across all streams (429 beyond)",
        int,
        "N",
        unset="unbounded",
    ),
    Flag(
        "--max-subscribers-per-stream",
        "broker.max_subscribers_per_stream",
        "subscribers of one run's stream (429 beyond)",
        int,
        "N",
        unset="unbounded",
    ),
    Flag(
        "--max-streams",
        "broker.max_streams",
        "run streams open or retained at once",
        int,
        "N",
        unset="unbounded",
    ),
    Flag(
        "--max-connections",
        "max_connections",
        "client connections open at once; beyond it, 503",
        int,
        "N",
        unset="the open-files limit minus a quarter, at least 32",
    ),
    Flag(
        "--header-timeout",
        "header_timeout",
        "time a new connection has to send its request head",
        float,
        "SECONDS",
    ),
    Flag(
        "--idle-timeout",
        "idle_timeout",
        "time an idle keep-alive connection is kept open",
        float,
        "SECONDS",
    ),
    Flag(
        "--loop-stall-threshold",
        "loop_stall_threshold",
        "the event loop running no callback for longer than this is a stall: counted "
        "in /metrics and logged naming the run (0: no watchdog)",
        float,
        "SECONDS",
    ),
    Flag(
        "--retention",
        "broker.retention",
        "seconds a finished run's stream stays in memory for late joiners",
        float,
        "SECONDS",
    ),
    Flag(
        "--keepalive",
        "broker.keepalive",
        "seconds without an event after which a subscriber gets a ': ping' comment",
        float,
        "SECONDS",
    ),
)


def default_of(path: str) -> Any:
    """The default ``agentstream serve`` uses for the setting at ``path``."""
    if path in SERVE_DEFAULTS:
        return SERVE_DEFAULTS[path]
    section, _, name = path.rpartition(".")
    if not section:
        return HubConfig.model_fields[name].get_default(call_default_factory=True)
    fields = {f.name: f for f in dataclasses.fields(_SECTIONS[section])}
    return fields[name].default


def _shown(flag: Flag) -> str:
    if flag.repeatable and flag.unset is None:
        return "none"
    value = default_of(flag.path)
    if value is None or value == () or value is dataclasses.MISSING:
        return flag.unset or "none"
    return str(value)


def add_serve_flags(parser: argparse.ArgumentParser) -> None:
    """Add every flag of :data:`SERVE_FLAGS`, defaulting to ``None``."""
    for flag in SERVE_FLAGS:
        parser.add_argument(
            flag.name,
            dest=_dest(flag),
            type=flag.type,
            metavar=flag.metavar,
            choices=flag.choices,
            action="append" if flag.repeatable else "store",
            default=None,
            help=f"{flag.help} (default: {_shown(flag)})",
        )


def _dest(flag: Flag) -> str:
    return flag.name.removeprefix("--").replace("-", "_")


def api_keys_from(flags: Sequence[str]) -> tuple[str, ...]:
    """The API keys of ``--api-key`` flags and ``AGENTSTREAM_API_KEYS``, each once."""
    from_env = os.environ.get("AGENTSTREAM_API_KEYS", "")
    keys = [*flags, *from_env.split(",")]
    return tuple(dict.fromkeys(k.strip() for k in keys if k.strip()))


def config_from_flags(args: argparse.Namespace) -> HubConfig:
    """The config ``serve`` runs with: :data:`SERVE_DEFAULTS`, then the flags given.

    Raises :class:`ConfigError` naming the flag when a value is refused (a Redis flag
    without ``--redis``, a negative timeout, …)."""
    settings: dict[str, Any] = dict(SERVE_DEFAULTS)
    for flag in SERVE_FLAGS:
        value = getattr(args, _dest(flag))
        if flag.path == "api_keys":
            value = api_keys_from(value or ())
            if not value:
                continue
        if value is None:
            continue
        if flag.repeatable:
            value = tuple(value)
        section, _, name = flag.path.rpartition(".")
        if section:
            settings.setdefault(section, {})[name] = value
        else:
            settings[name] = value
    if "redis" in settings and "url" not in settings["redis"]:
        given = [f.name for f in SERVE_FLAGS if f.path.removeprefix("redis.") in settings["redis"]]
        verb = "needs" if len(given) == 1 else "need"
        raise ConfigError(f"{' and '.join(given)} {verb} --redis URL")
    try:
        return HubConfig.model_validate(settings)
    except ValidationError as exc:
        raise ConfigError(_explain(exc)) from None


def _explain(exc: ValidationError) -> str:
    """``--flag: what is wrong`` for the first error pydantic found."""
    error = exc.errors()[0]
    path = ".".join(str(part) for part in error["loc"])
    message = str(error["msg"]).removeprefix("Value error, ")
    # A section's or the model's own check names the setting in its message's first word.
    named = message.split(" ", 1)[0]
    for flag in SERVE_FLAGS:
        if flag.path == (f"{path}.{named}" if path else named):
            return f"{flag.name} {message.split(' ', 1)[1]}"
        if flag.path == path:
            return f"{flag.name}: {message}"
    return f"{path or 'settings'}: {message}"
