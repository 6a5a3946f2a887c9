"""Structured output from the hub's simulated model through real clients: the ``openai``
SDK's ``parse``, LangChain's ``with_structured_output``, the OpenAI Agents SDK's
``Agent(output_type=...)`` and pydantic-ai's ``output_type``, each pointed at the hub's
``/v1`` with a chat-completions model; plus ``n`` choices through the SDK."""

from __future__ import annotations

from typing import Literal

import agents
import langchain_openai
import pydantic_ai
import pytest
from openai import AsyncOpenAI
from pydantic import BaseModel, Field
from pydantic_ai.models.openai import OpenAIChatModel
from pydantic_ai.providers.openai import OpenAIProvider

from ..clients_helpers import async_sdk
from ..conftest import StartHub, within

MODEL = "simulated:tokens=20,rate=0"


class City(BaseModel):
    name: str
    country: str
    population: int = Field(ge=0)
    capital: bool
    climate: Literal["warm", "cold", "mild"]


class Trip(BaseModel):
    title: str
    cities: list[City]
    budget: float | None
    notes: list[str]


async def test_openai_sdk_parse_and_n_choices(start_hub: StartHub) -> None:
    hub = await start_hub(model=MODEL)
    async with async_sdk(hub) as (client, _requests), within(5):
        parsed = await client.chat.completions.parse(
            model="gpt-4o",
            messages=[{"role": "user", "content": "Plan a trip"}],
            response_format=Trip,
        )
        assert isinstance(parsed.choices[0].message.parsed, Trip)
        several = await client.chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": "Hello"}],
            n=3,
            response_format={"type": "json_object"},
        )
        assert [c.index for c in several.choices] == [0, 1, 2]
        assert all((c.message.content or "").startswith("{") for c in several.choices)
        stream = await client.chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": "Hello"}],
            n=2,
            max_completion_tokens=4,
            stop=["zzz"],
            stream=True,
        )
        finish = {
            c.index: c.finish_reason async for k in stream for c in k.choices if c.finish_reason
        }
        assert finish == {0: "length", 1: "length"}


async def test_langchain_with_structured_output(start_hub: StartHub) -> None:
    hub = await start_hub(model=MODEL)
    llm = langchain_openai.ChatOpenAI(
        model="gpt-4o", base_url=hub.url + "/v1", api_key="unused", max_retries=0
    )
    try:
        async with within(5):
            trip = await llm.with_structured_output(Trip).ainvoke("Plan a trip to Italy")
            # The other method: a forced tool call, whose arguments fit the schema too.
            city = await llm.with_structured_output(City, method="function_calling").ainvoke(
                "A city in Italy"
            )
    finally:
        await llm.root_async_client.close()
    assert isinstance(trip, Trip)
    assert isinstance(city, City)


async def test_openai_agents_output_type(start_hub: StartHub) -> None:
    hub = await start_hub(model=MODEL)
    client = AsyncOpenAI(base_url=hub.url + "/v1", api_key="unused", max_retries=0)
    agent = agents.Agent(
        name="planner",
        instructions="Plan trips.",
        model=agents.OpenAIChatCompletionsModel(model="gpt-4o", openai_client=client),
        output_type=Trip,
    )
    try:
        async with within(5):
            result = await agents.Runner.run(
                agent, "Plan a trip to Italy", run_config=agents.RunConfig(tracing_disabled=True)
            )
    finally:
        await client.close()
    assert isinstance(result.final_output, Trip)


@pytest.mark.parametrize("mode", ["native", "tool"])
async def test_pydantic_ai_output_type(start_hub: StartHub, mode: str) -> None:
    hub = await start_hub(model=MODEL)
    client = AsyncOpenAI(base_url=hub.url + "/v1", api_key="unused", max_retries=0)
    model = OpenAIChatModel("gpt-4o", provider=OpenAIProvider(openai_client=client))
    # NativeOutput: response_format json_schema; a plain type: a forced output tool call.
    output = pydantic_ai.NativeOutput(Trip) if mode == "native" else Trip
    agent = pydantic_ai.Agent(model, output_type=output)
    try:
        async with within(5):
            result = await agent.run("Plan a trip to Italy")
    finally:
        await client.close()
    assert isinstance(result.output, Trip)
