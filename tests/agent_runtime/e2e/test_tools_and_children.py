"""Tool calls and child runs, end to end over a real socket.

Tool calls of a streamed completion are ``thread.run.step.*`` events of type
``tool_calls`` (OpenAI's run step objects), their arguments streamed as they arrive,
apart from the message text; ``handler.tool_calls`` assembles them for the agent.
Child runs (``env.run_agent``) are runs of their own on a child thread, announced in the
parent's stream by a ``child_run`` step, relayed (``relay=True``) as
``thread.agent.child_delta`` events.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from openai import AssistantEventHandler
from openai.types.beta.threads import Message
from openai.types.beta.threads.runs import RunStep, ToolCall, ToolCallDelta

from agent_runtime.config import HubConfig, IsolationConfig
from agent_runtime.models.scripted import Gate, Say, ScriptedModel
from agent_runtime.models.scripted import ToolCall as ScriptedToolCall
from agent_runtime.server import Server

from ..clients_helpers import ASSISTANTS_DEPRECATED, sync_sdk
from ..conftest import UNIT, HubClient, StartHub, with_examples, within, write_agent
from ..sse import Ev
from ..steps_helpers import StepsClientState, check_steps_run

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {
                    "city": {"type": "string"},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                    "days": {"type": "integer"},
                },
                "required": ["city", "unit", "days"],
            },
        },
    },
    {
        "type": "function",
        "function": {"name": "noop", "parameters": {"type": "object", "properties": {}}},
    },
]

TOOL_AGENTS: dict[str, str] = {
    # Streams a completion that must call a tool, reports handler.tool_calls, then answers
    # with the tool's result (a second completion offered the tools, answering in text).
    "tool-user": f"""
import json
TOOLS = {TOOLS!r}

async def run(env):
    messages = await env.alist_messages()
    handler = await env.acompletions(messages, stream=True, tools=TOOLS, tool_choice="required")
    async for _chunk in handler:
        pass
    calls = handler.tool_calls
    await env.aadd_reply(json.dumps([[c.id, c.function.name, c.function.arguments] for c in calls]))
    follow = messages + [
        {{"role": "assistant", "content": None, "tool_calls": [c.model_dump() for c in calls]}}
    ] + [{{"role": "tool", "tool_call_id": c.id, "content": "sunny"}} for c in calls]
    answer = await env.acompletion(follow, stream=True, tools=TOOLS)
    await env.aadd_reply(answer)
""",
    # The same from a synchronous agent, plus a non-streamed completion with tools.
    "tool-user-sync": f"""
import json
from nearai.agents.environment import Environment
TOOLS = {TOOLS!r}

if globals().get('env', None):
    messages = env.list_messages()
    forced = {{"type": "function", "function": {{"name": "get_weather"}}}}
    handler = env.completions(messages, stream=True, tools=TOOLS, tool_choice=forced)
    for _chunk in handler:
        pass
    calls = [[c.id, c.function.name, c.function.arguments] for c in handler.tool_calls]
    whole = env.completions(messages, tools=TOOLS, tool_choice="required")
    plain = [[c.id, c.function.name, c.function.arguments]
             for c in whole.choices[0].message.tool_calls]
    env.add_reply(json.dumps({{"streamed": calls, "plain": plain,
                               "finish": whole.choices[0].finish_reason}}))
""",
    # One scripted completion: two tool calls and some text, all added.
    "scripted-tools": """
async def run(env):
    handler = await env.acompletion("go", stream=True, tools=[{"type": "function",
        "function": {"name": "a"}}])
    await env.aadd_reply(handler)
""",
    # A completion that only calls a tool and is never added.
    "tool-only": """
async def run(env):
    handler = await env.acompletion("go", stream=True, tools=[{"type": "function",
        "function": {"name": "a"}}])
    async for _chunk in handler:
        pass
""",
    # A completion that only calls a tool, added anyway: add_reply adds no message and
    # returns None; the agent then reports what it got.
    "tool-only-added": """
async def run(env):
    handler = await env.acompletion("go", stream=True, tools=[{"type": "function",
        "function": {"name": "a"}}])
    added = await env.aadd_reply(handler)
    names = [c.function.name for c in handler.tool_calls]
    await env.aadd_reply(f"added={added!r} calls={names}")
""",
    "tool-only-added-sync": """
from nearai.agents.environment import Environment

if globals().get('env', None):
    handler = env.completion("go", stream=True, tools=[{"type": "function",
        "function": {"name": "a"}}])
    added = env.add_reply(handler)
    names = [c.function.name for c in handler.tool_calls]
    env.add_reply(f"added={added!r} calls={names}")
""",
}

TOOL_MODEL = "simulated:tokens=12,rate=0"
PACED_TOOL_MODEL = "simulated:tokens=12,rate=400"


@pytest.fixture
def tool_agents(tmp_path: Path) -> Path:
    root = tmp_path / "tool-agents"
    for name, source in TOOL_AGENTS.items():
        write_agent(root, name, source)
    return root


StartScripted = Callable[..., Awaitable[HubClient]]


@pytest.fixture
async def start_scripted() -> AsyncIterator[StartScripted]:
    """``await start_scripted(model, **HubConfig settings)``: a hub whose every completion
    is played by ``model`` (a ScriptedModel)."""
    started: list[HubClient] = []

    async def start(model: ScriptedModel, **settings: Any) -> HubClient:
        settings.setdefault("port", 0)
        settings.setdefault("shutdown_timeout", 2 * UNIT)
        server = Server(
            HubConfig(force_model=model.name, **settings), providers={model.name: model}
        )
        await server.start()
        session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30 * UNIT))
        client = HubClient(server, session)
        started.append(client)
        return client

    yield start
    for client in reversed(started):
        await client.session.close()
        await client.server.aclose()


async def wait_run(hub: HubClient, thread_id: str, run_id: str) -> list[Ev]:
    """The whole run, read from its first event to its end."""
    return await hub.events(thread_id, run_id)


# -- tool calls ------------------------------------------------------------------------------


@pytest.mark.parametrize("model", [TOOL_MODEL, PACED_TOOL_MODEL])
async def test_tool_calls_stream_as_run_steps_apart_from_the_text(
    start_hub: StartHub, tool_agents: Path, model: str
) -> None:
    hub = await start_hub(agents=with_examples(tool_agents), model=model)
    thread_id, run_id = await hub.start("tool-user", "What is the weather in Paris?")
    events = await wait_run(hub, thread_id, run_id)
    trace = check_steps_run(events)

    # One tool_calls step, no message for the completion that only called the tool.
    assert [s.kind for s in trace.steps] == ["tool_calls"]
    step = trace.steps[0]
    deltas = [e for e in step.events if e.name == "thread.run.step.delta"]
    assert len(deltas) >= 3, "the arguments arrive in fragments"
    first = deltas[0].data["delta"]["step_details"]["tool_calls"][0]
    assert first["id"].startswith("call_") and first["function"]["name"] == "get_weather"
    assert all("id" not in d.data["delta"]["step_details"]["tool_calls"][0] for d in deltas[1:])
    [call] = step.final_calls()
    arguments = json.loads(call["arguments"])
    assert arguments == {"city": "the weather in Paris", "unit": "celsius", "days": 1}
    assert step.final.data["step_details"]["tool_calls"][0]["function"]["output"] is None

    # handler.tool_calls gave the agent the same call; then a text answer in its message.
    report, answer = trace.texts
    assert json.loads(report) == [[call["id"], "get_weather", call["arguments"]]]
    assert answer and "weather" in answer
    assert len(trace.run.messages) == 2
    # The step ended before the first message was created (the tool call came first).
    created = [e.id for e in events if e.name == "thread.message.created"]
    assert step.final.id is not None and step.final.id < min(i or 0 for i in created)
    stored = await hub.assistant_texts(thread_id)
    assert stored == [report, answer]


async def test_a_sync_agent_gets_tool_calls_streamed_and_not(
    start_hub: StartHub, tool_agents: Path
) -> None:
    hub = await start_hub(agents=with_examples(tool_agents), model=PACED_TOOL_MODEL)
    thread_id, run_id = await hub.start("tool-user-sync", "weather in Oslo")
    trace = check_steps_run(await wait_run(hub, thread_id, run_id))
    report = json.loads(trace.texts[0])
    [[call_id, name, arguments]] = report["streamed"]
    assert name == "get_weather" and json.loads(arguments)["city"] == "weather in Oslo"
    assert [c["id"] for c in trace.steps[0].final_calls()] == [call_id]
    # The non-streamed completion returns the ChatCompletion with its tool_calls.
    assert report["plain"] == [[call_id, name, arguments]]
    assert report["finish"] == "tool_calls"
    assert len(trace.steps) == 1, "a non-streamed completion publishes nothing"


async def test_scripted_tool_calls_and_text_in_one_completion(
    start_scripted: StartScripted, tool_agents: Path
) -> None:
    model = ScriptedModel(
        [
            ScriptedToolCall("lookup", {"query": "virtue", "limit": 3}, chunks=4, id="call_one"),
            ScriptedToolCall("noop", "{}", id="call_two"),
            Say("Done"),
            Say(" looking."),
        ]
    )
    hub = await start_scripted(model, agents=(tool_agents,))
    thread_id, run_id = await hub.start("scripted-tools", "go")
    trace = check_steps_run(await wait_run(hub, thread_id, run_id))
    [step] = trace.steps
    assert step.final_calls() == [
        {"id": "call_one", "name": "lookup", "arguments": '{"query": "virtue", "limit": 3}'},
        {"id": "call_two", "name": "noop", "arguments": "{}"},
    ]
    assert len([e for e in step.events if e.name == "thread.run.step.delta"]) == 5
    assert trace.texts == ["Done looking."]


async def test_a_tool_only_completion_never_added_leaves_no_message(
    start_scripted: StartScripted, tool_agents: Path
) -> None:
    model = ScriptedModel([ScriptedToolCall("a", {"x": 1}, chunks=2)])
    hub = await start_scripted(model, agents=(tool_agents,))
    thread_id, run_id = await hub.start("tool-only", "go")
    trace = check_steps_run(await wait_run(hub, thread_id, run_id))
    assert trace.run.messages == []
    assert [s.final.name for s in trace.steps] == ["thread.run.step.completed"]
    assert await hub.assistant_texts(thread_id) == []


@pytest.mark.parametrize(
    ("agent", "isolation"),
    [
        ("tool-only-added", "none"),
        ("tool-only-added-sync", "none"),
        ("tool-only-added", "process"),
    ],
)
async def test_adding_a_tool_only_completion_adds_no_message(
    start_scripted: StartScripted, tool_agents: Path, agent: str, isolation: str
) -> None:
    """``add_reply`` of a completion without text stores and publishes nothing (no empty
    assistant message, no blank bubble) and returns None; the tool calls stay on the
    handler and in the run's steps."""
    model = ScriptedModel([ScriptedToolCall("a", {"x": 1}, chunks=2)])
    hub = await start_scripted(
        model, agents=(tool_agents,), isolation=IsolationConfig(mode=isolation, workers=1)
    )
    thread_id, run_id = await hub.start(agent, "go")
    # A worker process is slower to run the agent on a busy machine: a longer bound.
    events = await hub.events(thread_id, run_id, units=5 if isolation == "none" else 10)
    trace = check_steps_run(events)
    assert trace.texts == ["added=None calls=['a']"]
    assert len([e for e in events if e.name == "thread.message.created"]) == 1
    [step] = trace.steps
    assert step.final.name == "thread.run.step.completed"
    assert step.final_calls()[0]["name"] == "a"
    assert await hub.assistant_texts(thread_id) == ["added=None calls=['a']"]


async def test_cancelling_mid_tool_call_cancels_the_step(
    start_scripted: StartScripted, tool_agents: Path
) -> None:
    gate = Gate()
    model = ScriptedModel([ScriptedToolCall("a", {"x": 1}, chunks=2), gate, Say("never")])
    hub = await start_scripted(model, agents=(tool_agents,))
    thread_id, run_id = await hub.start("scripted-tools", "go")
    async with within():
        await gate.reached()
    reply = await hub.request("POST", f"/v1/threads/{thread_id}/runs/{run_id}/cancel")
    assert reply.status == 200, reply.body
    trace = check_steps_run(await wait_run(hub, thread_id, run_id), "thread.run.cancelled")
    [step] = trace.steps
    assert step.final.name == "thread.run.step.cancelled"
    assert step.final.data["cancelled_at"] is not None
    assert step.streamed_calls()[0]["arguments"] == '{"x": 1}'


async def test_late_joiners_and_resumes_rebuild_the_tool_calls(
    start_hub: StartHub, tool_agents: Path
) -> None:
    hub = await start_hub(agents=with_examples(tool_agents), model=PACED_TOOL_MODEL)
    thread_id, run_id = await hub.start("tool-user", "weather in Rome")
    full = await wait_run(hub, thread_id, run_id)
    trace = check_steps_run(full)
    want_calls = trace.steps[0].final_calls()
    step_ids = [e.id for e in trace.steps[0].events]
    assert step_ids[0] is not None and step_ids[-1] is not None
    for cursor in range(1, len(full)):
        # Exact resume: the tail after the cursor, nothing else.
        tail = await hub.events(thread_id, run_id, headers={"Last-Event-ID": str(cursor)})
        assert tail == full[cursor:], cursor
        # Resume without state (snapshot=1): the rebuilt state then the exact tail.
        resumed = await hub.events(
            thread_id, run_id, headers={"Last-Event-ID": str(cursor)}, params={"snapshot": "1"}
        )
        state = StepsClientState().apply_all(resumed)
        assert state.terminal == "thread.run.completed"
        assert resumed[-len(full) + cursor :] == full[cursor:], cursor
        if step_ids[0] <= cursor < step_ids[-1]:
            assert state.tool_calls() == want_calls, cursor
    # A fresh join before and after the end on a hub whose buffer holds 5 events.
    small = await start_hub(
        agents=with_examples(tool_agents),
        model=PACED_TOOL_MODEL,
        broker={"max_events_per_stream": 5},
    )
    thread_id, run_id = await small.start("tool-user", "weather in Rome")
    async with small.reader(thread_id, run_id) as reader:
        live = StepsClientState()
        async with within():
            while (event := await reader.next()) is not None:
                live.apply(event)
    assert live.terminal == "thread.run.completed"
    assert [c["name"] for c in live.tool_calls()] == ["get_weather"]
    late = await small.events(thread_id, run_id)
    assert late[0].name == "thread.stream.gap"
    state = StepsClientState().apply_all(late)
    assert state.terminal == "thread.run.completed"
    assert state.tool_calls() == live.tool_calls()
    assert list(state.final.values()) == await small.assistant_texts(thread_id)
    assert late[-1].id == len(full)


class ToolRecorder(AssistantEventHandler):
    def __init__(self) -> None:
        super().__init__()
        self.created: list[ToolCall] = []
        self.deltas: list[ToolCallDelta] = []
        self.done: list[ToolCall] = []
        self.steps_done: list[RunStep] = []
        self.events: list[str] = []
        self.messages: list[Message] = []

    def on_event(self, event: Any) -> None:
        self.events.append(event.event)

    def on_tool_call_created(self, tool_call: ToolCall) -> None:
        self.created.append(tool_call)

    def on_tool_call_delta(self, delta: ToolCallDelta, snapshot: ToolCall) -> None:
        self.deltas.append(delta)

    def on_tool_call_done(self, tool_call: ToolCall) -> None:
        self.done.append(tool_call)

    def on_run_step_done(self, run_step: RunStep) -> None:
        self.steps_done.append(run_step)

    def on_message_done(self, message: Message) -> None:
        self.messages.append(message)


@ASSISTANTS_DEPRECATED
async def test_the_openai_sdk_handler_sees_the_tool_calls(
    start_hub: StartHub, tool_agents: Path
) -> None:
    hub = await start_hub(agents=with_examples(tool_agents), model=PACED_TOOL_MODEL)
    thread_id = await hub.create_thread("weather in Lima")

    def consume() -> ToolRecorder:
        recorder = ToolRecorder()
        with sync_sdk(hub) as (client, _requests):
            with client.beta.threads.runs.stream(
                thread_id=thread_id, assistant_id="tool-user", event_handler=recorder
            ) as stream:
                stream.until_done()
                assert stream.get_final_run().status == "completed"
                steps = stream.get_final_run_steps()
                assert [s.type for s in steps] == ["tool_calls"]
        return recorder

    recorder = await asyncio.to_thread(consume)
    [created] = recorder.created
    assert created.type == "function" and created.function.name == "get_weather"
    assert created.id.startswith("call_")
    assert len(recorder.deltas) >= 2
    streamed = "".join(
        d.function.arguments or "" for d in recorder.deltas if d.type == "function" and d.function
    )
    [step] = recorder.steps_done
    assert step.step_details.type == "tool_calls"
    [final] = step.step_details.tool_calls
    assert final.type == "function"
    assert final.function.arguments.endswith(streamed)
    assert json.loads(final.function.arguments)["city"] == "weather in Lima"
    assert recorder.done and recorder.done[0].id == created.id
    assert len(recorder.messages) == 2


# -- child runs ------------------------------------------------------------------------------

CHILD_AGENTS: dict[str, str] = {
    # Asks the streaming example (a child run) and reports what it got.
    "delegator": """
import json

async def run(env):
    await env.aadd_reply("Asking Socrates.")
    result = await env.arun_agent("streaming-example", "What is courage?", relay=RELAY)
    await env.aadd_reply(json.dumps({"status": result.status, "texts": result.texts,
        "thread_id": result.thread_id, "run_id": result.run_id, "error": result.error}))
""",
    "delegator-sync": """
import json
from nearai.agents.environment import Environment

if globals().get('env', None):
    result = env.run_agent("streaming-example", "What is courage?", relay=True)
    env.add_reply(json.dumps({"status": result.status, "texts": result.texts,
        "thread_id": result.thread_id, "run_id": result.run_id}))
""",
    # Calls a child that never ends by itself (for cancellation).
    "patient-parent": """
async def run(env):
    await env.arun_agent("slowpoke", "take your time", relay=True)
""",
    "slowpoke": """
async def run(env):
    handler = await env.acompletion(await env.alist_messages(), stream=True)
    await env.aadd_reply(handler)
""",
    "failing-child": """
async def run(env):
    raise RuntimeError("the child gave up")
""",
    "parent-of-failure": """
import json

async def run(env):
    result = await env.arun_agent("failing-child", "try")
    await env.aadd_reply(json.dumps([result.status, result.error, result.texts]))
""",
}


@pytest.fixture
def child_agents(tmp_path: Path) -> Path:
    root = tmp_path / "child-agents"
    for name, source in CHILD_AGENTS.items():
        if name == "delegator":
            write_agent(root, "delegator", source.replace("RELAY", "False"))
            write_agent(root, "delegator-relay", source.replace("RELAY", "True"))
        else:
            write_agent(root, name, source)
    return root


@pytest.mark.parametrize("relay", [False, True])
async def test_a_child_run_streams_on_its_own_thread_and_is_named_in_the_parent(
    start_hub: StartHub, child_agents: Path, relay: bool
) -> None:
    hub = await start_hub(agents=with_examples(child_agents), model=PACED_TOOL_MODEL)
    agent = "delegator-relay" if relay else "delegator"
    thread_id, run_id = await hub.start(agent, "delegate please")
    events = await wait_run(hub, thread_id, run_id)
    trace = check_steps_run(events)
    [step] = trace.steps
    assert step.kind == "child_run" and step.final.name == "thread.run.step.completed"
    created = step.events[0].data["step_details"]["child_run"]
    final = step.final.data["step_details"]["child_run"]
    assert created["assistant_id"] == final["assistant_id"] == "streaming-example"
    assert created["status"] == "queued" and final["status"] == "completed"
    child_thread, child_run = final["thread_id"], final["run_id"]
    assert child_thread != thread_id

    # The child is a normal run on its own thread, streamed on its own.
    child_events = await hub.events(child_thread, child_run)
    child = check_steps_run(child_events)
    assert len(child.texts) == 2  # the Socratic and the Platonic answers
    assert child_events[0].data["metadata"] == {
        "parent_thread_id": thread_id,
        "parent_run_id": run_id,
    }
    messages = await hub.messages(child_thread)
    assert [m["role"] for m in messages] == ["user", "assistant", "assistant"]
    assert messages[0]["content"][0]["text"]["value"] == "What is courage?"

    # The agent got the child's texts; the parent's thread holds only its own messages.
    report = json.loads(trace.texts[1])
    assert report == {
        "status": "completed",
        "texts": child.texts,
        "thread_id": child_thread,
        "run_id": child_run,
        "error": None,
    }
    assert await hub.assistant_texts(thread_id) == trace.texts

    relayed = [e for e in trace.agent_events if e.name == "thread.agent.child_delta"]
    if not relay:
        assert relayed == []
        return
    assert all(e.data["child_run_id"] == child_run for e in relayed)
    assert all(e.data["step_id"] == step.id for e in relayed)
    by_message: dict[str, str] = {}
    for e in relayed:
        by_message[e.data["message_id"]] = by_message.get(e.data["message_id"], "") + e.data["text"]
    assert list(by_message.values()) == child.texts
    assert len(relayed) == sum(len(m.deltas) for m in child.run.messages)
    # Relayed deltas sit between the step's creation and its end.
    assert step.events[0].id is not None and step.final.id is not None
    assert all(step.events[0].id < (e.id or 0) < step.final.id for e in relayed)


async def test_a_sync_agent_runs_a_child_with_relay(
    start_hub: StartHub, child_agents: Path
) -> None:
    hub = await start_hub(agents=with_examples(child_agents), model=PACED_TOOL_MODEL)
    thread_id, run_id = await hub.start("delegator-sync", "go")
    trace = check_steps_run(await wait_run(hub, thread_id, run_id))
    report = json.loads(trace.texts[0])
    assert report["status"] == "completed" and len(report["texts"]) == 2
    assert any(e.name == "thread.agent.child_delta" for e in trace.agent_events)


async def test_a_failed_child_fails_its_step_not_the_parent(
    start_hub: StartHub, child_agents: Path
) -> None:
    hub = await start_hub(agents=with_examples(child_agents))
    thread_id, run_id = await hub.start("parent-of-failure", "go")
    trace = check_steps_run(await wait_run(hub, thread_id, run_id))
    [step] = trace.steps
    assert step.final.name == "thread.run.step.failed"
    assert "the child gave up" in step.final.data["last_error"]["message"]
    assert step.final.data["step_details"]["child_run"]["status"] == "failed"
    status, error, texts = json.loads(trace.texts[0])
    assert status == "failed" and "the child gave up" in error and texts == []


async def test_cancelling_the_parent_cancels_the_child(
    start_hub: StartHub, child_agents: Path
) -> None:
    hub = await start_hub(
        agents=with_examples(child_agents), model="simulated:tokens=5000,rate=100"
    )
    thread_id, run_id = await hub.start("patient-parent", "go")
    async with hub.reader(thread_id, run_id) as reader:
        async with within():
            await reader.until(lambda e: e.name == "thread.agent.child_delta")
    # The parent's thread still has its one live run: the parent's.
    live = hub.hub.runs.live_on_thread(thread_id)
    assert live is not None and live.run.id == run_id
    reply = await hub.request("POST", f"/v1/threads/{thread_id}/runs/{run_id}/cancel")
    assert reply.status == 200, reply.body
    events = await wait_run(hub, thread_id, run_id)
    trace = check_steps_run(events, "thread.run.cancelled")
    [step] = trace.steps
    assert step.final.name == "thread.run.step.cancelled"
    details = step.final.data["step_details"]["child_run"]
    assert details["status"] == "cancelled"
    child_events = await hub.events(details["thread_id"], details["run_id"])
    child = check_steps_run(child_events, "thread.run.cancelled")
    assert [m.final.name for m in child.run.messages] == ["thread.message.incomplete"]
    assert (await hub.run(details["thread_id"], details["run_id"]))["status"] == "cancelled"


async def test_a_late_joiner_sees_the_child_step_in_the_snapshot(
    start_hub: StartHub, child_agents: Path
) -> None:
    hub = await start_hub(
        agents=with_examples(child_agents),
        model=PACED_TOOL_MODEL,
        broker={"max_events_per_stream": 4},
    )
    thread_id, run_id = await hub.start("delegator-relay", "go")
    late = await wait_run(hub, thread_id, run_id)
    assert late[0].name == "thread.stream.gap"
    state = StepsClientState().apply_all(late)
    assert state.terminal == "thread.run.completed"
    [(step_id, step)] = state.steps.items()
    assert step["type"] == "child_run" and state.step_status[step_id] == "completed"
    assert list(state.final.values()) == await hub.assistant_texts(thread_id)


@ASSISTANTS_DEPRECATED
async def test_the_openai_sdk_reads_a_parent_stream_with_child_steps(
    start_hub: StartHub, child_agents: Path
) -> None:
    hub = await start_hub(agents=with_examples(child_agents), model=PACED_TOOL_MODEL)
    thread_id = await hub.create_thread("go")

    def consume() -> ToolRecorder:
        recorder = ToolRecorder()
        with sync_sdk(hub) as (client, _requests):
            with client.beta.threads.runs.stream(
                thread_id=thread_id, assistant_id="delegator-relay", event_handler=recorder
            ) as stream:
                stream.until_done()
                assert stream.get_final_run().status == "completed"
        return recorder

    recorder = await asyncio.to_thread(consume)
    assert len(recorder.messages) == 2
    assert "thread.agent.child_delta" in recorder.events
    [step] = recorder.steps_done
    assert step.status == "completed"


# -- the CLI ---------------------------------------------------------------------------------

CLI_AGENTS = {
    "a-parent": f"""
TOOLS = {TOOLS!r}

async def run(env):
    await env.astream_text("Checking the weather first.")
    handler = await env.acompletion(await env.alist_messages(), stream=True, tools=TOOLS,
                                    tool_choice="required")
    async for _chunk in handler:  # the tool call ends before the run does
        pass
    await env.aadd_reply(await env.acompletion("What is courage?", stream=True))
    await env.arun_agent("b-child", "What is virtue?", relay=True)
""",
    "b-child": """
async def run(env):
    await env.aadd_reply("Virtue is knowledge.")
""",
}


async def test_the_cli_prints_progress_tool_calls_and_child_runs(tmp_path: Path) -> None:
    import io

    from agent_runtime.cli import _follow
    from agent_runtime.hub import Hub
    from agent_runtime.objects import Thread, new_id, now

    root = tmp_path / "cli-agents"
    for name, source in CLI_AGENTS.items():
        write_agent(root, name, source)
    hub = Hub(HubConfig(agents=(root,), force_model="simulated:tokens=8,rate=0"))
    await hub.start()
    try:
        thread = Thread(id=new_id("thread"), created_at=now())
        await hub.store.create_thread(thread)
        out = io.StringIO()
        async with within():
            status = await _follow(hub, thread.id, "weather in Paris", True, out)
    finally:
        await hub.aclose()
    assert status == "completed"
    lines = out.getvalue().splitlines()
    assert lines[0] == "  … Checking the weather first."
    tool = next(line for line in lines if "[tool]" in line)
    assert tool.startswith("  [tool] get_weather({") and '"city": ' not in tool
    assert '"city":"weather in Paris"' in tool
    child = [line for line in lines if "[child agent b-child]" in line]
    assert child[0].startswith("  [child agent b-child] started on thread thread_")
    assert child[1] == "  [child agent b-child] Virtue is knowledge."
    assert child[2] == "  [child agent b-child] completed"
