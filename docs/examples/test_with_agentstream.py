"""Testing a streaming client or UI against agentstream, with its pytest plugin.

Copy this file into your tests. It needs agentstream, pytest and pytest-asyncio (from a
checkout: ``pip install -e '.[test]'``); the plugin installed with agentstream provides
the fixtures ``agentstream_hub`` (the bundled example agents on the fast simulated
model), ``agentstream_hub_factory`` (hubs with your agents and models) and
``scripted_model``. It works with pytest-asyncio in
strict mode (its default) and in auto mode.

Every hub here is a real one on 127.0.0.1 and a free port (``hub.url``), started on the
test's event loop and stopped at the end of the test.
"""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from agent_runtime.testing import Fail, Gate, InlineAgent, Say, ScriptedModel, Stall

pytestmark = pytest.mark.asyncio

TIMEOUT = 10.0
"""Seconds; every wait below is bounded."""

SHOUTER = """
async def run(env):
    messages = await env.alist_messages()
    handler = await env.acompletion(messages, stream=True)
    text = ""
    async for chunk in handler:
        text += chunk.choices[0].delta.content or "" if chunk.choices else ""
    await env.aadd_message("assistant", text.upper())
"""


async def test_the_example_agent_streams_its_replies(agentstream_hub):
    result = await agentstream_hub.run("streaming-example", "What is virtue?")

    assert result.status == "completed"
    assert len(result.texts) == 2  # Socrates, then Plato
    assert "".join(result.deltas) == "".join(result.texts)
    assert result.names[-1] == "thread.run.completed"


async def test_a_browser_like_client_reads_the_sse_stream(agentstream_hub):
    run = await agentstream_hub.start_run("streaming-example", "hello")
    url = f"{agentstream_hub.url}/v1/threads/{run.thread_id}/stream/{run.run_id}"

    text = ""
    async with asyncio.timeout(TIMEOUT), aiohttp.ClientSession() as session:
        async with session.get(url) as response:
            assert response.headers["Content-Type"].startswith("text/event-stream")
            async for line in response.content:  # the server ends the response at the end
                if line.startswith(b"data: "):
                    event = json.loads(line[6:])
                    if event["event"] == "thread.message.delta":
                        text += event["data"]["delta"]["content"][0]["text"]["value"]

    result = await agentstream_hub.wait(run)
    assert text == "".join(result.texts)


async def test_the_openai_sdk_streams_chat_completions(agentstream_hub):
    client = agentstream_hub.client()  # closed with the hub
    stream = await client.chat.completions.create(
        model="simulated",
        messages=[{"role": "user", "content": "What is courage?"}],
        stream=True,
    )
    text = "".join([chunk.choices[0].delta.content or "" async for chunk in stream])
    assert "courage" in text


async def test_a_scripted_reply_is_exactly_what_streams(agentstream_hub_factory, scripted_model):
    scripted_model.add_script(Say("Hello"), Say(", world", delay=0.01))  # first completion
    scripted_model.add_script(Say("Goodbye"))  # second completion
    hub = await agentstream_hub_factory(model=scripted_model)

    result = await hub.run("streaming-example")

    assert result.texts == ["Hello, world", "Goodbye"]
    assert result.deltas == ["Hello", ", world", "Goodbye"]
    assert len(scripted_model.calls) == 2


async def test_a_provider_failing_mid_stream_fails_the_run(agentstream_hub_factory):
    model = ScriptedModel([Say("Partial"), Say(" answ"), Fail("upstream died", status=502)])
    hub = await agentstream_hub_factory(model=model)

    result = await hub.run("streaming-example")

    assert result.status == "failed"
    assert "upstream died" in result.last_error
    assert result.texts == ["Partial answ"]  # the partial text is kept...
    assert result.messages[0]["status"] == "incomplete"  # ...as an incomplete message
    assert result.names[-2:] == ["thread.message.incomplete", "thread.run.failed"]


async def test_a_provider_refusal_reaches_sdk_clients_with_its_status(agentstream_hub_factory):
    hub = await agentstream_hub_factory(model=ScriptedModel([Fail("slow down", status=429)]))
    client = hub.client()

    with pytest.raises(Exception) as caught:
        await client.chat.completions.create(
            model="anything", messages=[{"role": "user", "content": "hi"}]
        )
    assert getattr(caught.value, "status_code", None) == 429


async def test_a_gate_holds_the_stream_mid_way(agentstream_hub_factory):
    gate = Gate()
    hub = await agentstream_hub_factory(model=ScriptedModel([Say("Thinking"), gate, Say("...")]))
    run = await hub.start_run("streaming-example")

    async with asyncio.timeout(TIMEOUT):
        await gate.reached()  # the model has streamed "Thinking" and waits
        async for event in hub.events(run):
            if event.name == "thread.message.delta":
                assert event.text == "Thinking"  # what a UI shows mid-stream
                break
        gate.open()
        result = await hub.wait(run)

    assert result.texts == ["Thinking...", "Thinking..."]


async def test_a_stalled_model_and_a_cancel(agentstream_hub_factory):
    hub = await agentstream_hub_factory(model=ScriptedModel([Say("Hmm"), Stall()]))
    run = await hub.start_run("streaming-example")

    async with asyncio.timeout(TIMEOUT):
        async for event in hub.events(run):
            if event.name == "thread.message.delta":  # the model then stalls for ever
                await hub.cancel(run)
        result = await hub.wait(run)

    assert result.status == "cancelled"
    assert result.texts == ["Hmm"]


async def test_your_own_agent_inline(agentstream_hub_factory):
    hub = await agentstream_hub_factory(
        agents=[InlineAgent(SHOUTER, name="shouter")],
        model=ScriptedModel([Say("hello "), Say("there")]),
    )

    result = await hub.run("shouter", "say hello")

    assert result.status == "completed"
    assert result.texts == ["HELLO THERE"]
