"""An in-memory store: dictionaries on the event loop, nothing survives the process.

Every operation completes before its first suspension (there is none), so operations
apply in the order they are called."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any, Protocol, TypeVar

import orjson

from ..errors import InvalidRequest, NotFound
from ..objects import Message, Run, RunStep, Thread
from .base import Order, Page

__all__ = ["MemoryStore", "paginate"]


class _HasId(Protocol):
    @property
    def id(self) -> str: ...


T = TypeVar("T", bound=_HasId)


def paginate(
    items: Sequence[T],
    *,
    order: Order,
    limit: int,
    after: str | None,
    before: str | None,
) -> Page[T]:
    """OpenAI-style pagination of ``items`` (given oldest first) by object id cursors."""
    ordered = list(items) if order == "asc" else list(reversed(items))
    ids = [item.id for item in ordered]
    start, stop = 0, len(ordered)
    if after is not None:
        if after not in ids:
            raise InvalidRequest(f"no object with id {after!r} in this list", param="after")
        start = ids.index(after) + 1
    if before is not None:
        if before not in ids:
            raise InvalidRequest(f"no object with id {before!r} in this list", param="before")
        stop = ids.index(before)
    window = ordered[start:stop]
    return Page(data=window[:limit], has_more=len(window) > limit)


class MemoryStore:
    """Keeps copies of what it is given, so callers' later mutations do not leak in."""

    def __init__(self) -> None:
        self._threads: dict[str, Thread] = {}
        self._messages: dict[str, dict[str, Message]] = {}
        self._runs: dict[str, dict[str, Run]] = {}
        self._logs: dict[str, dict[str, bytes]] = {}
        self._steps: dict[str, dict[str, dict[str, RunStep]]] = {}
        """Thread id → run id → step id → step, in insertion order."""

    def _thread_messages(self, thread_id: str) -> dict[str, Message]:
        try:
            return self._messages[thread_id]
        except KeyError:
            raise NotFound(f"No thread found with id '{thread_id}'.", param="thread_id") from None

    def _thread_runs(self, thread_id: str) -> dict[str, Run]:
        try:
            return self._runs[thread_id]
        except KeyError:
            raise NotFound(f"No thread found with id '{thread_id}'.", param="thread_id") from None

    async def create_thread(self, thread: Thread, messages: Sequence[Message] = ()) -> None:
        self._threads[thread.id] = copy.deepcopy(thread)
        self._messages[thread.id] = {m.id: copy.deepcopy(m) for m in messages}
        self._runs[thread.id] = {}
        self._logs[thread.id] = {}
        self._steps[thread.id] = {}

    async def get_thread(self, thread_id: str) -> Thread:
        try:
            return copy.deepcopy(self._threads[thread_id])
        except KeyError:
            raise NotFound(f"No thread found with id '{thread_id}'.", param="thread_id") from None

    async def delete_thread(self, thread_id: str) -> None:
        await self.get_thread(thread_id)
        del self._threads[thread_id]
        del self._messages[thread_id]
        del self._runs[thread_id]
        del self._logs[thread_id]
        del self._steps[thread_id]

    async def add_message(self, message: Message) -> None:
        messages = self._thread_messages(message.thread_id)
        messages[message.id] = copy.deepcopy(message)

    async def update_message(self, message: Message) -> None:
        messages = self._thread_messages(message.thread_id)
        if message.id not in messages:
            raise NotFound(f"No message found with id '{message.id}'.", param="message_id")
        messages[message.id] = copy.deepcopy(message)

    async def get_message(self, thread_id: str, message_id: str) -> Message:
        messages = self._thread_messages(thread_id)
        try:
            return copy.deepcopy(messages[message_id])
        except KeyError:
            raise NotFound(
                f"No message found with id '{message_id}'.", param="message_id"
            ) from None

    async def list_messages(
        self,
        thread_id: str,
        *,
        order: Order = "desc",
        limit: int = 20,
        after: str | None = None,
        before: str | None = None,
        run_id: str | None = None,
    ) -> Page[Message]:
        items = list(self._thread_messages(thread_id).values())
        if run_id is not None:
            items = [m for m in items if m.run_id == run_id]
        page = paginate(items, order=order, limit=limit, after=after, before=before)
        return Page([copy.deepcopy(m) for m in page.data], page.has_more)

    async def create_run(
        self, run: Run, *, messages: Sequence[Message] = (), thread: Thread | None = None
    ) -> None:
        if thread is not None:
            await self.create_thread(thread, messages)
        else:
            stored = self._thread_messages(run.thread_id)
            for message in messages:
                stored[message.id] = copy.deepcopy(message)
        self._thread_runs(run.thread_id)[run.id] = copy.deepcopy(run)

    async def update_run(self, run: Run) -> None:
        runs = self._thread_runs(run.thread_id)
        runs[run.id] = copy.deepcopy(run)

    async def get_run(self, thread_id: str, run_id: str) -> Run:
        runs = self._thread_runs(thread_id)
        try:
            return copy.deepcopy(runs[run_id])
        except KeyError:
            raise NotFound(f"No run found with id '{run_id}'.", param="run_id") from None

    async def list_runs(
        self,
        thread_id: str,
        *,
        order: Order = "desc",
        limit: int = 20,
        after: str | None = None,
        before: str | None = None,
    ) -> Page[Run]:
        items = list(self._thread_runs(thread_id).values())
        page = paginate(items, order=order, limit=limit, after=after, before=before)
        return Page([copy.deepcopy(r) for r in page.data], page.has_more)

    async def save_run_log(self, thread_id: str, run_id: str, log: dict[str, Any]) -> None:
        self._thread_runs(thread_id)
        self._logs[thread_id][run_id] = orjson.dumps(log)  # a copy, as for the objects

    async def get_run_log(self, thread_id: str, run_id: str) -> dict[str, Any] | None:
        self._thread_runs(thread_id)
        raw = self._logs[thread_id].get(run_id)
        return None if raw is None else dict(orjson.loads(raw))

    def _run_steps(self, thread_id: str, run_id: str) -> dict[str, RunStep]:
        if run_id not in self._thread_runs(thread_id):
            raise NotFound(f"No run found with id '{run_id}'.", param="run_id")
        return self._steps[thread_id].setdefault(run_id, {})

    async def put_step(self, step: RunStep) -> None:
        self._run_steps(step.thread_id, step.run_id)[step.id] = copy.deepcopy(step)

    async def get_step(self, thread_id: str, run_id: str, step_id: str) -> RunStep:
        try:
            return copy.deepcopy(self._run_steps(thread_id, run_id)[step_id])
        except KeyError:
            raise NotFound(f"No step found with id '{step_id}'.", param="step_id") from None

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
        items = list(self._run_steps(thread_id, run_id).values())
        page = paginate(items, order=order, limit=limit, after=after, before=before)
        return Page([copy.deepcopy(s) for s in page.data], page.has_more)

    async def mark_interrupted_runs(self, message: str) -> list[Run]:
        """Nothing survives a previous process, so no run was interrupted by its end."""
        return []

    async def count_unowned_threads(self) -> int:
        return sum(1 for thread in self._threads.values() if thread.owner is None)

    async def adopt_unowned_threads(self, owner: str) -> int:
        adopted = 0
        for thread in self._threads.values():
            if thread.owner is None:
                thread.owner = owner
                adopted += 1
        return adopted

    async def aclose(self) -> None:
        return None
