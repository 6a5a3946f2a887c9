"""``POST /v1/chat/completions`` of a real hub through the official ``openai`` SDK, sync and
async, streaming or not. (``test_chat_api.py`` covers the endpoint's details against a
stub router; here it is the hub's own model router, on both URL prefixes.)"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from agent_runtime.models.simulated import simulated_text

from ..clients_helpers import async_sdk, sync_sdk
from ..conftest import QUESTION, SOCRATES, StartHub, within

MESSAGES: Any = [SOCRATES, {"role": "user", "content": QUESTION}]
MODEL = "simulated:tokens=12,rate=0"
TEXT = simulated_text(MESSAGES, tokens=12)


async def test_sync_client_streaming_and_not(start_hub: StartHub) -> None:
    hub = await start_hub(model=None)

    def scenario() -> None:
        with sync_sdk(hub) as (client, requests):
            stream = client.chat.completions.create(model=MODEL, messages=MESSAGES, stream=True)
            with stream:
                chunks = list(stream)
            assert len(chunks) == 14  # the role, one per token, the finish
            assert chunks[0].choices[0].delta.role == "assistant"
            assert chunks[-1].choices[0].finish_reason == "stop"
            assert len({c.id for c in chunks}) == 1
            assert "".join(c.choices[0].delta.content or "" for c in chunks) == TEXT

            completion = client.chat.completions.create(model=MODEL, messages=MESSAGES)
            assert completion.choices[0].message.content == TEXT
            assert completion.choices[0].message.role == "assistant"
            assert completion.usage is not None and completion.usage.completion_tokens == 12
            assert requests.count("POST", "/v1/chat/completions") == 2

    async with within(5):
        await asyncio.to_thread(scenario)
    assert "my friend" in TEXT


@pytest.mark.parametrize("prefix", ["/v1", "/api/v1"])
async def test_async_client_streaming_with_usage(start_hub: StartHub, prefix: str) -> None:
    hub = await start_hub(model=None)
    async with async_sdk(hub, prefix) as (client, _requests), within(5):
        stream = await client.chat.completions.create(
            model=MODEL,
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
            max_tokens=5,
        )
        chunks = [chunk async for chunk in stream]
        finish = [c.choices[0].finish_reason for c in chunks if c.choices]
        assert finish[-1] == "length"
        assert chunks[-1].choices == [] and chunks[-1].usage is not None
        assert chunks[-1].usage.completion_tokens == 5
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert TEXT.startswith(text) and text != TEXT


async def test_the_hubs_forced_model_serves_any_requested_name(start_hub: StartHub) -> None:
    """``--model simulated…`` forces every completion, the chat endpoint's included: a
    client asking for a provider's model gets the simulated one, without a key."""
    hub = await start_hub(model=MODEL)
    async with async_sdk(hub) as (client, _requests), within(5):
        completion = await client.chat.completions.create(
            model="fireworks::llama-v3p3-70b-instruct", messages=MESSAGES
        )
    assert completion.choices[0].message.content == TEXT
