"""Faults, each injected for real, end runs cleanly with the right terminal event, and the
stream always ends; bad input is refused without changing anything.

Providers: a stub OpenAI-compatible server on loopback (:mod:`.provider_stub`) reached by
the hub through the ``local`` provider (``AGENTSTREAM_LOCAL_BASE_URL``), by agents whose
metadata defaults name ``model_provider: local``. It refuses connections (a closed port),
answers 429 and 500, cuts its stream mid-way, or stalls (before answering or mid-stream;
also cancelled while stalling). Agents: ones that raise (an ordinary exception, one whose
``str()`` fails, ``sys.exit()``/``SystemExit``/``KeyboardInterrupt``, the last two against
a ``serve`` process), a synchronous one stuck in a loop of Environment calls, an
asynchronous one; cancels and ``expires_at``. Subscribers: some vanish mid-stream (RST
and FIN) while others read on. Bad input over HTTP changes nothing.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agent_runtime.models.openai_compat import DEFAULT_MAX_RETRIES, OpenAICompatProvider

from ..conftest import (
    SLOW_MODEL,
    UNIT,
    HubClient,
    Reply,
    StartHub,
    check_run,
    eventually,
    text_of,
    with_examples,
    within,
    write_agent,
)
from ..provider_stub import CUT_TEXT, STUB_TEXT, ProviderStub, ServeProcess, closed_port_url
from ..sse import Ev, parse_events

# -- agents ------------------------------------------------------------------------------

LOCAL_DEFAULTS = {"model_provider": "local", "model": "ok"}

LOCAL_SYNC = """\
from nearai.agents.environment import Environment

class Agent:
    def __init__(self, env: Environment):
        self.env = env

    def run(self):
        prompt = {"role": "system", "content": "respond as though you were Socrates"}
        result = self.env.completion([prompt] + self.env.list_messages(), stream=True)
        self.env.add_reply(result)

if globals().get('env', None):
    Agent(globals().get('env')).run()
"""

LOCAL_ASYNC = """\
async def run(env):
    handler = await env.acompletion(await env.alist_messages(), stream=True)
    async for _chunk in handler:
        pass
    await env.aadd_reply(handler)
"""

# Streams a completion it never reads, and loops on Environment calls meanwhile.
SYNC_LOOPER = """\
import time

if globals().get('env', None):
    env.completion(env.list_messages(), stream=True)
    while True:
        env.list_messages()
        time.sleep(0.002)
"""

RAISER = """\
if globals().get('env', None):
    env.add_reply("Let me think.")
    raise KeyError("no oracle at the crossroads 99")
"""

ASYNC_RAISER = """\
async def run(env):
    handler = await env.acompletion(await env.alist_messages(), stream=True)
    await env.aadd_reply(handler)
    raise ZeroDivisionError("the muses divided by zero 13")
"""


@pytest.fixture
def fault_agents(tmp_path: Path) -> Path:
    root = tmp_path / "fault-agents"
    write_agent(root, "local-sync", LOCAL_SYNC, defaults=LOCAL_DEFAULTS)
    write_agent(root, "local-async", LOCAL_ASYNC, defaults=LOCAL_DEFAULTS)
    write_agent(root, "sync-looper", SYNC_LOOPER)
    write_agent(root, "raiser", RAISER)
    write_agent(root, "async-raiser", ASYNC_RAISER)
    return root


@pytest.fixture
async def stub() -> AsyncIterator[ProviderStub]:
    server = ProviderStub()
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def local_hub(
    start_hub: StartHub,
    monkeypatch: pytest.MonkeyPatch,
    agents: Path,
    base_url: str,
    **settings: Any,
) -> HubClient:
    """A hub whose ``local`` provider lives at ``base_url``; no model is forced."""
    monkeypatch.setenv("AGENTSTREAM_LOCAL_BASE_URL", base_url)
    monkeypatch.delenv("LOCAL_API_KEY", raising=False)
    settings.setdefault("model", None)
    return await start_hub(agents=with_examples(agents), **settings)


async def start_run(hub: HubClient, agent: str, model: str | None = None) -> tuple[str, str]:
    thread_id = await hub.create_thread("What is virtue?")
    body: dict[str, Any] = {"assistant_id": agent}
    if model is not None:
        body["model"] = model
    reply = await hub.request("POST", f"/v1/threads/{thread_id}/runs", json_body=body)
    assert reply.status == 200, reply.body
    run_id: str = reply.json()["id"]
    return thread_id, run_id


def assert_clean_error(message: str) -> None:
    assert "Traceback" not in message and 'File "' not in message, message
    assert "\n" not in message.strip(), message


# -- providers -------------------------------------------------------------------------------


@pytest.mark.parametrize("agent", ["local-sync", "local-async"])
async def test_stub_provider_through_the_local_provider_completes(
    start_hub: StartHub,
    monkeypatch: pytest.MonkeyPatch,
    fault_agents: Path,
    stub: ProviderStub,
    agent: str,
) -> None:
    """The baseline the faults below depart from: the agent's defaults route to the stub."""
    hub = await local_hub(start_hub, monkeypatch, fault_agents, stub.url)
    thread_id, run_id = await start_run(hub, agent)

    trace = check_run(await hub.events(thread_id, run_id, units=3))

    assert trace.texts == [STUB_TEXT]
    assert stub.behaviours == ["ok"]
    assert stub.requests[0]["stream"] is True
    assert await hub.assistant_texts(thread_id) == [STUB_TEXT]


@pytest.mark.parametrize("agent", ["local-sync", "local-async"])
@pytest.mark.parametrize(
    ("fault", "words"),
    [
        ("refused", ["could not be reached", "ConnectError"]),
        ("rate-limited", ["answered 429", "stub: rate limit reached for requests"]),
        ("broken", ["answered 500", "stub: the upstream GPU caught fire"]),
    ],
)
async def test_provider_failure_fails_the_run_saying_what_happened(
    start_hub: StartHub,
    monkeypatch: pytest.MonkeyPatch,
    fault_agents: Path,
    stub: ProviderStub,
    agent: str,
    fault: str,
    words: list[str],
) -> None:
    base_url = closed_port_url() if fault == "refused" else stub.url
    hub = await local_hub(start_hub, monkeypatch, fault_agents, base_url)
    if fault == "refused":
        words = [*words, base_url]
    thread_id, run_id = await start_run(hub, agent, model=None if fault == "refused" else fault)

    started = time.monotonic()
    events = await hub.events(thread_id, run_id, units=4)  # the stream ends, bounded
    lasted = time.monotonic() - started

    trace = check_run(events, "thread.run.failed")
    error = trace.terminal.data["last_error"]
    message = error["message"]
    assert message.startswith("model provider error: model provider 'local'"), message
    for word in words:
        assert word in message, (word, message)
    assert_clean_error(message)
    (streamed,) = trace.messages  # the completion's message was announced, then abandoned
    assert streamed.final.name == "thread.message.incomplete"
    assert streamed.final.data["incomplete_details"] == {"reason": "run_failed"}
    assert streamed.delta_text == ""
    run = await hub.run(thread_id, run_id)
    assert run["status"] == "failed" and run["last_error"] == error
    assert run["failed_at"] is not None
    stored = await hub.messages(thread_id)
    assert [m["role"] for m in stored] == ["user"]  # nothing half-written
    if fault != "refused":
        assert stub.count(fault) == 1 + DEFAULT_MAX_RETRIES  # retried, but few times
    assert lasted < 3 * UNIT


@pytest.mark.parametrize("agent", ["local-sync", "local-async"])
async def test_provider_cutting_its_stream_midway_keeps_the_partial_text(
    start_hub: StartHub,
    monkeypatch: pytest.MonkeyPatch,
    fault_agents: Path,
    stub: ProviderStub,
    agent: str,
) -> None:
    hub = await local_hub(start_hub, monkeypatch, fault_agents, stub.url)
    thread_id, run_id = await start_run(hub, agent, model="cut")

    events = await hub.events(thread_id, run_id, units=3)

    trace = check_run(events, "thread.run.failed")
    message = trace.terminal.data["last_error"]["message"]
    assert "model provider 'local' broke off the stream" in message, message
    assert_clean_error(message)
    (streamed,) = trace.messages
    assert streamed.delta_text == CUT_TEXT  # every chunk that arrived was published
    assert streamed.final.name == "thread.message.incomplete"
    assert streamed.final.data["status"] == "incomplete"
    assert streamed.final.data["incomplete_details"] == {"reason": "run_failed"}
    assert streamed.final.text == CUT_TEXT
    stored = await hub.messages(thread_id)
    assert [(m["role"], m["status"]) for m in stored] == [
        ("user", "completed"),
        ("assistant", "incomplete"),
    ]
    assert stored[1]["id"] == streamed.id and text_of(stored[1]) == CUT_TEXT
    assert stored[1]["incomplete_details"] == {"reason": "run_failed"}
    assert stub.behaviours == ["cut"]  # a broken stream is not retried (text was shown)


def short_timeout_provider(hub: HubClient, url: str, name: str, timeout: float) -> Any:
    """The real ``local`` OpenAICompatProvider with a short timeout, registered on the
    running hub as the model ``name`` (no HubConfig setting reaches the provider timeout:
    ModelRouter takes ``timeout`` but Hub never passes one, so it is always 120 s)."""
    provider = OpenAICompatProvider(
        "local",
        env={"AGENTSTREAM_LOCAL_BASE_URL": url},
        timeout=timeout,
        max_retries=DEFAULT_MAX_RETRIES,
    )
    hub.hub.models.register(name, provider)
    return provider


@pytest.mark.parametrize("where", ["stall", "stall-after"])
async def test_stalled_provider_fails_the_run_within_its_timeout(
    start_hub: StartHub,
    monkeypatch: pytest.MonkeyPatch,
    fault_agents: Path,
    stub: ProviderStub,
    where: str,
) -> None:
    """Stalling before answering, or after some chunks (the partial text is kept)."""
    timeout = 0.5 * UNIT
    hub = await local_hub(start_hub, monkeypatch, fault_agents, stub.url)
    provider = short_timeout_provider(hub, stub.url, where, timeout)
    try:
        thread_id, run_id = await start_run(hub, "local-sync", model=where)
        started = time.monotonic()
        events = await hub.events(thread_id, run_id, units=6)
        lasted = time.monotonic() - started
    finally:
        await provider.aclose()

    trace = check_run(events, "thread.run.failed")
    message = trace.terminal.data["last_error"]["message"]
    assert f"model provider 'local' timed out (no answer within {timeout:g}s)" in message
    assert_clean_error(message)
    attempts = 1 + DEFAULT_MAX_RETRIES if where == "stall" else 1  # no retry mid-stream
    assert stub.count(where) == attempts
    assert attempts * timeout <= lasted < attempts * timeout + 2 * UNIT
    async with within(2):
        await stub.abandoned.wait()  # the hub's client hung up on the stalled request
    (streamed,) = trace.messages
    partial = CUT_TEXT if where == "stall-after" else ""
    assert streamed.delta_text == streamed.final.text == partial
    stored = [m for m in await hub.messages(thread_id) if m["role"] == "assistant"]
    assert [text_of(m) for m in stored] == ([partial] if partial else [])


@pytest.mark.parametrize("where", ["stall", "stall-after"])
async def test_cancel_while_the_provider_stalls_ends_cancelled_promptly(
    start_hub: StartHub,
    monkeypatch: pytest.MonkeyPatch,
    fault_agents: Path,
    stub: ProviderStub,
    where: str,
) -> None:
    hub = await local_hub(start_hub, monkeypatch, fault_agents, stub.url)
    provider = short_timeout_provider(hub, stub.url, where, 60.0)
    try:
        thread_id, run_id = await start_run(hub, "local-async", model=where)
        async with hub.reader(thread_id, run_id) as reader:
            wanted = "thread.message.delta" if where == "stall-after" else "thread.message.created"
            async with within(2):
                await reader.until(lambda e: e.name == wanted)
            await eventually(lambda: stub.count(where) == 1, units=2, what="the request")
            started = time.monotonic()
            reply = await hub.request("POST", f"/v1/threads/{thread_id}/runs/{run_id}/cancel")
            assert reply.status == 200, reply.body
            async with within(5):
                await reader.rest()
            lasted = time.monotonic() - started
        async with within(5):
            await stub.abandoned.wait()  # the provider's connection was closed
    finally:
        await provider.aclose()

    # Well before the provider's 60 s timeout (a loaded machine took 1.3 s).
    assert lasted < 5 * UNIT
    trace = check_run(reader.events, "thread.run.cancelled")
    (streamed,) = trace.messages
    assert streamed.final.data["incomplete_details"] == {"reason": "run_cancelled"}
    assert streamed.delta_text == (CUT_TEXT if where == "stall-after" else "")


# -- agents, cancels, expiry ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("agent", "words"),
    [
        ("raiser", "KeyError: 'no oracle at the crossroads 99'"),
        ("async-raiser", "ZeroDivisionError: the muses divided by zero 13"),
    ],
)
async def test_agent_raising_fails_the_run_with_the_exception_message(
    start_hub: StartHub, fault_agents: Path, agent: str, words: str
) -> None:
    hub = await start_hub(agents=with_examples(fault_agents))
    thread_id, run_id = await start_run(hub, agent)

    trace = check_run(await hub.events(thread_id, run_id, units=3), "thread.run.failed")

    message = trace.terminal.data["last_error"]["message"]
    assert message == words
    assert_clean_error(message)
    assert [m.final.name for m in trace.messages] == ["thread.message.completed"]
    assert await hub.assistant_texts(thread_id) == trace.texts  # the reply before is kept


UNPRINTABLE = """\
class Unprintable(Exception):
    def __str__(self):
        raise RuntimeError("no words for it")
"""
UNPRINTABLE_AGENTS = {
    "sync-unprintable": UNPRINTABLE
    + """
if globals().get('env', None):
    env.add_reply("Hmm.")
    raise Unprintable()
""",
    "async-unprintable": UNPRINTABLE
    + """
async def run(env):
    await env.aadd_reply("Hmm.")
    raise Unprintable()
""",
}


@pytest.mark.parametrize("agent", sorted(UNPRINTABLE_AGENTS))
async def test_agent_raising_an_exception_that_cannot_be_printed_still_fails_the_run(
    tmp_path: Path, agent: str
) -> None:
    """Runtime bug: ``RunContext.execute`` (agent_runtime/runs/lifecycle.py) describes the agent's
    exception with ``_describe(exc)``, i.e. ``str(exc)``, inside its ``except`` clause; when
    ``__str__`` itself raises, that error escapes ``execute`` before ``_finish`` runs: no
    terminal event is published, the stream never ends (subscribers wait forever), and
    the run stays ``in_progress`` in the store while the hub counts no live run.

    Driven against a ``serve`` process: run in the test process, this failure made
    pytest's own report crash (INTERNALERROR, ``SystemError: AST constructor recursion
    depth mismatch`` under CPython 3.11.7), ending the whole session."""
    root = tmp_path / "agents"
    write_agent(root, agent, UNPRINTABLE_AGENTS[agent])
    serve = ServeProcess(
        "--store", "memory", "--model", "simulated:tokens=5,rate=0", "--agents", str(root)
    )
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10 * UNIT))
    try:
        url = await serve.start()
        async with session.post(f"{url}/v1/threads/runs", json={"assistant_id": agent}) as r:
            assert r.status == 200, await r.text()
            run = await r.json()
        run_url = f"{url}/v1/threads/{run['thread_id']}/runs/{run['id']}"
        try:
            async with within(2):
                async with session.get(
                    f"{url}/v1/threads/{run['thread_id']}/stream/{run['id']}"
                ) as response:
                    events = parse_events(await response.read())
        except TimeoutError:
            async with session.get(run_url) as r:
                status = (await r.json())["status"]
            async with session.get(f"{url}/healthz") as r:
                live = (await r.json())["live_runs"]
            raise AssertionError(
                f"the stream never ended; the run is {status!r}, the hub counts {live} live "
                f"runs; the hub's log ends:\n{serve.output[-1200:]}"
            ) from None
        trace = check_run(events, "thread.run.failed")
        assert "Unprintable" in trace.terminal.data["last_error"]["message"]
        async with session.get(run_url) as r:
            assert (await r.json())["status"] == "failed"
    finally:
        await session.close()
        await serve.aclose()


# Agents that end their own interpreter's way: sys.exit(), SystemExit, KeyboardInterrupt.
EXITING_AGENTS = {
    "sync-exit": """\
import sys

if globals().get('env', None):
    env.add_reply("Farewell.")
    sys.exit(3)
""",
    "async-exit": """\
async def run(env):
    await env.aadd_reply("Farewell.")
    raise SystemExit(4)
""",
    "sync-interrupt": """\
if globals().get('env', None):
    env.add_reply("Farewell.")
    raise KeyboardInterrupt
""",
}


@pytest.mark.parametrize("agent", sorted(EXITING_AGENTS))
async def test_agent_exiting_fails_its_run_and_the_hub_lives_on(tmp_path: Path, agent: str) -> None:
    """An agent is code from elsewhere: ``sys.exit(3)`` at the end of an agent script, or
    a ``KeyboardInterrupt``, must end that run, not the hub.

    Runtime bug: ``RunContext.execute`` (agent_runtime/runs/lifecycle.py) catches ``Exception``, and
    SystemExit/KeyboardInterrupt are not Exceptions: from a sync agent's thread
    ``_in_daemon_thread`` hands the BaseException to the loop (``done.set_exception``),
    an async agent raises it in the run's task; either way asyncio re-raises it out of the
    event loop and ``agentstream serve`` exits (with the agent's status), taking every
    run and subscriber with it."""
    root = tmp_path / "agents"
    write_agent(root, agent, EXITING_AGENTS[agent])
    serve = ServeProcess(
        "--store", "memory", "--model", "simulated:tokens=5,rate=0", "--agents", str(root)
    )
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10 * UNIT))
    try:
        url = await serve.start()
        async with session.post(f"{url}/v1/threads/runs", json={"assistant_id": agent}) as r:
            assert r.status == 200, await r.text()
            run = await r.json()
        try:
            async with session.get(
                f"{url}/v1/threads/{run['thread_id']}/stream/{run['id']}"
            ) as response:
                events = parse_events(await response.read())
        except aiohttp.ClientError as exc:
            await asyncio.sleep(0.2)  # let the process finish dying, for the message
            raise AssertionError(
                f"the stream broke ({exc!r}); the hub process "
                + (
                    f"exited with status {serve.returncode}"
                    if serve.returncode is not None
                    else "is alive"
                )
                + f"; its log ends:\n{serve.output[-1500:]}"
            ) from None

        trace = check_run(events, "thread.run.failed")
        message = trace.terminal.data["last_error"]["message"]
        assert message and "Traceback" not in message, message
        assert trace.texts == ["Farewell."]
        async with session.get(f"{url}/healthz") as r:
            assert r.status == 200  # the hub lives on
        assert serve.returncode is None
    finally:
        await session.close()
        await serve.aclose()


@pytest.mark.parametrize("agent", ["sync-looper", "async-example"])
async def test_cancel_mid_stream_ends_cancelled_promptly(
    start_hub: StartHub, fault_agents: Path, agent: str
) -> None:
    hub = await start_hub(agents=with_examples(fault_agents), model=SLOW_MODEL)
    thread_id, run_id = await start_run(hub, agent)
    async with hub.reader(thread_id, run_id) as reader:
        async with within(3):
            for _ in range(3):
                await reader.until(lambda e: e.name == "thread.message.delta")
        started = time.monotonic()
        reply = await hub.request("POST", f"/v1/threads/{thread_id}/runs/{run_id}/cancel")
        assert reply.status == 200 and reply.json()["status"] == "cancelling", reply.body
        async with within(5):
            await reader.rest()
        lasted = time.monotonic() - started

    # Well before the model's 50 s of tokens end (a loaded machine may take over a second).
    assert lasted < 5 * UNIT
    trace = check_run(reader.events, "thread.run.cancelled")
    (streamed,) = trace.messages
    assert streamed.final.data["incomplete_details"] == {"reason": "run_cancelled"}
    assert (await hub.run(thread_id, run_id))["status"] == "cancelled"
    if agent == "sync-looper":
        await eventually(
            lambda: not agent_thread_alive(run_id), units=1, what="the looping agent's thread"
        )


async def test_sync_agent_looping_past_expires_at_ends_expired(
    start_hub: StartHub, fault_agents: Path
) -> None:
    expires_after = 0.5 * UNIT
    hub = await start_hub(
        agents=with_examples(fault_agents), model=SLOW_MODEL, runs={"expires_after": expires_after}
    )
    thread_id, run_id = await start_run(hub, "sync-looper")

    started = time.monotonic()
    trace = check_run(await hub.events(thread_id, run_id, units=3), "thread.run.expired")
    lasted = time.monotonic() - started

    assert lasted < expires_after + UNIT
    (streamed,) = trace.messages
    assert streamed.final.data["incomplete_details"] == {"reason": "run_expired"}
    run = await hub.run(thread_id, run_id)
    assert run["status"] == "expired" and trace.terminal.data == run
    await eventually(lambda: not agent_thread_alive(run_id), units=1, what="the agent's thread")


def agent_thread_alive(run_id: str) -> bool:
    return any(t.name == f"agent {run_id}" and t.is_alive() for t in threading.enumerate())


# -- subscribers vanishing -----------------------------------------------------------------


async def raw_subscribe(hub: HubClient, thread_id: str, run_id: str) -> tuple[Any, Any, bytes]:
    """A subscriber on a raw socket: sends the request, reads until the first delta."""
    host, port = hub.server.config.host, hub.server.port
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(
        f"GET /v1/threads/{thread_id}/stream/{run_id} HTTP/1.1\r\n"
        f"Host: {host}:{port}\r\nAccept: text/event-stream\r\n\r\n".encode()
    )
    await writer.drain()
    received = b""
    while b"thread.message.delta" not in received:
        data = await reader.read(65536)
        assert data, received
        received += data
    assert received.startswith(b"HTTP/1.1 200"), received[:200]
    return reader, writer, received


def abort_with_rst(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def test_subscribers_vanishing_mid_stream_leave_the_others_and_nothing_behind(
    start_hub: StartHub,
) -> None:
    hub = await start_hub(model=None)
    registry = hub.hub.registry
    thread_id = await hub.create_thread("What is virtue?")
    # A first run, read to its end, so that whatever lives as long as the hub exists and
    # the session's one keep-alive connection is open: the baseline.
    first = await start_run(hub, "streaming-example", model="simulated:tokens=5,rate=0")
    check_run(await hub.events(*first))
    await hub.messages(thread_id)
    tasks_before = len(asyncio.all_tasks())

    reply = await hub.request(
        "POST",
        f"/v1/threads/{thread_id}/runs",
        json_body={"assistant_id": "streaming-example", "model": "simulated:tokens=150,rate=300"},
    )  # ~0.5 s per message
    run_id = reply.json()["id"]
    readers = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True))
    try:

        async def read_whole() -> list[Ev]:
            url = f"{hub.url}/v1/threads/{thread_id}/stream/{run_id}"
            async with readers.get(url) as response:
                assert response.status == 200
                return parse_events(await response.read())

        async with within(5):
            staying = [asyncio.create_task(read_whole()) for _ in range(5)]
            vanishing = [await raw_subscribe(hub, thread_id, run_id) for _ in range(6)]
            await eventually(
                lambda: registry.subscriber_count == 11, units=2, what="11 subscribers"
            )
            for index, (_reader, writer, _received) in enumerate(vanishing):
                if index % 2:
                    abort_with_rst(writer)  # the peer resets the connection
                else:
                    writer.close()  # the peer closes its side (FIN) and goes away
                    await writer.wait_closed()
            await eventually(
                lambda: registry.subscriber_count == 5, units=1, what="the 6 vanished released"
            )
            traces = [check_run(await task) for task in staying]
    finally:
        await readers.close()

    texts = [
        text_of(m)
        for m in await hub.messages(thread_id)
        if m["role"] == "assistant" and m["run_id"] == run_id
    ]
    assert len(texts) == 2 and all(texts)
    for trace in traces:
        assert trace.texts == texts  # every staying subscriber got the exact full text
        assert trace.events == traces[0].events
    await eventually(lambda: registry.subscriber_count == 0, units=1, what="no subscriber")
    assert hub.hub.runs.live_count == 0
    await eventually(
        lambda: len(asyncio.all_tasks()) <= tasks_before,
        units=2,
        what=f"tasks back to {tasks_before} (now {len(asyncio.all_tasks())}: "
        f"{sorted(t.get_name() for t in asyncio.all_tasks())})",
    )


# -- bad input -------------------------------------------------------------------------------

MISSING_THREAD = "thread_" + "0" * 24
MISSING_RUN = "run_" + "0" * 24
BODY_LIMIT = 2048


def check_error(reply: Reply, status: int, param: str | None = None) -> dict[str, Any]:
    assert reply.status == status, (status, reply.status, reply.body[:300])
    assert reply.headers["Content-Type"].startswith("application/json"), reply.headers
    assert reply.headers.get("x-should-retry") == "false", reply.headers
    error: dict[str, Any] = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"]
    if param is not None:
        assert error["param"] == param, (param, error)
    return error


async def state_of(hub: HubClient, *thread_ids: str) -> list[Any]:
    """Everything a client can read of the threads: thread, messages, runs."""
    out: list[Any] = [len(hub.hub.store._threads)]  # type: ignore[attr-defined]  # MemoryStore
    for thread_id in thread_ids:
        for path in ("", "/messages?limit=100", "/runs?limit=100"):
            reply = await hub.request("GET", f"/v1/threads/{thread_id}{path}")
            assert reply.status == 200, reply.body
            out.append(reply.json())
    return out


async def test_bad_input_is_refused_and_changes_nothing(start_hub: StartHub) -> None:
    hub = await start_hub(model=None, max_body_bytes=BODY_LIMIT)
    fast = {"assistant_id": "streaming-example", "model": "simulated:tokens=5,rate=0"}
    done_thread = await hub.create_thread("What is justice?")
    done = await hub.request("POST", f"/v1/threads/{done_thread}/runs", json_body=fast)
    done_run = done.json()["id"]
    last = check_run(await hub.events(done_thread, done_run)).last_id
    live_thread = await hub.create_thread("What is virtue?")
    live = await hub.request(
        "POST",
        f"/v1/threads/{live_thread}/runs",
        json_body={"assistant_id": "async-example", "model": SLOW_MODEL},
    )
    live_run = live.json()["id"]
    before = await state_of(hub, done_thread, live_thread)

    json_headers = {"Content-Type": "application/json"}
    big = "x" * (BODY_LIMIT + 100)
    done_path = f"/v1/threads/{done_thread}"
    cases: list[tuple[str, str, Any, int, str | None]] = [
        # malformed JSON
        ("POST", "/v1/threads", b'{"messages": [', 400, None),
        ("POST", f"{done_path}/messages", b"{'role': 'user'}", 400, None),
        ("POST", f"{done_path}/runs", b'["streaming-example"]', 400, None),
        ("POST", "/v1/threads/runs", b"\xff\xfe{}", 400, None),
        # wrong types
        ("POST", "/v1/threads", {"messages": "hello"}, 400, "messages"),
        ("POST", "/v1/threads", {"metadata": {"k": 1}}, 400, "metadata.k"),
        ("POST", "/v1/threads", {"messages": [{"role": "user"}]}, 400, "messages[0].content"),
        ("POST", f"{done_path}/messages", {"role": "user", "content": 5}, 400, None),
        ("POST", f"{done_path}/messages", {"role": "system", "content": "x"}, 400, "role"),
        (
            "POST",
            f"{done_path}/messages",
            {"role": "user", "content": [{"type": "image_url", "image_url": {}}]},
            400,
            "content",
        ),
        ("POST", f"{done_path}/runs", {"assistant_id": 5}, 400, "assistant_id"),
        ("POST", f"{done_path}/runs", {"assistant_id": ""}, 400, "assistant_id"),
        ("POST", f"{done_path}/runs", {**fast, "stream": [1]}, 400, "stream"),
        ("POST", f"{done_path}/runs", {**fast, "temperature": "hot"}, 400, "temperature"),
        (
            "POST",
            f"{done_path}/runs",
            {**fast, "additional_messages": [{"role": "user", "content": "x", "x": 1}]},
            400,
            "additional_messages[0].x",
        ),
        # unknown fields
        ("POST", "/v1/threads", {"mesages": []}, 400, "mesages"),
        ("POST", f"{done_path}/messages", {"role": "user", "content": "x", "z": 1}, 400, "z"),
        ("POST", f"{done_path}/runs", {**fast, "bogus": True}, 400, "bogus"),
        ("POST", "/v1/threads/runs", {**fast, "threads": {}}, 400, "threads"),
        # query strings
        ("GET", f"{done_path}/messages?limit=abc", None, 400, "limit"),
        ("GET", f"{done_path}/messages?limit=0", None, 400, "limit"),
        ("GET", f"{done_path}/messages?limit=101", None, 400, "limit"),
        ("GET", f"{done_path}/messages?order=sideways", None, 400, "order"),
        ("GET", f"{done_path}/messages?after=msg_nope", None, 400, "after"),
        ("GET", f"{done_path}/runs?limit=-1", None, 400, "limit"),
        ("GET", f"{done_path}/runs?before=run_nope", None, 400, "before"),
        # unknown thread, run, agent
        ("GET", f"/v1/threads/{MISSING_THREAD}", None, 404, "thread_id"),
        ("DELETE", f"/v1/threads/{MISSING_THREAD}", None, 404, "thread_id"),
        ("GET", f"/v1/threads/{MISSING_THREAD}/messages", None, 404, "thread_id"),
        (
            "POST",
            f"/v1/threads/{MISSING_THREAD}/messages",
            {"role": "user", "content": "x"},
            404,
            "thread_id",
        ),
        ("POST", f"/v1/threads/{MISSING_THREAD}/runs", fast, 404, "thread_id"),
        ("GET", f"{done_path}/runs/{MISSING_RUN}", None, 404, "run_id"),
        ("POST", f"{done_path}/runs/{MISSING_RUN}/cancel", None, 404, "run_id"),
        ("GET", f"{done_path}/stream/{MISSING_RUN}", None, 404, None),
        ("GET", f"/v1/threads/{live_thread}/stream/{done_run}", None, 404, None),
        ("POST", f"{done_path}/runs", {"assistant_id": "nobody"}, 404, "assistant_id"),
        ("POST", "/v1/threads/runs", {"assistant_id": "nobody"}, 404, "assistant_id"),
        # bad cursors and formats
        ("GET", f"{done_path}/stream/{done_run}?last_event_id=abc", None, 400, "last_event_id"),
        ("GET", f"{done_path}/stream/{done_run}?last_event_id={last + 1}", None, 400, None),
        ("GET", f"{done_path}/stream/{done_run}?format=xml", None, 400, "format"),
        ("GET", f"/v1/threads/{live_thread}/stream/{live_run}?last_event_id=-3", None, 400, None),
        ("GET", f"/v1/threads/{live_thread}/stream/{live_run}?last_event_id=9999", None, 400, None),
        # cancelling a finished run
        ("POST", f"{done_path}/runs/{done_run}/cancel", None, 400, "run_id"),
        # over max_body_bytes: valid JSON, too big
        (
            "POST",
            "/v1/threads",
            {"messages": [{"role": "user", "content": big}]},
            413,
            "max_body_bytes",
        ),
        ("POST", f"{done_path}/messages", {"role": "user", "content": big}, 413, "max_body_bytes"),
        ("POST", f"{done_path}/runs", {**fast, "instructions": big}, 413, "max_body_bytes"),
        ("POST", "/v1/threads/runs", {**fast, "instructions": big}, 413, "max_body_bytes"),
        (
            "POST",
            "/v1/chat/completions",
            {"model": "simulated", "messages": big},
            413,
            "max_body_bytes",
        ),
        (
            "POST",
            f"{done_path}/messages",
            {"role": "user", "content": big * 400},
            413,
            "max_body_bytes",
        ),
        # a second run on a thread with a live run, deleting that thread
        ("POST", f"/v1/threads/{live_thread}/runs", fast, 409, "thread_id"),
        ("POST", f"/v1/threads/{live_thread}/runs", {**fast, "stream": True}, 409, "thread_id"),
        ("DELETE", f"/v1/threads/{live_thread}", None, 409, "thread_id"),
    ]
    for method, path, body, status, param in cases:
        if isinstance(body, bytes):
            reply = await hub.request(method, path, data=body, headers=json_headers)
        else:
            reply = await hub.request(method, path, json_body=body)
        try:
            check_error(reply, status, param)
        except AssertionError as exc:
            raise AssertionError(f"{method} {path} {str(body)[:80]}: {exc}") from None

    # the same, with a header cursor; and an oversized body sent chunked, of unknown length
    reply = await hub.stream(done_thread, done_run, headers={"Last-Event-ID": "1.5"})
    check_error(reply, 400, "Last-Event-ID")

    async def chunked_body() -> AsyncIterator[bytes]:
        yield b'{"messages": [{"role": "user", "content": "'
        for _ in range(8):
            yield b"y" * 1024
        yield b'"}]}'

    async with hub.session.post(
        f"{hub.url}/v1/threads", data=chunked_body(), headers=json_headers
    ) as response:
        reply = Reply(response.status, response.headers, await response.read())
    check_error(reply, 413, "max_body_bytes")

    assert await state_of(hub, done_thread, live_thread) == before  # nothing changed
    assert hub.hub.runs.live(live_run) is not None  # and the live run lives on
    assert (await hub.run(live_thread, live_run))["status"] == "in_progress"
    cancel = await hub.request("POST", f"/v1/threads/{live_thread}/runs/{live_run}/cancel")
    assert cancel.status == 200
    check_run(await hub.events(live_thread, live_run, units=2), "thread.run.cancelled")
