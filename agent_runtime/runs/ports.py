"""The run's ports: small interfaces for what a run needs and for what an agent sees.

A run talks to the rest of the hub only through these (and the
:class:`~agent_runtime.store.Store` protocol), so each side can be replaced: the cluster
by :class:`NoCluster` on a single node, the run's agent-facing side by a proxy in
another process.

* :class:`AgentPort` — what :class:`~agent_runtime.environment.Environment` calls: the
  run's identity, its completions, its thread, its events, its ending. Implemented by
  :class:`~agent_runtime.runs.agent_side.AgentSide`.
* :class:`RunHost` — what a run needs of the hub that runs it (its store, models and
  agents; starting and cancelling a child run). Implemented by
  :class:`~agent_runtime.runs.manager.RunManager`.
* :class:`Models` — resolving a model name to a provider (the
  :class:`~agent_runtime.models.router.ModelRouter`).
* :class:`ClusterPort` — claims of threads and runs across nodes, and cancels forwarded
  to the node that runs a run; :class:`NoCluster` is the single node's do-nothing one.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from openai.types.chat import ChatCompletion

from ..config import RunsConfig
from ..models.base import ModelProvider
from ..objects import Message, Run, RunStatus, Thread
from ..repairs import Repairs
from ..store import Store
from ..stream_handler import StreamHandler
from .agent_thread import AgentThreads

__all__ = [
    "AgentPort",
    "AgentRef",
    "AgentRunner",
    "ChildRunResult",
    "ClusterPort",
    "Models",
    "NoCluster",
    "RunHost",
]

C = TypeVar("C")


@dataclass(frozen=True, slots=True)
class ChildRunResult:
    """What ``env.run_agent`` returns: how the child run ended and what it replied."""

    thread_id: str
    run_id: str
    assistant_id: str
    status: str
    texts: list[str]
    """The texts of the assistant messages the child run added, in order."""
    error: str | None = None
    """The child's ``last_error`` message when it failed."""

    @property
    def text(self) -> str:
        """The child's replies joined by blank lines."""
        return "\n\n".join(self.texts)


class AgentPort(Protocol):
    """What an agent's :class:`~agent_runtime.environment.Environment` calls. Every
    coroutine runs on the hub's event loop (a synchronous agent's calls are handed to
    it); ``cancel_requested`` turns the next call into ``RunCancelled``."""

    @property
    def run(self) -> Run: ...

    @property
    def agent_name(self) -> str: ...

    @property
    def loop(self) -> asyncio.AbstractEventLoop: ...

    @property
    def loop_thread(self) -> int: ...

    @property
    def cancel_requested(self) -> bool: ...

    def track_thread_future(self, future: concurrent.futures.Future[Any]) -> None: ...

    def untrack_thread_future(self, future: concurrent.futures.Future[Any]) -> None: ...

    async def complete(
        self, messages: list[dict[str, Any]] | str, model: str | None, kwargs: dict[str, Any]
    ) -> ChatCompletion: ...

    async def start_stream(
        self, messages: list[dict[str, Any]] | str, model: str | None, kwargs: dict[str, Any]
    ) -> StreamHandler: ...

    async def reply_from_stream(self, handler: StreamHandler) -> Message | None:
        """The completion's message, stored; ``None`` if it had no text (no message)."""
        ...

    async def reply_text(self, text: str) -> Message: ...

    async def add_message(self, role: str, content: str) -> Message: ...

    async def messages(self) -> list[Message]: ...

    async def progress(self, text: str) -> int: ...

    async def emit(self, name: str, data: Any) -> int: ...

    async def run_child(self, agent_name: str, query: str, *, relay: bool) -> ChildRunResult: ...

    def agent_log(self, line: str, level: int) -> None: ...

    def set_outcome(self, status: RunStatus, message: str | None = None) -> None: ...


class AgentRunner(Protocol):
    """Where a run's agent executes: in the hub's process
    (:class:`~agent_runtime.runs.lifecycle.InProcess`) or in a worker process
    (:class:`~agent_runtime.isolation.host.ProcessRunner`). ``run_agent`` returns or
    raises as the agent did; cancelling it stops the agent."""

    async def run_agent(self, ctx: Any) -> None: ...


class AgentRef(Protocol):
    """An agent, as a run needs to know it."""

    @property
    def id(self) -> str: ...

    @property
    def name(self) -> str: ...


class Catalog(Protocol):
    def get(self, assistant_id: str) -> AgentRef: ...


class Models(Protocol):
    """Which provider serves a completion, and which model a run uses."""

    def resolve(
        self, model: str | None, provider: str | None = None
    ) -> tuple[ModelProvider, str]: ...

    def model_for_run(self, requested: str | None, agent_default: str | None) -> str: ...


class RunHost(Protocol[C]):
    """What a run needs of the hub running it (``C``: the run's own context type)."""

    @property
    def store(self) -> Store: ...

    @property
    def models(self) -> Models: ...

    @property
    def catalog(self) -> Catalog: ...

    @property
    def config(self) -> RunsConfig: ...

    @property
    def repairs(self) -> Repairs: ...

    @property
    def runner(self) -> AgentRunner: ...

    @property
    def agent_threads(self) -> AgentThreads:
        """Where synchronous agents' threads are tracked (orphans are reported)."""
        ...

    def slot(self) -> AbstractAsyncContextManager[Any]: ...

    async def thread_messages(self, thread_id: str) -> list[Message]: ...

    async def create(
        self,
        thread_id: str,
        assistant_id: str,
        *,
        model: str | None = None,
        instructions: str | None = None,
        additional_messages: Sequence[tuple[str, str]] = (),
        metadata: dict[str, str] | None = None,
        parent: C | None = None,
        thread: Thread | None = None,
        thread_messages: Sequence[Message] = (),
    ) -> C:
        """Start a run (a child run of ``parent``; on ``thread``, a new thread created
        with the run, holding ``thread_messages``)."""
        ...

    def cancel_now(self, ctx: C) -> None:
        """Cancel a live run without awaiting."""
        ...


class ClusterPort(Protocol):
    """Runs across the nodes of a cluster (see :mod:`agent_runtime.cluster`)."""

    async def create_run(
        self, store: Store, run: Run, *, messages: Sequence[Message], thread: Thread | None
    ) -> str | None:
        """Store the new run as :meth:`Store.create_run` does, recording it as live on
        this node and claiming its thread: ``None``, or the id of the live run that holds
        the thread already (then nothing is stored). Raises ``NotFound`` (no thread)."""
        ...

    def release_soon(self, thread_id: str, run_id: str) -> None:
        """Forget an ended run (its claim too), in the background."""
        ...

    async def cancel_remote(self, thread_id: str, run_id: str) -> Run | None:
        """Cancel a run live on another node: the run as its owner answered, or
        ``None`` if no node runs it."""
        ...


class NoCluster:
    """One node alone: every claim succeeds, nothing to release or forward."""

    async def create_run(
        self, store: Store, run: Run, *, messages: Sequence[Message], thread: Thread | None
    ) -> str | None:
        await store.create_run(run, messages=messages, thread=thread)
        return None

    def release_soon(self, thread_id: str, run_id: str) -> None:
        return None

    async def cancel_remote(self, thread_id: str, run_id: str) -> Run | None:
        return None
