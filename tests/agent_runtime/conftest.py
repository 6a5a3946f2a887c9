"""Shared fixtures and helpers of the runtime's end-to-end tests.

* :data:`UNIT` — seconds; every wait is bounded by a small multiple of it. Raise
  ``AGENTSTREAM_TEST_UNIT`` (e.g. to ``3``) on a slow or loaded machine.
* ``start_hub`` — starts a real hub (:class:`agent_runtime.server.Server`) on a real
  socket with the given :class:`~agent_runtime.config.HubConfig` settings and returns a
  :class:`HubClient` over it; everything is stopped and closed at teardown.
* ``agents_dir`` — a folder of small test agents (see :data:`TEST_AGENTS`) beside the
  bundled examples.
* :func:`check_run` — the contract's "Events of one run", checked strictly;
  :class:`ClientState` — what a client rebuilds from any sequence (gap, snapshots, tails).
"""

from __future__ import annotations

import asyncio
import json
import os
import textwrap
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from multidict import CIMultiDictProxy

from agent_runtime import protocol
from agent_runtime.agents import bundled_examples_dir
from agent_runtime.api.keys import HUB
from agent_runtime.config import HubConfig
from agent_runtime.hub import Hub
from agent_runtime.protocol import TERMINAL_RUN_EVENTS
from agent_runtime.server import Server
from broker.redis_streams import RedisRegistry

from .sse import Ev, SSEReader, parse_events

UNIT = float(os.environ.get("AGENTSTREAM_TEST_UNIT", "1"))
"""Seconds; every timeout of the suite is a small multiple of it."""

FAST_MODEL = "simulated:tokens=20,rate=0"
"""As fast as possible: a run of the streaming example ends in a few milliseconds."""
PACED_MODEL = "simulated:tokens=40,rate=200"
"""0.2 s per message: a run is live long enough to join and resume it."""
SLOW_MODEL = "simulated:tokens=5000,rate=100"
"""Minutes per message: the run is live until the test ends it."""

QUESTION = "What is virtue?"
SOCRATES = {"role": "system", "content": "respond as though you were Socrates"}
PLATO = {"role": "system", "content": "Now, respond as though you were Plato"}

RUN_START = ("thread.run.created", "thread.run.queued", "thread.run.in_progress")
TERMINAL_EVENTS = TERMINAL_RUN_EVENTS
GAP = protocol.GAP


def within(units: float = 5) -> asyncio.Timeout:
    """``asyncio.timeout`` of ``units`` test units."""
    return asyncio.timeout(units * UNIT)


async def eventually(predicate: Callable[[], bool], *, units: float = 5, what: str = "") -> None:
    """Wait, bounded, for a condition nothing signals (a timer's effect, a thread's end):
    polled every few milliseconds."""
    try:
        async with within(units):
            while not predicate():  # noqa: ASYNC110 - nothing to await: no event exists
                await asyncio.sleep(0.005)
    except TimeoutError:
        raise AssertionError(f"not reached within {units * UNIT:.2f}s: {what}") from None


# -- test agents ---------------------------------------------------------------------------

_SYNC_HEAD = """\
import json
import time

from nearai.agents.environment import Environment
"""

TEST_AGENTS: dict[str, str] = {
    # Raises after a reply: the run fails with the exception's message, no traceback.
    "raiser": _SYNC_HEAD
    + """
class Agent:
    def __init__(self, env: Environment):
        self.env = env

    def run(self):
        self.env.add_reply("Let me think.")
        raise ValueError("the oracle is silent 42")

if globals().get('env', None):
    Agent(globals().get('env')).run()
""",
    "async-raiser": """
async def run(env):
    await env.aadd_reply("Let me think, asynchronously.")
    raise RuntimeError("async oracle is silent 7")
""",
    "asks-user": _SYNC_HEAD
    + """
if globals().get('env', None):
    env.add_reply("Which virtue do you mean?")
    env.request_user_input()
""",
    "marks-failed": _SYNC_HEAD
    + """
if globals().get('env', None):
    env.add_reply("I cannot answer that.")
    env.mark_failed("x")
""",
    # Never streams: polls the thread until cancelled (its next Environment call raises).
    "poller": _SYNC_HEAD
    + """
if globals().get('env', None):
    env.add_reply("polling")
    while True:
        env.list_messages()
        time.sleep(0.005)
""",
    # The description's "Agent Usage" loop, reporting what it saw as a second message.
    "nested-loop": _SYNC_HEAD
    + """
class Agent:
    def __init__(self, env: Environment):
        self.env = env

    def run(self):
        prompt = {"role": "system", "content": "respond as though you were Socrates"}
        messages = self.env.list_messages()
        response_stream = self.env.completion([prompt] + messages, stream=True)

        outer, inner, seen, dumps = 0, 0, [], []
        for event in response_stream:
            outer += 1
            seen.append(event)
            for _idx, chunk in enumerate(response_stream):
                c = json.dumps(chunk.model_dump())
                dumps.append(json.loads(c))
                inner += 1
                seen.append(chunk)
        self.env.add_reply(response_stream)

        report = {
            "outer": outer,
            "inner": inner,
            "distinct": len({id(chunk) for chunk in seen}),
            "provider_chunks": len(response_stream.chunks),
            "text": "".join(c.choices[0].delta.content or "" for c in seen if c.choices),
            "dumps": dumps,
        }
        self.env.add_reply(json.dumps(report))

if globals().get('env', None):
    Agent(globals().get('env')).run()
""",
    # Two streamed completions at once, both added afterwards.
    "two-streams": """
SOCRATES = {"role": "system", "content": "respond as though you were Socrates"}
PLATO = {"role": "system", "content": "Now, respond as though you were Plato"}

async def run(env):
    messages = await env.alist_messages()
    first = await env.acompletion([SOCRATES, *messages], stream=True)
    second = await env.acompletion([PLATO, *messages], stream=True)
    await env.aadd_reply(first)
    await env.aadd_reply(second)
""",
    "two-streams-sync": _SYNC_HEAD
    + """
SOCRATES = {"role": "system", "content": "respond as though you were Socrates"}
PLATO = {"role": "system", "content": "Now, respond as though you were Plato"}

if globals().get('env', None):
    messages = env.list_messages()
    first = env.completion([SOCRATES, *messages], stream=True)
    second = env.completion([PLATO, *messages], stream=True)
    env.add_reply(first)
    env.add_reply(second)
""",
    # Calls an Environment method agentstream does not provide.
    "unsupported": _SYNC_HEAD
    + """
if globals().get('env', None):
    env.exec_command("ls")
""",
    # Replies without streaming, including an empty reply.
    "plain-replies": """
async def run(env):
    await env.aadd_reply("First, plainly.")
    await env.aadd_reply("")
    text = await env.acompletion(await env.alist_messages())
    await env.aadd_reply(text)
""",
    # Awaits forever after one reply (for expiry of an asynchronous agent).
    "async-waiter": """
import asyncio

async def run(env):
    await env.aadd_reply("waiting")
    await asyncio.Event().wait()
""",
}


def write_agent(root: Path, name: str, source: str, **details: Any) -> Path:
    """Write ``root/name/agent.py`` and ``metadata.json``; the agent's folder."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "agent.py").write_text(textwrap.dedent(source))
    metadata = {
        "name": name,
        "version": "0.0.1",
        "category": "agent",
        "description": f"test agent {name}",
        "details": {"agent": {"show_streaming_message": True, **details}},
    }
    (folder / "metadata.json").write_text(json.dumps(metadata))
    return folder


@pytest.fixture
def agents_dir(tmp_path: Path) -> Path:
    """A folder holding every agent of :data:`TEST_AGENTS`."""
    root = tmp_path / "agents"
    for name, source in TEST_AGENTS.items():
        write_agent(root, name, source)
    return root


def with_examples(*paths: Path) -> tuple[Path, ...]:
    """The bundled examples plus ``paths``, for ``HubConfig(agents=...)``."""
    return (bundled_examples_dir(), *paths)


# -- the hub and an HTTP client over it ------------------------------------------------------


@dataclass
class Reply:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def events(self, framing: str = "default") -> list[Ev]:
        return parse_events(self.body, framing)


class HubClient:
    """A started hub and an aiohttp session on it."""

    def __init__(
        self, server: Server, session: aiohttp.ClientSession, watcher: Server | None = None
    ) -> None:
        self.server = server
        self.session = session
        self.watcher = watcher
        """On the Redis backend, the second node: it serves every stream request."""

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def stream_url(self) -> str:
        """Where stream requests go: the other node on Redis, else the hub itself."""
        return (self.watcher or self.server).url

    @property
    def hub(self) -> Hub:
        assert self.server.app is not None
        return self.server.app[HUB]

    async def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        data: bytes | str | None = None,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
    ) -> Reply:
        async with self.session.request(
            method, self.url + path, json=json_body, data=data, headers=headers, params=params
        ) as response:
            body = await response.read()
            return Reply(response.status, response.headers, body)

    async def dropped(self, run_id: str) -> None:
        """Wait until the hub has dropped the run's stream (its retention is over) and,
        on Redis, until Redis has expired it too."""
        await eventually(lambda: run_id not in self.hub.registry, what="the stream is dropped")
        registry = self.hub.registry
        if isinstance(registry, RedisRegistry):
            key = registry.redis_key(run_id)
            async with within(5):
                while await registry.client.exists(key):  # noqa: ASYNC110 - no event exists
                    await asyncio.sleep(0.005)  # a key's expiry: nothing to await

    async def create_thread(self, *texts: str) -> str:
        messages = [{"role": "user", "content": text} for text in texts]
        reply = await self.request("POST", "/v1/threads", json_body={"messages": messages})
        assert reply.status == 200, reply.body
        thread_id: str = reply.json()["id"]
        return thread_id

    async def create_run(self, thread_id: str, agent: str = "streaming-example") -> dict[str, Any]:
        reply = await self.request(
            "POST", f"/v1/threads/{thread_id}/runs", json_body={"assistant_id": agent}
        )
        assert reply.status == 200, reply.body
        run: dict[str, Any] = reply.json()
        return run

    async def start(
        self, agent: str = "streaming-example", text: str = QUESTION
    ) -> tuple[str, str]:
        """A new thread holding ``text`` and a run of ``agent`` on it: (thread id, run id)."""
        thread_id = await self.create_thread(text)
        run = await self.create_run(thread_id, agent)
        return thread_id, run["id"]

    @asynccontextmanager
    async def open_stream(
        self,
        thread_id: str,
        run_id: str,
        *,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
        prefix: str = "/v1",
        on_owner: bool = False,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """``on_owner``: ask the node running the run even on Redis (a subscriber that
        must be there from the first event)."""
        base = self.url if on_owner else self.stream_url
        url = f"{base}{prefix}/threads/{thread_id}/stream/{run_id}"
        async with self.session.get(url, headers=headers, params=params) as response:
            yield response

    @asynccontextmanager
    async def reader(
        self, thread_id: str, run_id: str, *, framing: str = "default", **kwargs: Any
    ) -> AsyncIterator[SSEReader]:
        """A live stream, read event by event; it must answer 200 with an event stream."""
        if framing != "default":
            kwargs["params"] = {**kwargs.get("params", {}), "format": framing}
        async with self.open_stream(thread_id, run_id, **kwargs) as response:
            assert response.status == 200, await response.read()
            assert response.headers["Content-Type"].startswith("text/event-stream")
            yield SSEReader(response, framing)

    async def stream(
        self,
        thread_id: str,
        run_id: str,
        *,
        units: float = 5,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
        prefix: str = "/v1",
    ) -> Reply:
        """The whole answer of ``GET …/stream/{run_id}`` (bounded by ``units``)."""
        async with within(units):
            async with self.open_stream(
                thread_id, run_id, headers=headers, params=params, prefix=prefix
            ) as response:
                body = await response.read()
                return Reply(response.status, response.headers, body)

    async def events(self, thread_id: str, run_id: str, **kwargs: Any) -> list[Ev]:
        framing = kwargs.get("params", {}).get("format", "default")
        reply = await self.stream(thread_id, run_id, **kwargs)
        assert reply.status == 200, reply.body
        return reply.events(framing)

    async def messages(self, thread_id: str) -> list[dict[str, Any]]:
        reply = await self.request(
            "GET", f"/v1/threads/{thread_id}/messages", params={"order": "asc", "limit": "100"}
        )
        assert reply.status == 200, reply.body
        data: list[dict[str, Any]] = reply.json()["data"]
        return data

    async def assistant_texts(self, thread_id: str) -> list[str]:
        return [text_of(m) for m in await self.messages(thread_id) if m["role"] == "assistant"]

    async def run(self, thread_id: str, run_id: str) -> dict[str, Any]:
        reply = await self.request("GET", f"/v1/threads/{thread_id}/runs/{run_id}")
        assert reply.status == 200, reply.body
        run: dict[str, Any] = reply.json()
        return run


def text_of(message: dict[str, Any]) -> str:
    """The text of a ``thread.message`` object."""
    return "".join(p["text"]["value"] for p in message["content"] if p["type"] == "text")


StartHub = Callable[..., Awaitable[HubClient]]


CONTRACT_MODULES = frozenset(
    {
        "test_e2e_agent_usage",
        "test_e2e_cancel",
        "test_e2e_concurrency",
        "test_e2e_errors",
        "test_e2e_failures",
        "test_e2e_flow",
        "test_e2e_openai_sdk",
        "test_e2e_resume",
        "test_clients_openai_sdk",
    }
)
"""The end-to-end contract suite: each of its tests runs on both backends."""

ISOLATED_MODULES = frozenset(
    {"test_e2e_cancel", "test_e2e_flow", "test_e2e_resume", "test_clients_openai_sdk"}
)
"""Contract modules whose tests also run with agents in worker processes
(``--isolation process``, one warm worker), on the memory backend."""


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "in_process_only(reason): a test of ISOLATED_MODULES that does not run with agents "
        "in worker processes (it looks inside the hub's process, or relies on its timing)",
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    module = metafunc.module.__name__.rsplit(".", 1)[-1]
    if module in CONTRACT_MODULES and "start_hub" in metafunc.fixturenames:
        params = [
            pytest.param("memory", "none", id="memory"),
            pytest.param("redis", "none", id="redis"),
        ]
        if module in ISOLATED_MODULES and not metafunc.definition.get_closest_marker(
            "in_process_only"
        ):
            params.append(pytest.param("memory", "process", id="memory-process"))
        metafunc.parametrize(("backend", "isolation"), params, indirect=True)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    """A client session for tests that drive ``agentstream serve`` processes (a fresh
    connection per request: a killed process leaves nothing to reuse)."""
    client = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(force_close=True),
        timeout=aiohttp.ClientTimeout(total=30 * UNIT),
    )
    try:
        yield client
    finally:
        await client.close()


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The hub's ``redis`` settings: ``{}`` in memory; on ``redis``, the test's Redis and
    its own prefix (then ``start_hub`` starts two nodes, see there)."""
    if getattr(request, "param", "memory") != "redis":
        return {}
    return {
        "url": request.getfixturevalue("redis_url"),
        "prefix": request.getfixturevalue("redis_prefix"),
    }


@pytest.fixture
def isolation(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The hub's ``isolation`` settings: ``{}`` (agents in the hub's process) unless the
    param is ``process`` (each run in a worker process; one worker kept ready)."""
    if getattr(request, "param", "none") != "process":
        return {}
    return {"mode": "process", "workers": 1}


@pytest.fixture
async def start_hub(backend: dict[str, Any], isolation: dict[str, Any]) -> AsyncIterator[StartHub]:
    """``await start_hub(model=..., **HubConfig settings)`` → a :class:`HubClient` on a
    fresh hub; ``model`` is forced on every completion (``None``: each run's own).

    Defaults: port 0, :data:`FAST_MODEL`, the bundled example agents. At teardown every
    session is closed and every hub shut down (live runs end, subscribers are released).

    On the Redis backend (the contract modules run on both) two nodes are started on one
    Redis: requests go to the first, which runs the runs, and stream requests to the
    second, which follows them through Redis. With the ``isolation`` fixture's process
    settings (:data:`ISOLATED_MODULES`) every hub runs its agents in worker processes.
    """
    started: list[HubClient] = []

    async def start(**settings: Any) -> HubClient:
        settings.setdefault("port", 0)
        settings["force_model"] = settings.pop("model", FAST_MODEL)
        settings.setdefault("shutdown_timeout", 2 * UNIT)
        if isolation:
            settings.setdefault("isolation", isolation)
        node = {"redis": {**backend, "node_id": "a"}} if backend else {}
        server = Server(HubConfig(**settings, **node))
        await server.start()
        watcher = None
        if backend:
            watcher = Server(HubConfig(**settings, redis={**backend, "node_id": "b"}))
            await watcher.start()
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(total=30 * UNIT),
        )
        client = HubClient(server, session, watcher)
        started.append(client)
        return client

    yield start
    for client in reversed(started):
        await client.session.close()
        await client.server.aclose()
        if client.watcher is not None:
            await client.watcher.aclose()


# -- the contract's event sequence -------------------------------------------------------------


@dataclass
class MessageTrace:
    id: str
    events: list[Ev] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [e.name for e in self.events]

    @property
    def deltas(self) -> list[Ev]:
        return [e for e in self.events if e.name == "thread.message.delta"]

    @property
    def delta_text(self) -> str:
        return "".join(e.text for e in self.deltas)

    @property
    def final(self) -> Ev:
        return self.events[-1]

    @property
    def text(self) -> str:
        """The text of its ``completed`` (or ``incomplete``) message object."""
        return self.final.text


@dataclass
class RunTrace:
    events: list[Ev]
    messages: list[MessageTrace]
    terminal: Ev

    @property
    def texts(self) -> list[str]:
        return [m.text for m in self.messages]

    @property
    def last_id(self) -> int:
        assert self.terminal.id is not None
        return self.terminal.id


def check_run(events: list[Ev], terminal: str | None = "thread.run.completed") -> RunTrace:
    """Check ``events`` (a whole run, from its first event) against the contract.

    Ids ``1..N`` strictly increasing by one; the run's created, queued, in_progress; per
    message created, in_progress (status in_progress, empty content), deltas naming it,
    then completed (whose text is the concatenated deltas) or incomplete; exactly one
    terminal event, last; every run event's status matches its name (``created`` carries
    ``queued``, as OpenAI's does).
    """
    assert events, "no events"
    assert [e.id for e in events] == list(range(1, len(events) + 1)), [e.id for e in events]
    names = [e.name for e in events]
    assert tuple(names[:3]) == RUN_START, names[:6]
    run_id = events[0].data["id"]
    terminals = [e for e in events if e.name in TERMINAL_EVENTS]
    assert len(terminals) == 1 and terminals[0] is events[-1], names
    if terminal is not None:
        assert events[-1].name == terminal, (names[-3:], events[-1].data.get("last_error"))
    messages: dict[str, MessageTrace] = {}
    for event in events:
        if event.name.startswith("thread.run."):
            assert event.data["object"] == "thread.run" and event.data["id"] == run_id
            status = event.name.removeprefix("thread.run.")
            assert event.data["status"] == ("queued" if status == "created" else status), event
            continue
        assert event.name.startswith("thread.message."), event
        message_id = event.message_id
        if event.name == "thread.message.created":
            assert message_id not in messages, f"{message_id} created twice"
            messages[message_id] = MessageTrace(message_id)
        assert message_id in messages, f"{event.name} before {message_id} was created"
        trace = messages[message_id]
        trace.events.append(event)
        if event.name in ("thread.message.created", "thread.message.in_progress"):
            assert event.data["status"] == "in_progress", event
            assert event.data["content"] == [], event
            assert event.data["run_id"] == run_id and event.data["object"] == "thread.message"
    for trace in messages.values():
        names_m = trace.names
        assert names_m[:2] == ["thread.message.created", "thread.message.in_progress"], names_m
        middle = names_m[2:-1]
        assert set(middle) <= {"thread.message.delta"}, names_m
        assert names_m[-1] in ("thread.message.completed", "thread.message.incomplete"), names_m
        assert all(d.text for d in trace.deltas), "a delta without text"
        final = trace.final
        if final.name == "thread.message.completed":
            assert final.data["status"] == "completed"
            assert trace.deltas or not final.text, f"{trace.id} completed without any delta"
            assert trace.delta_text == final.text, (trace.delta_text, final.text)
        else:
            assert final.data["status"] == "incomplete"
            assert trace.delta_text == final.text, (trace.delta_text, final.text)
    return RunTrace(events, list(messages.values()), events[-1])


class ClientState:
    """What a client rebuilds from what it receives, gap and snapshots included.

    Like the official SDK's event handler it refuses a delta (or an end) for a message it
    has not seen created. A ``created`` (re)starts the message's text; a ``completed``
    must agree with the deltas seen since, if any.
    """

    def __init__(self) -> None:
        self.run: dict[str, Any] | None = None
        self.terminal: str | None = None
        self.text: dict[str, str] = {}
        self.final: dict[str, str] = {}
        self.gaps: list[dict[str, Any]] = []
        self.last_id: int | None = None

    def apply(self, event: Ev) -> None:
        if event.id is not None:
            self.last_id = event.id
        name = event.name
        if name == GAP:
            self.gaps.append(event.data)
        elif name.startswith("thread.run."):
            assert self.terminal is None, f"{name} after {self.terminal}"
            self.run = event.data
            if name in TERMINAL_EVENTS:
                self.terminal = name
        elif name == "thread.message.created":
            self.text[event.message_id] = ""
        else:
            assert name.startswith("thread.message."), name
            assert event.message_id in self.text, f"{name} of a message never created"
            if name == "thread.message.delta":
                assert event.message_id not in self.final, "a delta after the message ended"
                self.text[event.message_id] += event.text
            elif name in ("thread.message.completed", "thread.message.incomplete"):
                seen = self.text[event.message_id]
                if seen:
                    assert seen == event.text, (seen, event.text)
                self.text[event.message_id] = self.final[event.message_id] = event.text

    def apply_all(self, events: Iterable[Ev]) -> ClientState:
        for event in events:
            self.apply(event)
        return self

    @property
    def texts(self) -> list[str]:
        return list(self.text.values())
