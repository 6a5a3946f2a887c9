"""The Responses API through the clients that speak it by default: the OpenAI Agents SDK
(its default model class, ``OpenAIResponsesModel``) on a plain model and on an agent,
streamed, with a function tool round trip; LangChain's ``ChatOpenAI`` with
``use_responses_api=True``; and a tool call streamed as a ``function_call`` item."""

from __future__ import annotations

from typing import Any

import agents
import langchain_openai
from openai import AsyncOpenAI
from pydantic import BaseModel

from agent_runtime.api.responses import RESPONSES

from ..clients_helpers import async_sdk, platonic, socratic
from ..conftest import FAST_MODEL, QUESTION, StartHub, within

RUN_CONFIG = agents.RunConfig(tracing_disabled=True)


def responses_agent(client: AsyncOpenAI, model: str, **kwargs: Any) -> agents.Agent[Any]:
    return agents.Agent(
        name="assistant",
        instructions="Answer briefly.",
        model=agents.OpenAIResponsesModel(model=model, openai_client=client),
        **kwargs,
    )


async def stream_agent(agent: agents.Agent[Any], text: str) -> tuple[str, Any]:
    """Run ``agent`` streamed; the text of its raw deltas and the result."""
    result = agents.Runner.run_streamed(agent, text, run_config=RUN_CONFIG)
    deltas = []
    async for event in result.stream_events():
        if event.type == "raw_response_event" and event.data.type == "response.output_text.delta":
            deltas.append(event.data.delta)
    return "".join(deltas), result


async def test_openai_agents_on_a_plain_model_streamed(start_hub: StartHub) -> None:
    hub = await start_hub(model=FAST_MODEL)  # "simulated", at full speed
    client = AsyncOpenAI(base_url=hub.url + "/v1", api_key="unused", max_retries=0)
    try:
        async with within(10):
            text, result = await stream_agent(responses_agent(client, "simulated"), QUESTION)
    finally:
        await client.close()
    assert text and result.final_output == text


async def test_openai_agents_on_an_agent_streamed(start_hub: StartHub) -> None:
    hub = await start_hub(model=FAST_MODEL)
    client = AsyncOpenAI(base_url=hub.url + "/v1", api_key="unused", max_retries=0)
    try:
        async with within(10):
            agent = responses_agent(client, "agent:streaming-example")
            text, result = await stream_agent(agent, QUESTION)
    finally:
        await client.close()
    # Both of the example's replies stream; the final output is the last message.
    assert socratic(text) and platonic(result.final_output)
    assert text.endswith(result.final_output)


async def test_openai_agents_function_tool_round_trip(start_hub: StartHub) -> None:
    hub = await start_hub(model=None)
    calls: list[str] = []

    @agents.function_tool
    def lookup(topic: str) -> str:
        """Look a topic up."""
        calls.append(topic)
        return f"notes on {topic}"

    client = AsyncOpenAI(base_url=hub.url + "/v1", api_key="unused", max_retries=0)
    try:
        async with within(10):
            agent = responses_agent(client, "simulated:tokens=20,rate=0,tools=1", tools=[lookup])
            text, result = await stream_agent(agent, QUESTION)
    finally:
        await client.close()
    assert len(calls) == 1  # the model called the tool, then answered its result
    assert text and result.final_output and text.endswith(result.final_output)


async def test_function_call_items_stream(start_hub: StartHub) -> None:
    hub = await start_hub(model=None)
    tool = {
        "type": "function",
        "name": "lookup",
        "description": "Look a topic up.",
        "parameters": {"type": "object", "properties": {"topic": {"type": "string"}}},
    }
    async with async_sdk(hub) as (client, _), within(10):
        async with client.responses.stream(
            model=FAST_MODEL, input=QUESTION, tools=[tool], tool_choice="required"
        ) as stream:
            events = [event async for event in stream]
            final = await stream.get_final_response()
    kinds = [e.type for e in events]
    assert "response.function_call_arguments.delta" in kinds
    [call] = [item for item in final.output if item.type == "function_call"]
    assert call.name == "lookup" and call.status == "completed"
    deltas = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    done = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert deltas == call.arguments == done[0].arguments
    assert "topic" in call.arguments


def responses_llm(url: str, model: str) -> langchain_openai.ChatOpenAI:
    """LangChain's chat model on the hub's Responses API (``use_responses_api``)."""
    return langchain_openai.ChatOpenAI(
        model=model,
        base_url=url + "/v1",
        api_key="unused",
        max_retries=0,
        use_responses_api=True,
    )


async def test_langchain_use_responses_api(start_hub: StartHub) -> None:
    hub = await start_hub(model=FAST_MODEL)
    llm = responses_llm(hub.url, "agent:streaming-example")
    try:
        async with within(10):
            reply = await llm.ainvoke(QUESTION)
            chunks = [chunk async for chunk in llm.astream(QUESTION)]
    finally:
        await llm.root_async_client.close()
    texts = [block["text"] for block in reply.content if isinstance(block, dict)]
    assert len(texts) == 2 and socratic(texts[0]) and platonic(texts[1])
    assert "".join(chunk.text for chunk in chunks) == "".join(texts)  # the model is seeded


async def test_previous_response_id_carries_tool_calls_and_outputs(start_hub: StartHub) -> None:
    """A plain model continued with ``previous_response_id`` gets the chain's inputs and
    outputs, its function calls included, then the new input (OpenAI's semantics)."""
    hub = await start_hub(model=None)
    tool = {"type": "function", "name": "lookup", "parameters": {"type": "object"}}
    model = "simulated:tokens=20,rate=0,tools=1"
    async with async_sdk(hub) as (client, _), within(10):
        first = await client.responses.create(model=model, input=QUESTION, tools=[tool])
        [call] = [item for item in first.output if item.type == "function_call"]
        second = await client.responses.create(
            model=model,
            previous_response_id=first.id,
            input=[{"type": "function_call_output", "call_id": call.call_id, "output": "42"}],
            tools=[tool],
        )
        assert second.status == "completed" and second.output_text  # answered the result
        service = hub.server.app[RESPONSES] if hub.server.app is not None else None
        assert service is not None
        thread_id = second.conversation.id if second.conversation else ""
        chain = await service.chain(thread_id, second.id)
    kinds = [(item.get("type"), item.get("role")) for item in chain]
    assert kinds == [
        ("message", "user"),
        ("function_call", None),
        ("function_call_output", None),
        ("message", "assistant"),
    ]


class Trip(BaseModel):
    city: str
    days: int


async def test_structured_output_through_text_format(start_hub: StartHub) -> None:
    """``text.format`` (a JSON schema) reaches a plain model as ``response_format``: the
    Agents SDK's ``output_type`` and LangChain's structured output parse the answer."""
    hub = await start_hub(model=FAST_MODEL)
    client = AsyncOpenAI(base_url=hub.url + "/v1", api_key="unused", max_retries=0)
    llm = responses_llm(hub.url, "simulated")
    try:
        async with within(10):
            agent = responses_agent(client, "simulated", output_type=Trip)
            result = await agents.Runner.run(agent, "Plan a trip", run_config=RUN_CONFIG)
            trip = await llm.with_structured_output(Trip).ainvoke("Plan a trip")
    finally:
        await client.close()
        await llm.root_async_client.close()
    assert isinstance(result.final_output, Trip)
    assert isinstance(trip, Trip)
