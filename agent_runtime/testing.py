"""Run an agentstream hub inside a test process.

::

    from agent_runtime.testing import EmbeddedHub, ScriptedModel, Say, Fail

    async def test_reply() -> None:
        async with EmbeddedHub(model=ScriptedModel([Say("Hello"), Say(" world")])) as hub:
            result = await hub.run("streaming-example", "hi")
            assert result.status == "completed"
            assert result.texts == ["Hello world", "Hello world"]

:class:`EmbeddedHub` starts a real hub (the same :class:`~agent_runtime.server.Server` as
``agentstream serve``) on ``127.0.0.1`` and a free port: ``hub.url`` serves the whole HTTP
API, ``hub.client()`` is an ``openai.AsyncOpenAI`` pointed at it, and :meth:`EmbeddedHub.run` /
:meth:`EmbeddedHub.start_run` / :meth:`EmbeddedHub.events` drive runs in-process, exactly as an SSE
subscriber sees them.

Agents: folders (``str`` or ``Path``), :class:`InlineAgent` objects, or ``str`` holding
``agent.py`` source (any ``str`` with a line break is source). Inline agents are written to
a temporary folder removed when the hub stops. Default: the bundled examples.

Models: ``model`` forces every completion of the hub onto one model, a name (default
:data:`FAST_MODEL`, the simulated model as fast as possible) or a provider object such as
a :class:`~agent_runtime.models.scripted.ScriptedModel`; ``model=None`` forces nothing
(agents' own models and runs' ``model`` fields apply). ``models`` adds named providers.

Concurrency: a hub belongs to the event loop that started it; use it from that loop only
(pytest-asyncio gives each test its loop, and the fixtures start hubs on it). Leaving the
``async with`` ends live runs (they finish ``failed``: the hub shut down), disconnects
subscribers and closes the clients made by :meth:`EmbeddedHub.client`. Cancelling an ``await
hub.run(...)`` stops waiting; the run goes on until it ends or the hub stops.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .api.keys import HUB
from .config import HubConfig
from .hub import Hub as CoreHub
from .models.base import ModelProvider
from .models.scripted import Fail, Finish, Gate, Say, ScriptedModel, Stall, Step, ToolCall
from .objects import Message, Thread, new_id, now
from .protocol import delta_text
from .server import Server

if TYPE_CHECKING:
    import openai

__all__ = [
    "FAST_MODEL",
    "EmbeddedHub",
    "Fail",
    "Finish",
    "Gate",
    "Hub",
    "InlineAgent",
    "RunEvent",
    "RunHandle",
    "RunResult",
    "Say",
    "ScriptedModel",
    "Stall",
    "Step",
    "ToolCall",
]

FAST_MODEL = "simulated:tokens=20,rate=0"
"""The embedded hub's default model: the simulated one, 20 tokens, as fast as possible."""


@dataclass(frozen=True)
class InlineAgent:
    """An agent given as source: ``agent.py``'s text and ``metadata.json``'s fields."""

    source: str
    name: str | None = None
    """Default: ``inline-1``, ``inline-2``… in the order given."""
    metadata: Mapping[str, Any] = field(default_factory=dict)
    """Extra ``metadata.json`` fields (``details``, ``version``…)."""


@dataclass(frozen=True, slots=True)
class RunEvent:
    """One event of a run's stream: its id (``None`` inside a gap's snapshot), name, data."""

    id: int | None
    name: str
    data: dict[str, Any]

    @property
    def text(self) -> str:
        """A delta's text, or a message object's text ('' for anything else)."""
        if self.name == "thread.message.delta":
            return delta_text(self.data)
        parts = self.data.get("content") if self.data.get("object") == "thread.message" else None
        return "".join(p["text"]["value"] for p in parts or () if p.get("type") == "text")


@dataclass(frozen=True, slots=True)
class RunHandle:
    """A started run: its ids. ``await hub.wait(handle)`` for its :class:`RunResult`."""

    run_id: str
    thread_id: str


@dataclass(frozen=True)
class RunResult:
    """A finished run, as the hub stored it and as its stream delivered it."""

    run_id: str
    thread_id: str
    status: str
    """``completed``, ``failed``, ``cancelled``, ``expired``, ``requires_action``…"""
    last_error: str | None
    messages: list[dict[str, Any]]
    """The run's assistant messages in the thread (``thread.message`` objects), in order;
    a message cut short by a failure is there with ``status`` ``incomplete``."""
    events: list[RunEvent]
    """Every event of the run's stream, in order."""

    @property
    def texts(self) -> list[str]:
        """The text of each of :attr:`messages`."""
        return [_message_text(m) for m in self.messages]

    @property
    def deltas(self) -> list[str]:
        """The text of each ``thread.message.delta``, in order."""
        return [e.text for e in self.events if e.name == "thread.message.delta"]

    @property
    def names(self) -> list[str]:
        """The name of each event, in order."""
        return [e.name for e in self.events]


def _message_text(message: Mapping[str, Any]) -> str:
    parts = message.get("content") or []
    return "".join(p["text"]["value"] for p in parts if p.get("type") == "text")


def _run_id(run: str | RunHandle | RunResult) -> str:
    return run if isinstance(run, str) else run.run_id


class EmbeddedHub:
    """A hub on a real socket inside this process (see the module docstring).

    ``async with EmbeddedHub(agents, model=..., models=..., **settings) as hub``;
    ``settings`` are further :class:`~agent_runtime.config.HubConfig` fields, sections as
    mappings: ``runs={"expires_after": 5}``, ``broker={"max_events_per_stream": 100}``…
    """

    def __init__(
        self,
        agents: Iterable[str | os.PathLike[str] | InlineAgent] | None = None,
        *,
        model: str | ModelProvider | None = FAST_MODEL,
        models: Mapping[str, ModelProvider] | None = None,
        **settings: Any,
    ) -> None:
        self._agents = None if agents is None else list(agents)
        self._providers: dict[str, ModelProvider] = dict(models or {})
        if model is None or isinstance(model, str):
            self.model_name = model
        else:
            self.model_name = str(getattr(model, "name", "") or "embedded")
            self._providers[self.model_name] = model
        self._settings = settings
        self._tmp: Path | None = None
        self._server: Server | None = None
        self._clients: list[openai.AsyncOpenAI] = []
        self.config: HubConfig | None = None

    # -- lifecycle -------------------------------------------------------------------

    async def start(self) -> EmbeddedHub:
        """Load the agents and start serving (on the running loop)."""
        if self._server is not None:
            raise RuntimeError("this hub is already started")
        settings: dict[str, Any] = {"port": 0, "shutdown_timeout": 5.0, **self._settings}
        try:
            paths = self._agent_paths()
            self.config = HubConfig(agents=tuple(paths), force_model=self.model_name, **settings)
            server = Server(self.config, providers=self._providers)
            await server.start()
        except BaseException:
            self._cleanup_files()
            raise
        self._server = server
        return self

    async def aclose(self) -> None:
        """Stop: live runs end, subscribers are released, clients closed. Idempotent."""
        clients, self._clients = self._clients, []
        for client in clients:
            await client.close()
        server, self._server = self._server, None
        try:
            if server is not None:
                await server.aclose()
        finally:
            self._cleanup_files()

    async def __aenter__(self) -> EmbeddedHub:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def _agent_paths(self) -> list[Path]:
        if self._agents is None:
            return []
        paths: list[Path] = []
        inline = 0
        for item in self._agents:
            if isinstance(item, str) and "\n" in item:
                item = InlineAgent(item)
            if isinstance(item, InlineAgent):
                inline += 1
                paths.append(self._write_inline(item, f"inline-{inline}"))
            else:
                paths.append(Path(item))
        return paths

    def _write_inline(self, agent: InlineAgent, default_name: str) -> Path:
        if self._tmp is None:
            self._tmp = Path(tempfile.mkdtemp(prefix="agentstream-agents-"))
        name = agent.name or default_name
        folder = self._tmp / name
        folder.mkdir()
        (folder / "agent.py").write_text(agent.source)
        metadata = {"name": name, "version": "0.0.1", **agent.metadata}
        (folder / "metadata.json").write_text(json.dumps(metadata))
        return folder

    def _cleanup_files(self) -> None:
        tmp, self._tmp = self._tmp, None
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)

    # -- access ----------------------------------------------------------------------

    @property
    def server(self) -> Server:
        if self._server is None:
            raise RuntimeError("the hub is not started: use 'async with EmbeddedHub(...) as hub'")
        return self._server

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``; the API is under ``/v1`` (and ``/api/v1``)."""
        return self.server.url

    @property
    def core(self) -> CoreHub:
        """The :class:`agent_runtime.hub.Hub` behind the server (runs, store, registry)."""
        app = self.server.app
        assert app is not None
        return app[HUB]

    @property
    def agents(self) -> list[str]:
        """The names of the agents the hub runs."""
        return sorted({agent.name for agent in self.core.catalog.list()})

    def client(self, **kwargs: Any) -> openai.AsyncOpenAI:
        """An ``openai.AsyncOpenAI`` for this hub (no retries), closed when the hub stops."""
        import openai

        options: dict[str, Any] = {
            "base_url": self.url + "/v1",
            "api_key": "agentstream",
            "max_retries": 0,
        }
        client = openai.AsyncOpenAI(**{**options, **kwargs})
        self._clients.append(client)
        return client

    # -- runs ------------------------------------------------------------------------

    async def start_run(
        self,
        agent: str,
        message: str | Sequence[Mapping[str, str]] | None = "hello",
        *,
        thread: str | None = None,
        model: str | None = None,
    ) -> RunHandle:
        """Start ``agent`` on a new thread (or ``thread``) after adding ``message`` (a user
        message's text, or ``{"role", "content"}`` dicts; ``None`` adds nothing).

        Returns once the run exists; its first events are published. ``model`` is the run's
        ``model`` field (a hub with a forced model ignores it).
        """
        core = self.core
        if thread is None:
            thread = new_id("thread")
            await core.store.create_thread(Thread(id=thread, created_at=now()))
        items: Sequence[Mapping[str, str]]
        if message is None:
            items = ()
        elif isinstance(message, str):
            items = ({"role": "user", "content": message},)
        else:
            items = message
        for item in items:
            stamp = now()
            await core.store.add_message(
                Message(
                    id=new_id("msg"),
                    thread_id=thread,
                    role="assistant" if item.get("role") == "assistant" else "user",
                    content=item["content"],
                    created_at=stamp,
                    completed_at=stamp,
                )
            )
        ctx = await core.runs.create(thread, agent, model=model)
        return RunHandle(ctx.run.id, thread)

    async def events(
        self, run: str | RunHandle | RunResult, *, after: int | None = None
    ) -> AsyncIterator[RunEvent]:
        """The run's events from the first (or after event id ``after``) to its end.

        In-process and exact: the same order, ids, gap and snapshot as an SSE subscriber
        gets. Works while the stream is live or retained (``retention`` seconds after the
        run ended); raises ``LookupError`` after that. Breaking out of the loop is fine.
        """
        run_id = _run_id(run)
        stream = self.core.registry.get(run_id)
        if stream is None:
            raise LookupError(f"no stream for run {run_id!r} (unknown, or no longer retained)")
        async for event in stream.follow(after):
            yield RunEvent(event.id, event.name, event.payload())

    async def wait(self, run: str | RunHandle, *, timeout: float | None = 30.0) -> RunResult:
        """Wait (at most ``timeout`` seconds: ``TimeoutError``) for the run to end."""
        run_id = _run_id(run)
        async with asyncio.timeout(timeout):
            events = [event async for event in self.events(run_id)]
        return await self._result(run_id, events)

    async def run(
        self,
        agent: str,
        message: str | Sequence[Mapping[str, str]] | None = "hello",
        *,
        thread: str | None = None,
        model: str | None = None,
        timeout: float | None = 30.0,
    ) -> RunResult:
        """Start a run (as :meth:`start_run`) and wait for its end (as :meth:`wait`)."""
        handle = await self.start_run(agent, message, thread=thread, model=model)
        return await self.wait(handle, timeout=timeout)

    async def cancel(self, run: str | RunHandle) -> None:
        """Ask a live run to stop (it ends ``cancelled``)."""
        run_id = _run_id(run)
        ctx = self.core.runs.live(run_id)
        if ctx is None:
            raise LookupError(f"run {run_id!r} is not live")
        await self.core.runs.cancel(ctx.run.thread_id, run_id)

    async def _result(self, run_id: str, events: list[RunEvent]) -> RunResult:
        terminal = events[-1].data if events else {}
        thread_id = str(terminal.get("thread_id", ""))
        messages = await self.core.runs.thread_messages(thread_id)
        mine = [m.to_dict() for m in messages if m.run_id == run_id and m.role == "assistant"]
        error = terminal.get("last_error") or None
        return RunResult(
            run_id=run_id,
            thread_id=thread_id,
            status=str(terminal.get("status", "unknown")),
            last_error=None if error is None else str(error.get("message", "")),
            messages=mine,
            events=events,
        )


Hub = EmbeddedHub
"""The name this harness had first (``from agent_runtime.testing import Hub``), kept so
existing tests go on working; new code says :class:`EmbeddedHub`, which does not clash
with :class:`agent_runtime.hub.Hub`."""
