"""The thread/message/run store interface.

Every method is a coroutine so that a durable store can keep its I/O off the event loop.
Objects handed in are copied by the store or owned by it afterwards: callers update a run
or a message by passing the updated object to ``update_*``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, Protocol, TypeVar

from ..objects import Message, Run, RunStep, Thread

__all__ = ["Page", "Store", "every_page"]

Order = Literal["asc", "desc"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    """One page of a list, OpenAI-style cursor pagination."""

    data: list[T]
    has_more: bool


HasId = TypeVar("HasId", bound="_Identified")


class _Identified(Protocol):
    @property
    def id(self) -> str: ...


async def every_page(fetch: Callable[[str | None], Awaitable[Page[HasId]]]) -> list[HasId]:
    """Every item of a list, oldest first: ``fetch(after)`` gives the page after the item
    ``after`` (``None``: the first page), in ascending order."""
    out: list[HasId] = []
    after: str | None = None
    while True:
        page = await fetch(after)
        out.extend(page.data)
        if not page.has_more or not page.data:
            return out
        after = page.data[-1].id


class Store(Protocol):
    async def create_thread(self, thread: Thread, messages: Sequence[Message] = ()) -> None:
        """Create the thread with its first ``messages`` (of that thread, in order): one
        write (one transaction, one Redis script)."""
        ...

    async def get_thread(self, thread_id: str) -> Thread:
        """Raises ``NotFound``."""
        ...

    async def delete_thread(self, thread_id: str) -> None:
        """Deletes the thread with its messages, runs and run steps. Raises ``NotFound``."""
        ...

    async def add_message(self, message: Message) -> None: ...

    async def update_message(self, message: Message) -> None: ...

    async def get_message(self, thread_id: str, message_id: str) -> Message: ...

    async def list_messages(
        self,
        thread_id: str,
        *,
        order: Order = "desc",
        limit: int = 20,
        after: str | None = None,
        before: str | None = None,
        run_id: str | None = None,
    ) -> Page[Message]: ...

    async def create_run(
        self, run: Run, *, messages: Sequence[Message] = (), thread: Thread | None = None
    ) -> None:
        """Store a new run after its ``messages`` (added to its thread first, in order);
        with ``thread``, that new thread is created too, holding them. All or nothing, in
        one write (one transaction, one Redis script). Raises ``NotFound`` (no thread,
        when ``thread`` is not given)."""
        ...

    async def update_run(self, run: Run) -> None: ...

    async def get_run(self, thread_id: str, run_id: str) -> Run: ...

    async def list_runs(
        self,
        thread_id: str,
        *,
        order: Order = "desc",
        limit: int = 20,
        after: str | None = None,
        before: str | None = None,
    ) -> Page[Run]: ...

    async def save_run_log(self, thread_id: str, run_id: str, log: dict[str, Any]) -> None:
        """Store (replace) the run's event log: a JSON-serialisable dict holding its
        compacted events (:meth:`agent_runtime.run_log.RunLog.compact`) and the stream's
        head. Written as a checkpoint while the run streams (see
        :mod:`agent_runtime.checkpoints`) and once more when it ends. Raises ``NotFound``
        (thread)."""
        ...

    async def get_run_log(self, thread_id: str, run_id: str) -> dict[str, Any] | None:
        """The run's last stored event log, or ``None`` if none was stored."""
        ...

    async def put_step(self, step: RunStep) -> None:
        """Store a run step (when it is created, and again when it ends): a new step goes
        last in its run's list, a step stored again replaces the stored one in place.
        Raises ``NotFound`` (the thread, or its run, does not exist)."""
        ...

    async def get_step(self, thread_id: str, run_id: str, step_id: str) -> RunStep:
        """Raises ``NotFound`` (thread, run or step)."""
        ...

    async def list_steps(
        self,
        thread_id: str,
        run_id: str,
        *,
        order: Order = "desc",
        limit: int = 20,
        after: str | None = None,
        before: str | None = None,
    ) -> Page[RunStep]:
        """A run's steps in the order they were first stored. Raises ``NotFound`` (thread
        or run)."""
        ...

    async def mark_interrupted_runs(self, message: str) -> list[Run]:
        """At startup: every run still live (queued, in_progress, cancelling), i.e. live
        when a previous process died, becomes ``failed`` with ``failed_at`` now and
        ``last_error`` ``{"code": "server_error", "message": message}``, and so do its
        steps still ``in_progress``. Returns the runs."""
        ...

    async def count_unowned_threads(self) -> int:
        """How many threads have no owner (created while API keys were off)."""
        ...

    async def adopt_unowned_threads(self, owner: str) -> int:
        """Give every thread without an owner to ``owner`` (a key's digest); returns how
        many. Threads created meanwhile with an owner are left alone."""
        ...

    async def aclose(self) -> None: ...
