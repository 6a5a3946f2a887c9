"""Exceptions of the agent runtime. Every one derives from :class:`AgentRuntimeError`.

They say what went wrong (a message, the ``param`` at fault, a ``code``), never how to
answer it: the HTTP status and OpenAI error ``type`` of each class are in one table,
``agent_runtime.api.errors.ERROR_TABLE``.
"""

from __future__ import annotations


class AgentRuntimeError(Exception):
    """Base class of every error the runtime raises."""

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


class ConfigError(AgentRuntimeError):
    """A setting the hub cannot start with (the CLI prints it in one line, status 2)."""


class AgentProcessError(AgentRuntimeError):
    """With process isolation: the agent's worker process died, was killed, or the run went
    over one of its limits (the message says which); or the agent raised in its worker
    (the message is its exception, as in the hub)."""


class InvalidRequest(AgentRuntimeError):
    """The request is malformed or names something invalid (HTTP 400)."""


class NotFound(AgentRuntimeError):
    """An unknown thread, message, run or agent (HTTP 404)."""


class Conflict(AgentRuntimeError):
    """The request conflicts with the current state, e.g. a second live run (HTTP 409)."""


class PayloadTooLarge(AgentRuntimeError):
    """A request body or field over a configured size (HTTP 413)."""


class LimitReached(AgentRuntimeError):
    """A limit of the runtime (the queued-runs bound, …) refused the request (HTTP 429);
    the message says which and how to raise it. The broker's own limits (subscribers,
    streams) raise ``broker.LimitExceeded`` instead: the broker knows nothing of the runtime.

    ``retry_after``: seconds after which retrying may succeed (sent as ``retry-after``)."""

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message, param=param, code=code)
        self.retry_after = retry_after


class ChildRunLimitReached(LimitReached):
    """``env.run_agent`` refused a child run: it would nest deeper than
    ``--max-child-depth`` (``param`` ``max_child_depth``) or exceed the root run's
    ``--max-descendants`` live child runs (``param`` ``max_descendants``). The message names
    the limit and its flag. Raised in the calling agent, which may catch it
    (``from agent_runtime.errors import ChildRunLimitReached``); uncaught, it fails the run
    with that message, and the parent's own ``run_agent`` call raises it again (see
    :mod:`agent_runtime.runs.children`)."""


class ServiceUnavailable(AgentRuntimeError):
    """The hub is shutting down, or a backend it needs is unreachable (HTTP 503)."""


class StorageUnavailable(ServiceUnavailable):
    """The store cannot be read or written (a full disk, a read-only or vanished data
    directory, an I/O error). The message names the cause and what to do (HTTP 503)."""

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message, param=param, code=code or "storage_unavailable")


class DataDirError(StorageUnavailable):
    """The data directory (``--data-dir``) or its database cannot be used: not a
    directory, not writable, not a database… Raised when the store opens, at start-up."""


class DataDirInUse(DataDirError):
    """Another process (or another hub of this one) holds the data directory's lock.

    ``path`` is the directory, ``pid`` the holder's process id (``None`` if unknown).
    """

    def __init__(self, path: str, pid: int | None) -> None:
        holder = f"pid {pid}" if pid is not None else "pid unknown"
        super().__init__(
            f"data directory {path} is in use by another agentstream process ({holder}); "
            "only one process may use a data directory at a time"
        )
        self.path = path
        self.pid = pid


class AgentLoadError(AgentRuntimeError):
    """An agent folder is missing a file or has an invalid ``metadata.json``.

    The message names the file and, for validation errors, the field.
    """


class ProviderError(AgentRuntimeError):
    """A model provider refused, failed, timed out or is not configured.

    ``upstream_status`` is the provider's HTTP status when it answered one (the hub
    answers with it; else 502).
    """

    def __init__(
        self,
        message: str,
        *,
        upstream_status: int | None = None,
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message, param=param, code=code)
        self.upstream_status = upstream_status


class UnsupportedOperation(AgentRuntimeError):
    """An Environment method that agentstream does not support; the message names it."""


class RunCancelled(AgentRuntimeError):
    """Raised inside a synchronous agent at its next Environment call after a cancel
    (HTTP 409 if it ever reaches a client: the run was cancelled)."""
