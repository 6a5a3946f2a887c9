"""Logging for the hub and the CLI: run and thread ids on records, text or JSON lines,
an access log, and a line per run start and end.

The ids live in context variables set by the run's task; asyncio copies them into every
task the run starts (completion pumps), and the synchronous agent's thread runs in a copy
of the run's context, so records from the agent, the Environment, the providers and the
runtime all carry them. :class:`RunContextFilter` puts them on records as ``run_id`` and
``thread_id`` (``-`` outside runs) and as ``run_tags`` (`` [run=… thread=…]``, empty
outside runs) for formats such as :data:`LOG_FORMAT`.

:func:`configure` installs one stderr handler (``text`` or ``json``: one JSON object per
line). Every function here is synchronous and safe from any thread.
"""

from __future__ import annotations

import contextvars
import json
import logging
import time
from datetime import UTC, datetime
from typing import Literal

__all__ = [
    "ACCESS_LOGGER",
    "LOG_FORMAT",
    "RUN_ID",
    "RUNS_LOGGER",
    "THREAD_ID",
    "JsonFormatter",
    "RunContextFilter",
    "TextFormatter",
    "bind_run",
    "configure",
    "log_run_end",
    "log_run_start",
]

RUN_ID: contextvars.ContextVar[str] = contextvars.ContextVar("agentstream_run_id", default="-")
THREAD_ID: contextvars.ContextVar[str] = contextvars.ContextVar(
    "agentstream_thread_id", default="-"
)

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s%(run_tags)s %(message)s"
ACCESS_LOGGER = "agentstream.access"
"""One line per HTTP request (see :class:`agent_runtime.server.AccessLog`)."""
RUNS_LOGGER = "agentstream.runs"
"""One line per run start and end (:func:`log_run_start`, :func:`log_run_end`)."""

LogFormat = Literal["text", "json"]


def bind_run(run_id: str, thread_id: str) -> None:
    """Tag the current context (a run's task) with its ids."""
    RUN_ID.set(run_id)
    THREAD_ID.set(thread_id)


class RunContextFilter(logging.Filter):
    """Adds ``run_id``, ``thread_id`` and ``run_tags`` to every record (attach it to
    handlers). ``run_tags`` is empty for a record emitted outside any run."""

    def filter(self, record: logging.LogRecord) -> bool:
        run_id, thread_id = RUN_ID.get(), THREAD_ID.get()
        record.run_id = run_id
        record.thread_id = thread_id
        tags = []
        if run_id != "-":
            tags.append(f"run={run_id}")
        if thread_id != "-":
            tags.append(f"thread={thread_id}")
        record.run_tags = f" [{' '.join(tags)}]" if tags else ""
        return True


class TextFormatter(logging.Formatter):
    """:data:`LOG_FORMAT`; with ``tracebacks=False`` a record's traceback is left out
    (the CLI's agent commands print the error itself on one line)."""

    def __init__(self, *, tracebacks: bool = True) -> None:
        super().__init__(LOG_FORMAT)
        self.tracebacks = tracebacks

    def formatException(self, ei: object) -> str:
        return super().formatException(ei) if self.tracebacks else ""  # type: ignore[arg-type]

    def format(self, record: logging.LogRecord) -> str:
        return super().format(record).rstrip("\n")


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``time``, ``level``, ``logger``, ``message``, then
    ``run_id``/``thread_id`` inside a run and ``exc`` with a traceback (if ``tracebacks``)."""

    def __init__(self, *, tracebacks: bool = True) -> None:
        super().__init__()
        self.tracebacks = tracebacks

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in ("run_id", "thread_id"):
            value = getattr(record, key, "-")
            if value != "-":
                entry[key] = value
        if record.exc_info and self.tracebacks:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure(level: str, fmt: LogFormat = "text", *, tracebacks: bool = True) -> None:
    """Log records of ``level`` and above to stderr as ``fmt`` lines (replacing the root
    logger's handlers)."""
    handler = logging.StreamHandler()
    handler.addFilter(RunContextFilter())
    formatter = (
        JsonFormatter(tracebacks=tracebacks)
        if fmt == "json"
        else TextFormatter(tracebacks=tracebacks)
    )
    handler.setFormatter(formatter)
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


def log_run_start(agent: str, model: str) -> float:
    """Log that a run (of the current context's ids) starts; its start time for
    :func:`log_run_end`."""
    logging.getLogger(RUNS_LOGGER).info("run started: agent=%s model=%s", agent, model)
    return time.monotonic()


def log_run_end(agent: str, model: str, status: str, started: float, events: int) -> None:
    """Log that a run ended: agent, model, final status, duration and events published."""
    logging.getLogger(RUNS_LOGGER).info(
        "run ended: agent=%s model=%s status=%s duration=%.0fms events=%d",
        agent,
        model,
        status,
        (time.monotonic() - started) * 1000,
        events,
    )
