"""The test harness: ``agent_runtime.testing.Hub``, ``ScriptedModel`` and the router hook
that serves it. Every hub is real (a socket on 127.0.0.1); every wait is bounded."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import openai
import pytest

import agent_runtime
from agent_runtime.errors import InvalidRequest, ProviderError
from agent_runtime.models.base import CompletionRequest
from agent_runtime.models.router import ModelRouter
from agent_runtime.models.simulated import SimulatedModel, simulated_text
from agent_runtime.testing import (
    Fail,
    Finish,
    Gate,
    Hub,
    InlineAgent,
    RunEvent,
    Say,
    ScriptedModel,
    Stall,
)

from ..conftest import PLATO, QUESTION, SOCRATES, UNIT, within

ECHO = """
async def run(env):
    handler = await env.acompletion(await env.alist_messages(), stream=True)
    await env.aadd_reply(handler)
"""

COMPLETES = """
import json

async def run(env):
    reply = await env.acompletion([{"role": "user", "content": "hi"}])
    await env.aadd_reply(reply)
"""


def check_ids(events: list[RunEvent]) -> None:
    assert [e.id for e in events] == list(range(1, len(events) + 1))
    assert events[-1].name.startswith("thread.run.")


# -- the router hook --------------------------------------------------------------------


async def test_router_serves_registered_names_and_honours_force_model() -> None:
    scripted = ScriptedModel(["x"], name="mine")
    router = ModelRouter()
    router.register("mine", scripted)
    assert router.resolve("mine") == (scripted, "mine")
    assert router.resolve("mine", "fireworks") == (scripted, "mine")  # before provider rules
    assert isinstance(router.resolve("simulated")[0], SimulatedModel)
    assert {"id": "mine", "object": "model", "created": 0, "owned_by": "agentstream"} in (
        router.list_models()
    )
    with pytest.raises(InvalidRequest):
        router.register(" padded ", scripted)

    forced = ModelRouter(force_model="mine")
    forced.register("mine", scripted)
    assert forced.resolve("simulated:tokens=3") == (scripted, "mine")
    await forced.aclose()
    await router.aclose()
    assert scripted.queued == 0  # the router never closes or uses it by itself


# -- ScriptedModel alone ----------------------------------------------------------------


def request(text: str = "hi") -> CompletionRequest:
    return CompletionRequest(model="scripted", messages=[{"role": "user", "content": text}])


async def chunks_of(model: ScriptedModel) -> list[tuple[str | None, str | None]]:
    out = []
    async with within(2):
        async for chunk in model.stream(request()):
            choice = chunk.choices[0]
            out.append((choice.delta.content, choice.finish_reason))
    return out


async def test_scripted_stream_is_openai_shaped_and_scripts_are_per_call() -> None:
    model = ScriptedModel(["default"], scripts=[[Say("a"), "b"], [Say("c"), Finish("length")]])
    assert await chunks_of(model) == [("", None), ("a", None), ("b", None), (None, "stop")]
    assert await chunks_of(model) == [("", None), ("c", None), (None, "length")]
    assert await chunks_of(model) == [("", None), ("default", None), (None, "stop")]
    model.add_script("queued")
    completion = await model.complete(request("last"))
    assert completion.choices[0].message.content == "queued"
    assert [r.messages[0]["content"] for r in model.calls] == ["hi", "hi", "hi", "last"]


async def test_scripted_failure_before_any_text_is_a_refusal_with_its_status() -> None:
    model = ScriptedModel([Fail("nope", status=418)])
    stream = model.stream(request())
    with pytest.raises(ProviderError) as caught:
        await anext(stream)  # no chunk at all: like a provider answering an error status
    assert caught.value.upstream_status == 418 and caught.value.message == "nope"


async def test_a_model_without_script_says_how_to_give_one() -> None:
    with pytest.raises(ProviderError, match="add_script"):
        await ScriptedModel().complete(request())


async def test_a_stall_lasts_until_the_consumer_is_cancelled() -> None:
    model = ScriptedModel([Say("a"), Stall()])
    stream = model.stream(request())
    assert (await anext(stream)).choices[0].delta.content == ""
    assert (await anext(stream)).choices[0].delta.content == "a"
    waiting = asyncio.ensure_future(anext(stream))
    await model.wait_for_calls(1)
    done, _ = await asyncio.wait([waiting], timeout=0.05 * UNIT)
    assert not done  # still stalled
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await stream.aclose()


# -- the embedded hub ---------------------------------------------------------------------


async def test_default_hub_runs_the_bundled_examples_fast() -> None:
    async with Hub() as hub:
        assert {"streaming-example", "async-example"} <= set(hub.agents)
        async with within(10):
            result = await hub.run("streaming-example", QUESTION)
        assert result.status == "completed" and result.last_error is None
        user = {"role": "user", "content": QUESTION}
        assert result.texts == [
            simulated_text([SOCRATES, user], tokens=20),
            simulated_text([PLATO, user], tokens=20),
        ]
        assert "".join(result.deltas) == "".join(result.texts)
        check_ids(result.events)
        assert result.names[:3] == [
            "thread.run.created",
            "thread.run.queued",
            "thread.run.in_progress",
        ]
        # The same run over HTTP, from the URL the hub serves.
        async with aiohttp.ClientSession() as session:
            url = f"{hub.url}/v1/threads/{result.thread_id}/runs/{result.run_id}"
            async with session.get(url) as response:
                assert response.status == 200
                assert (await response.json())["status"] == "completed"
        # Events again, after a cursor: the exact tail.
        tail = [e async for e in hub.events(result, after=5)]
        assert [e.id for e in tail] == [e.id for e in result.events[5:]]
    with pytest.raises(RuntimeError, match="not started"):
        _ = hub.url


async def test_scripted_reply_streams_exactly_the_script() -> None:
    model = ScriptedModel(scripts=[[Say("Hel"), Say("lo", delay=0.01)], ["Bye"]])
    async with Hub(model=model) as hub, within(10):
        result = await hub.run("streaming-example", QUESTION)
    assert result.status == "completed"
    assert result.texts == ["Hello", "Bye"]
    assert result.deltas == ["Hel", "lo", "Bye"]
    assert [m["status"] for m in result.messages] == ["completed", "completed"]
    assert SOCRATES in model.calls[0].messages and PLATO in model.calls[1].messages


async def test_failure_mid_stream_fails_the_run_and_keeps_the_partial_text() -> None:
    model = ScriptedModel([Say("Hello"), Say(" wor"), Fail("boom", status=500)])
    async with Hub(model=model) as hub, within(10):
        result = await hub.run("streaming-example")
    assert result.status == "failed"
    assert result.last_error is not None and "boom" in result.last_error
    assert result.texts == ["Hello wor"]
    assert result.messages[0]["status"] == "incomplete"
    assert result.messages[0]["incomplete_details"] == {"reason": "run_failed"}
    assert result.deltas == ["Hello", " wor"]
    assert result.names[-2:] == ["thread.message.incomplete", "thread.run.failed"]
    check_ids(result.events)
    assert len(model.calls) == 1  # the agent never reached its second completion


async def test_a_stalled_stream_stays_live_until_cancelled() -> None:
    model = ScriptedModel([Say("Hi"), Stall()])
    async with Hub(model=model) as hub, within(10):
        run = await hub.start_run("streaming-example")
        async for event in hub.events(run):
            if event.name == "thread.message.delta":
                break
        await model.wait_for_calls(1)
        assert hub.core.runs.live(run.run_id) is not None
        await hub.cancel(run)
        result = await hub.wait(run)
    assert result.status == "cancelled"
    assert result.texts == ["Hi"] and result.messages[0]["status"] == "incomplete"


async def test_a_stalled_stream_expires() -> None:
    async with Hub(model=ScriptedModel([Stall()]), runs={"expires_after": 0.2 * UNIT}) as hub:
        result = await hub.run("streaming-example", timeout=10 * UNIT)
    assert result.status == "expired"
    assert result.messages == []  # nothing was said: nothing is kept


async def test_a_gate_holds_the_stream_until_opened() -> None:
    gate = Gate()
    async with Hub(model=ScriptedModel([Say("a"), gate, Say("b")])) as hub, within(10):
        run = await hub.start_run("streaming-example")
        await gate.reached()
        seen: list[RunEvent] = []
        async for event in hub.events(run):
            seen.append(event)
            if event.name == "thread.message.delta":
                break
        assert seen[-1].text == "a" and not gate.is_open
        gate.open()
        result = await hub.wait(run)
    assert result.texts == ["ab", "ab"]  # the second completion passes the open gate


async def test_provider_error_status_reaches_openai_clients() -> None:
    model = ScriptedModel([Fail("slow down", status=429)])
    async with Hub(model=model) as hub:
        client = hub.client()
        messages: Any = [{"role": "user", "content": "hi"}]
        with pytest.raises(openai.RateLimitError) as limited:
            await client.chat.completions.create(model="x", messages=messages)
        assert limited.value.status_code == 429
        with pytest.raises(openai.RateLimitError):
            await client.chat.completions.create(model="x", messages=messages, stream=True)
        result = await hub.run("streaming-example", timeout=10 * UNIT)
        assert result.status == "failed"
        assert result.last_error is not None and "slow down" in result.last_error
        assert result.messages == []
    assert client.is_closed()


async def test_inline_agents_and_named_models() -> None:
    hub = Hub(
        agents=[InlineAgent(ECHO, name="echo"), COMPLETES],
        model=None,  # nothing forced: the run's model field picks the provider
        models={"first": ScriptedModel(["one"]), "second": ScriptedModel(["two"])},
    )
    async with hub, within(10):
        assert hub.agents == ["echo", "inline-2"]
        assert (await hub.run("echo", model="first")).texts == ["one"]
        assert (await hub.run("echo", model="second")).texts == ["two"]
        simulated = await hub.run("echo", QUESTION, model="simulated:tokens=5,rate=0")
        assert simulated.texts == [
            simulated_text([{"role": "user", "content": QUESTION}], tokens=5)
        ]
        assert (await hub.run("inline-2", model="first")).texts == ["one"]  # complete()
        thread = simulated.thread_id
        again = await hub.run("echo", "more", thread=thread, model="second")
        assert again.thread_id == thread and again.texts == ["two"]
    assert hub._tmp is None  # the inline agents' folder is gone


async def test_top_level_reexports_are_lazy_and_the_same_objects() -> None:
    assert agent_runtime.EmbeddedHub is Hub
    assert agent_runtime.ScriptedModel is ScriptedModel
    assert {"Say", "Fail", "Stall", "Gate"} <= set(agent_runtime.__all__)
    with pytest.raises(AttributeError):
        _ = agent_runtime.NoSuchThing  # type: ignore[attr-defined]
