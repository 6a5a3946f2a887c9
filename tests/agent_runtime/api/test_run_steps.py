"""Run steps stored with their run, over a real socket: ``GET …/runs/{run_id}/steps`` and
``GET …/runs/{run_id}/steps/{step_id}`` answer the step objects the stream carried (each
as of its latest event), on every store; a live run's open step is listed
``in_progress``; a run rebuilt from the store after its stream's retention shows its
steps; the official ``openai`` SDK parses the answers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from openai.types.beta.threads.runs import FunctionToolCall, ToolCallsStepDetails

from agent_runtime.config import HubConfig
from agent_runtime.errors import ServiceUnavailable
from agent_runtime.models.scripted import Gate, Say, ScriptedModel
from agent_runtime.models.scripted import ToolCall as ScriptedToolCall
from agent_runtime.objects import RunStep
from agent_runtime.server import Server

from ..clients_helpers import ASSISTANTS_DEPRECATED, async_sdk
from ..conftest import GAP, UNIT, HubClient, StartHub, with_examples, within, write_agent
from ..sse import Ev
from ..steps_helpers import STEP_FINAL, TOOLS, StepsClientState, check_steps_run

AGENTS: dict[str, str] = {
    # One streamed completion that must call the tool, then a text reply.
    "tool-user": f"""
async def run(env):
    messages = await env.alist_messages()
    handler = await env.acompletions(messages, stream=True, tools={TOOLS!r},
                                     tool_choice="required")
    async for _chunk in handler:
        pass
    await env.aadd_reply("called " + handler.tool_calls[0].function.name)
""",
    # Two completions with tool calls, a child run between them, then a reply.
    "many-steps": f"""
async def run(env):
    for turn in range(2):
        handler = await env.acompletions("turn " + str(turn), stream=True, tools={TOOLS!r},
                                         tool_choice="required")
        async for _chunk in handler:
            pass
        if turn == 0:
            await env.arun_agent("replier", "hello child")
    await env.aadd_reply("done")
""",
    "replier": """
async def run(env):
    await env.aadd_reply("hello parent")
""",
    # A completion offered tools, never added (held by the scripted model's gate).
    "scripted-tools": """
async def run(env):
    handler = await env.acompletion("go", stream=True, tools=[{"type": "function",
        "function": {"name": "a"}}])
    await env.aadd_reply(handler)
""",
}

TOOL_MODEL = "simulated:tokens=12,rate=0"

STORES = pytest.mark.parametrize("backend", ["memory", "sqlite", "redis"], indirect=True)
"""The hub on each store (``redis``: two nodes, see ``start_hub``)."""


@pytest.fixture
def agents(tmp_path: Path) -> tuple[Path, ...]:
    root = tmp_path / "step-agents"
    for name, source in AGENTS.items():
        write_agent(root, name, source)
    return with_examples(root)


@pytest.fixture
def on_store(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    """HubConfig settings of the ``sqlite`` param of :data:`STORES` (``{}`` otherwise)."""
    callspec = getattr(request.node, "callspec", None)
    kind = callspec.params.get("backend", "memory") if callspec is not None else "memory"
    return {"store": "sqlite", "data_dir": tmp_path / "data"} if kind == "sqlite" else {}


async def get_json(hub: HubClient, path: str, status: int = 200, **params: str) -> Any:
    reply = await hub.request("GET", path, params=params or None)
    assert reply.status == status, (path, reply.status, reply.body)
    return reply.json()


def steps_path(thread_id: str, run_id: str, prefix: str = "/v1") -> str:
    return f"{prefix}/threads/{thread_id}/runs/{run_id}/steps"


def final_steps(events: list[Ev]) -> list[dict[str, Any]]:
    """Each step's last event's object, in the order the steps were created."""
    finals: dict[str, dict[str, Any]] = {}
    for event in events:
        if event.name == "thread.run.step.created" or event.name in STEP_FINAL:
            finals[event.data["id"]] = event.data
    return list(finals.values())


# -- list and retrieve -------------------------------------------------------------------------


@STORES
async def test_steps_are_listed_and_retrieved_as_the_stream_carried_them(
    start_hub: StartHub, agents: tuple[Path, ...], on_store: dict[str, Any]
) -> None:
    hub = await start_hub(agents=agents, model=TOOL_MODEL, **on_store)
    thread_id, run_id = await hub.start("tool-user", "weather in Delphi")
    trace = check_steps_run(await hub.events(thread_id, run_id))
    [step] = trace.steps
    [call] = step.final_calls()
    assert call["name"] == "get_weather" and "Delphi" in call["arguments"]

    # The run's terminal event came after its steps were stored: listed at once.
    listed = await get_json(hub, steps_path(thread_id, run_id))
    assert listed == {
        "object": "list",
        "data": [step.final.data],
        "first_id": step.id,
        "last_id": step.id,
        "has_more": False,
    }
    got = await get_json(hub, f"{steps_path(thread_id, run_id)}/{step.id}")
    assert got == step.final.data
    assert got["status"] == "completed" and got["completed_at"] is not None
    assert got["step_details"]["tool_calls"][0]["function"]["arguments"] == call["arguments"]
    # Mirrored under /api/v1.
    assert await get_json(hub, steps_path(thread_id, run_id, "/api/v1")) == listed
    assert await get_json(hub, f"{steps_path(thread_id, run_id, '/api/v1')}/{step.id}") == got

    # Unknown thread, run and step (a step of another run included): OpenAI-shaped 404s.
    other_run = (await hub.create_run(thread_id, "replier"))["id"]
    await hub.events(thread_id, other_run)
    assert (await get_json(hub, steps_path(thread_id, other_run)))["data"] == []
    for path, param in (
        (steps_path(thread_id, "run_unknown"), "run_id"),
        (f"{steps_path(thread_id, 'run_unknown')}/{step.id}", "run_id"),
        (f"{steps_path(thread_id, run_id)}/step_unknown", "step_id"),
        (f"{steps_path(thread_id, other_run)}/{step.id}", "step_id"),
        (steps_path("thread_unknown", run_id), "thread_id"),
        (f"{steps_path('thread_unknown', run_id)}/{step.id}", "thread_id"),
    ):
        error = (await get_json(hub, path, 404))["error"]
        assert (error["type"], error["param"]) == ("not_found_error", param), path
    error = (await get_json(hub, steps_path(thread_id, run_id), 400, limit="0"))["error"]
    assert error["type"] == "invalid_request_error"


async def test_steps_of_both_kinds_are_paginated_like_other_lists(
    start_hub: StartHub, agents: tuple[Path, ...]
) -> None:
    hub = await start_hub(agents=agents, model=TOOL_MODEL)
    thread_id, run_id = await hub.start("many-steps", "weather in Corinth")
    events = await hub.events(thread_id, run_id)
    trace = check_steps_run(events)
    assert [s.kind for s in trace.steps] == ["tool_calls", "child_run", "tool_calls"]
    finals = final_steps(events)
    assert finals[1]["step_details"]["child_run"]["status"] == "completed"
    path = steps_path(thread_id, run_id)
    assert (await get_json(hub, path))["data"] == finals[::-1]  # newest first by default
    assert (await get_json(hub, path, order="asc"))["data"] == finals
    ids = [s["id"] for s in finals]
    first = await get_json(hub, path, order="asc", limit="2")
    assert ([s["id"] for s in first["data"]], first["has_more"]) == (ids[:2], True)
    rest = await get_json(hub, path, order="asc", limit="2", after=first["last_id"])
    assert ([s["id"] for s in rest["data"]], rest["has_more"]) == (ids[2:], False)
    before = await get_json(hub, path, order="desc", before=ids[0])
    assert [s["id"] for s in before["data"]] == ids[:0:-1]
    error = (await get_json(hub, path, 400, after="step_unknown"))["error"]
    assert error["param"] == "after"


async def test_another_keys_thread_has_no_steps_to_show(
    start_hub: StartHub, agents: tuple[Path, ...]
) -> None:
    hub = await start_hub(agents=agents, model=TOOL_MODEL, api_keys=("key-one", "key-two"))
    one = {"Authorization": "Bearer key-one"}
    two = {"Authorization": "Bearer key-two"}
    reply = await hub.request("POST", "/v1/threads", json_body={}, headers=one)
    thread_id = reply.json()["id"]
    body = {"assistant_id": "tool-user", "stream": True}
    reply = await hub.request("POST", f"/v1/threads/{thread_id}/runs", json_body=body, headers=one)
    run_id = reply.events("openai")[0].data["id"]
    path = steps_path(thread_id, run_id)
    [step] = (await hub.request("GET", path, headers=one)).json()["data"]
    for url in (path, f"{path}/{step['id']}"):
        assert (await hub.request("GET", url, headers=one)).status == 200
        reply = await hub.request("GET", url, headers=two)
        assert reply.status == 404 and reply.json()["error"]["param"] == "thread_id"
        assert (await hub.request("GET", url)).status == 401


# -- a live run --------------------------------------------------------------------------------


@pytest.fixture
async def scripted_hub(
    agents: tuple[Path, ...], tmp_path: Path
) -> AsyncIterator[tuple[HubClient, Gate]]:
    """A hub (SQLite store) whose completions call a tool, then wait at a gate."""
    gate = Gate()
    model = ScriptedModel([ScriptedToolCall("a", {"x": 1}, chunks=2, id="call_a"), gate, Say("!")])
    config = HubConfig(
        force_model=model.name,
        port=0,
        agents=agents,
        store="sqlite",
        data_dir=tmp_path / "data",
        shutdown_timeout=2 * UNIT,
    )
    server = Server(config, providers={model.name: model})
    await server.start()
    session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30 * UNIT))
    try:
        yield HubClient(server, session), gate
    finally:
        await session.close()
        await server.aclose()


async def listed_statuses(hub: HubClient, thread_id: str, run_id: str) -> list[str]:
    """The run's listed step statuses, once a step is listed (its write is not awaited by
    the event that announced it: poll, bounded)."""
    async with within():
        while True:
            data = (await get_json(hub, steps_path(thread_id, run_id)))["data"]
            if data:
                return [s["status"] for s in data]


async def test_a_live_runs_step_is_listed_in_progress_then_cancelled(
    scripted_hub: tuple[HubClient, Gate],
) -> None:
    hub, gate = scripted_hub
    thread_id, run_id = await hub.start("scripted-tools", "go")
    async with within():
        await gate.reached()
    assert await listed_statuses(hub, thread_id, run_id) == ["in_progress"]
    [live] = (await get_json(hub, steps_path(thread_id, run_id)))["data"]
    assert live["step_details"] == {"type": "tool_calls", "tool_calls": []}  # as created

    reply = await hub.request("POST", f"/v1/threads/{thread_id}/runs/{run_id}/cancel")
    assert reply.status == 200, reply.body
    events = await hub.events(thread_id, run_id)
    [step] = check_steps_run(events, "thread.run.cancelled").steps
    assert step.final.name == "thread.run.step.cancelled"
    got = await get_json(hub, f"{steps_path(thread_id, run_id)}/{live['id']}")
    assert got == step.final.data and got["cancelled_at"] is not None


# -- rebuilt from the store --------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["memory", "redis"], indirect=True)
async def test_a_run_rebuilt_after_its_retention_shows_its_steps(
    start_hub: StartHub, agents: tuple[Path, ...]
) -> None:
    hub = await start_hub(agents=agents, model=TOOL_MODEL, broker={"retention": 0.05})
    thread_id, run_id = await hub.start("many-steps", "weather in Thebes")
    original = await hub.events(thread_id, run_id)
    check_steps_run(original)
    live = StepsClientState().apply_all(original)
    await hub.dropped(run_id)

    events = await hub.events(thread_id, run_id)

    assert events[0].name == GAP and events[-1].name == "thread.run.completed"
    assert events[-1].id == original[-1].id
    rebuilt = StepsClientState().apply_all(events)
    assert rebuilt.steps == live.steps
    assert rebuilt.tool_calls() == live.tool_calls() and len(rebuilt.tool_calls()) == 2
    assert rebuilt.texts == live.texts
    # Each step as its created and final events, as the stream had them, in the order
    # steps and messages were created (the messages all come after the steps here).
    kept = [e for e in original if e.name == "thread.run.step.created" or e.name in STEP_FINAL]
    steps = [e for e in events if e.name.startswith("thread.run.step.")]
    assert [(e.name, e.data) for e in steps] == [(e.name, e.data) for e in kept]
    names = [e.name for e in events]
    last_step = max(i for i, name in enumerate(names) if name.startswith("thread.run.step."))
    assert last_step < names.index("thread.message.created")


# -- the official SDK --------------------------------------------------------------------------


@ASSISTANTS_DEPRECATED
async def test_the_openai_sdk_lists_and_retrieves_steps(
    start_hub: StartHub, agents: tuple[Path, ...]
) -> None:
    hub = await start_hub(agents=agents, model=TOOL_MODEL)
    thread_id, run_id = await hub.start("many-steps", "weather in Sparta")
    finals = final_steps(await hub.events(thread_id, run_id))
    async with async_sdk(hub) as (client, _requests), within(5):
        steps = client.beta.threads.runs.steps
        page = await steps.list(run_id, thread_id=thread_id)
        assert [s.id for s in page.data] == [s["id"] for s in finals[::-1]]
        # Auto-pagination, one step per page.
        every = [s async for s in steps.list(run_id, thread_id=thread_id, limit=1, order="asc")]
        assert [s.model_dump(warnings=False) for s in every] == [
            s.model_dump(warnings=False) for s in page.data[::-1]
        ]
        tools = every[0]
        assert tools.type == "tool_calls" and tools.status == "completed"
        assert isinstance(tools.step_details, ToolCallsStepDetails)
        [call] = tools.step_details.tool_calls
        assert isinstance(call, FunctionToolCall)
        assert call.function.name == "get_weather" and "turn 0" in call.function.arguments
        assert call.function.output is None
        assert every[1].type == "child_run"
        for step in finals:
            got = await steps.retrieve(step["id"], thread_id=thread_id, run_id=run_id)
            assert got.model_dump(exclude_unset=True, warnings=False) == step
        with pytest.raises(openai.NotFoundError):
            await steps.retrieve("step_unknown", thread_id=thread_id, run_id=run_id)
        with pytest.raises(openai.NotFoundError):
            await steps.list("run_unknown", thread_id=thread_id)


async def test_a_failing_step_write_is_logged_and_the_run_still_ends(
    start_hub: StartHub,
    agents: tuple[Path, ...],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    hub = await start_hub(agents=agents, model=TOOL_MODEL)

    async def broken(step: RunStep) -> None:
        raise ServiceUnavailable("the store is down")

    monkeypatch.setattr(hub.hub.store, "put_step", broken)
    thread_id, run_id = await hub.start("tool-user", "weather in Olympia")
    [step] = check_steps_run(await hub.events(thread_id, run_id)).steps  # completed
    assert step.final.name == "thread.run.step.completed"
    failures = [r for r in caplog.records if "storing a step failed" in r.getMessage()]
    assert len(failures) == 2 and "the store is down" in failures[0].getMessage()
    assert (await get_json(hub, steps_path(thread_id, run_id)))["data"] == []
