"""Helpers of the browser tests of the chat page (``test_ui_browser.py``).

* :data:`UNIT` — seconds; every wait is a small multiple of it (``AGENTSTREAM_TEST_UNIT``).
* :func:`write_ui_agents` — the test agents, written to a folder.
* :class:`CuttableProxy` — a loopback TCP proxy in front of the hub whose connections a
  test can cut (the server dropping a subscriber), and which can refuse the next stream
  requests with a ``503`` (so the browser's ``EventSource`` gives up and the page has to
  reopen the stream itself). It records the head of every request it forwards.
* :func:`count_run` — an independent subscriber: the whole run read with aiohttp.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import textwrap
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from agent_runtime.agents import bundled_examples_dir

from ..sse import Ev, parse_events

__all__ = [
    "CHROMIUM",
    "CHROMIUM_ARGS",
    "UNIT",
    "CuttableProxy",
    "RunCount",
    "count_run",
    "ms",
    "write_ui_agents",
]

UNIT = float(os.environ.get("AGENTSTREAM_TEST_UNIT", "1"))
"""Seconds; every timeout of the browser suite is a small multiple of it."""

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def ms(units: float) -> float:
    """``units`` test units in milliseconds (what playwright's timeouts take)."""
    return units * UNIT * 1000


# -- agents --------------------------------------------------------------------------------

DESCRIPTION_EXAMPLE = bundled_examples_dir() / "streaming-example" / "agent.py"
"""The description's full example (Socrates, then Plato): the bundled agent's code."""

_RAISER = """\
from nearai.agents.environment import Environment

class Agent:
    def __init__(self, env: Environment):
        self.env = env

    def run(self):
        prompt = {"role": "system", "content": "respond as though you were Socrates"}
        result = self.env.completion([prompt] + self.env.list_messages(), stream=True)
        self.env.add_reply(result)
        raise ValueError("the oracle is silent 42")

if globals().get('env', None):
    Agent(globals().get('env')).run()
"""


@dataclass(frozen=True)
class UIAgent:
    name: str
    display_name: str
    title: str
    description: str
    show_streaming_message: bool
    code: str | Path
    """The agent's source, or the file holding it."""


UI_AGENTS = (
    UIAgent(
        "ui-chat",
        "Socratic Streamer",
        "Ask the philosophers",
        "I answer as Socrates, then as Plato.",
        True,
        DESCRIPTION_EXAMPLE,
    ),
    UIAgent(
        "ui-quiet",
        "Quiet Thinker",
        "Thinking in private",
        "My drafts stay hidden; you see each answer when it is complete.",
        False,
        DESCRIPTION_EXAMPLE,
    ),
    UIAgent(
        "ui-raiser",
        "Silent Oracle",
        "An oracle that fails",
        "I start to answer, then fail.",
        True,
        _RAISER,
    ),
)


def write_ui_agents(root: Path) -> Path:
    """Write :data:`UI_AGENTS` under ``root`` (a folder of agent folders); return it."""
    for agent in UI_AGENTS:
        folder = root / agent.name
        folder.mkdir(parents=True)
        metadata = {
            "name": agent.name,
            "version": "0.0.1",
            "category": "agent",
            "description": f"{agent.display_name}, a test agent of the chat page.",
            "details": {
                "display_name": agent.display_name,
                "agent": {
                    "show_streaming_message": agent.show_streaming_message,
                    "welcome": {"title": agent.title, "description": agent.description},
                },
                "capabilities": [],
            },
            "show_entry": True,
        }
        (folder / "metadata.json").write_text(json.dumps(metadata, indent=2))
        code = agent.code.read_text() if isinstance(agent.code, Path) else agent.code
        (folder / "agent.py").write_text(textwrap.dedent(code))
    return root


# -- a proxy whose connections can be cut ----------------------------------------------------


class CuttableProxy:
    """``127.0.0.1:<port>`` → the hub, byte for byte. :meth:`cut` aborts every open
    connection at once (both sides), as a server dropping its subscribers would."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self.heads: list[str] = []
        """The head (request line and headers) of every request seen, in order."""
        self.refuse_streams = 0
        """Answer the next this-many stream requests ``503`` instead of forwarding them."""
        self.refused: list[str] = []
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> CuttableProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def stream_heads(self) -> list[str]:
        return [head for head in self.heads if "/stream/" in head.split("\r\n", 1)[0]]

    def cut(self) -> int:
        """Abort every open connection; the number of client connections cut."""
        writers = list(self._writers)
        for writer in writers:
            writer.transport.abort()
        return len(writers) // 2

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self.cut()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        upstream: asyncio.StreamWriter | None = None
        try:
            up_reader, upstream = await asyncio.open_connection("127.0.0.1", self.upstream_port)
            self._writers.add(upstream)
            await asyncio.gather(
                self._pipe(reader, upstream, inspect=writer),
                self._pipe(up_reader, writer, inspect=None),
            )
        except (OSError, asyncio.IncompleteReadError):
            pass
        finally:
            for w in (writer, upstream):
                if w is not None:
                    self._writers.discard(w)
                    w.close()
            self._tasks.discard(task)

    async def _pipe(
        self,
        src: asyncio.StreamReader,
        dst: asyncio.StreamWriter,
        inspect: asyncio.StreamWriter | None,
    ) -> None:
        try:
            while data := await src.read(65536):
                if inspect is not None and self._refused(data, inspect):
                    await inspect.drain()
                    break
                dst.write(data)
                await dst.drain()
        except OSError:
            pass
        finally:
            dst.close()  # flushes what is buffered; cut() aborts instead

    def _refused(self, data: bytes, client: asyncio.StreamWriter) -> bool:
        """Record request heads in ``data``; answer a refused stream request ourselves."""
        text = data.decode("latin-1")
        for start in _request_starts(text):
            head = text[start:].split("\r\n\r\n", 1)[0]
            self.heads.append(head)
            if self.refuse_streams > 0 and "/stream/" in head.split("\r\n", 1)[0]:
                self.refuse_streams -= 1
                self.refused.append(head)
                client.write(
                    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
                    b"Content-Length: 11\r\nConnection: close\r\n\r\nunavailable"
                )
                return True
        return False


def _request_starts(text: str) -> list[int]:
    """Offsets of request lines (``GET /… HTTP/1.1``) in a chunk a client sent."""
    starts = []
    for method in ("GET ", "POST ", "HEAD ", "DELETE ", "PUT "):
        at = text.find(method)
        while at != -1:
            if at == 0 or text[at - 2 : at] == "\r\n":
                starts.append(at)
            at = text.find(method, at + 1)
    return sorted(starts)


# -- an independent subscriber -------------------------------------------------------------


@dataclass
class RunCount:
    """What a plain subscriber saw of a whole run."""

    events: list[Ev]

    @property
    def complete(self) -> bool:
        """Every event from the first, none replaced by a gap and snapshot."""
        return [e.id for e in self.events] == list(range(1, len(self.events) + 1))

    @property
    def deltas(self) -> int:
        assert self.complete, "deltas are counted only on a run read from its first event"
        return sum(1 for e in self.events if e.name == "thread.message.delta")

    @property
    def texts(self) -> list[str]:
        """Each message's text, in order of creation, rebuilt as a client would (a
        snapshot's ``created`` restarts a message, its ``delta`` holds the text so far)."""
        texts: dict[str, str] = {}
        for event in self.events:
            if event.name == "thread.message.created":
                texts[event.message_id] = ""
            elif event.name == "thread.message.delta":
                texts[event.message_id] += event.text
            elif event.name == "thread.message.completed" and not texts[event.message_id]:
                texts[event.message_id] = event.text
        return list(texts.values())

    @property
    def terminal(self) -> Ev:
        return self.events[-1]


async def count_run(
    session: aiohttp.ClientSession, hub_url: str, thread_id: str, run_id: str
) -> RunCount:
    """Subscribe to the run's stream (no cursor) and read it to its end."""
    url = f"{hub_url}/v1/threads/{thread_id}/stream/{run_id}"
    async with session.get(url) as response:
        assert response.status == 200, await response.read()
        body = await response.read()
    return RunCount(parse_events(body))
