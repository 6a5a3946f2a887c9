"""Run and thread ids on every log record emitted while a run is being served.

The ids live in context variables set by the run's task; asyncio copies them into every
task the run starts (completion pumps), and the synchronous agent's thread runs in a copy
of the run's context, so records from the agent, the Environment, the providers and the
runtime all carry them. :class:`RunContextFilter` puts them on records as ``run_id`` and
``thread_id`` (``-`` outside runs) for formats such as :data:`LOG_FORMAT`.
"""

from __future__ import annotations

import contextvars
import logging

__all__ = ["LOG_FORMAT", "RUN_ID", "THREAD_ID", "RunContextFilter", "bind_run"]

RUN_ID: contextvars.ContextVar[str] = contextvars.ContextVar("agentstream_run_id", default="-")
THREAD_ID: contextvars.ContextVar[str] = contextvars.ContextVar(
    "agentstream_thread_id", default="-"
)

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [run=%(run_id)s thread=%(thread_id)s] %(message)s"


def bind_run(run_id: str, thread_id: str) -> None:
    """Tag the current context (a run's task) with its ids."""
    RUN_ID.set(run_id)
    THREAD_ID.set(thread_id)


class RunContextFilter(logging.Filter):
    """Adds ``run_id`` and ``thread_id`` to every record (attach it to handlers)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.run_id = RUN_ID.get()
        record.thread_id = THREAD_ID.get()
        return True
