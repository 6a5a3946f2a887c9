"""Exceptions of the agent runtime. Every one derives from :class:`AgentRuntimeError`.

Errors that reach HTTP clients carry an OpenAI-style ``type``, ``param`` and ``status``
so the API layer can turn them into ``{"error": {...}}`` bodies without guessing.
"""

from __future__ import annotations


class AgentRuntimeError(Exception):
    """Base class of every error the runtime raises."""

    status: int = 500
    type: str = "server_error"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code


class InvalidRequest(AgentRuntimeError):
    """The request is malformed or names something invalid (HTTP 400)."""

    status = 400
    type = "invalid_request_error"


class NotFound(AgentRuntimeError):
    """An unknown thread, message, run or agent (HTTP 404)."""

    status = 404
    type = "not_found_error"


class Conflict(AgentRuntimeError):
    """The request conflicts with the current state, e.g. a second live run (HTTP 409)."""

    status = 409
    type = "conflict_error"


class PayloadTooLarge(AgentRuntimeError):
    status = 413
    type = "invalid_request_error"


class LimitReached(AgentRuntimeError):
    """A configured limit refused the request; the message says which and how to raise it.

    ``retry_after``: seconds after which retrying may succeed (sent as ``retry-after``)."""

    status = 429
    type = "rate_limit_error"

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


class ServiceUnavailable(AgentRuntimeError):
    """The hub is shutting down, or a backend it needs is unreachable (HTTP 503)."""

    status = 503
    type = "server_error"


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

    status = 400
    type = "invalid_request_error"


class ProviderError(AgentRuntimeError):
    """A model provider refused, failed, timed out or is not configured.

    ``status`` is the provider's HTTP status when it answered one (else 502).
    """

    status = 502
    type = "provider_error"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message, param=param, code=code)
        if status is not None:
            self.status = status


class UnsupportedOperation(AgentRuntimeError):
    """An Environment method that agentstream does not support; the message names it."""

    status = 400
    type = "invalid_request_error"


class RunCancelled(AgentRuntimeError):
    """Raised inside a synchronous agent at its next Environment call after a cancel."""
