"""The built-in simulated model: spec parsing, text, chunk shapes, pacing, cancellation."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from openai.types.chat import ChatCompletionChunk

from agent_runtime.api.errors import error_kind
from agent_runtime.errors import InvalidRequest
from agent_runtime.models.base import CompletionRequest, ModelProvider
from agent_runtime.models.simulated import (
    RATE0_BURST,
    SimulatedConfig,
    SimulatedModel,
    is_simulated,
    parse_spec,
    simulated_text,
    tokenize,
)

UNIT = 0.5  # seconds; every wait in this file is a small multiple of it

SOCRATES: list[dict[str, Any]] = [
    {"role": "system", "content": "respond as though you were Socrates"},
    {"role": "user", "content": "What is justice?"},
]
PLATO: list[dict[str, Any]] = [
    {"role": "system", "content": "Now, respond as though you were Plato"},
    {"role": "user", "content": "What is justice?"},
]
PLAIN: list[dict[str, Any]] = [{"role": "user", "content": "Tell me about the weather in Paris"}]


def request(
    messages: list[dict[str, Any]], model: str = "simulated", **kwargs: Any
) -> CompletionRequest:
    return CompletionRequest(model=model, messages=messages, **kwargs)


async def collect(model: SimulatedModel, req: CompletionRequest) -> list[ChatCompletionChunk]:
    return [chunk async for chunk in model.stream(req)]


def text_of(chunks: list[ChatCompletionChunk]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


# --------------------------------------------------------------------------- spec


def test_spec_defaults() -> None:
    assert parse_spec("simulated") == SimulatedConfig(tokens=60, rate=20.0, delay=0.0, seed=0)
    assert parse_spec("simulated:") == SimulatedConfig()


def test_spec_any_subset_any_order() -> None:
    full = parse_spec("simulated:tokens=12,rate=0,delay=0.25,seed=3")
    assert full == SimulatedConfig(tokens=12, rate=0.0, delay=0.25, seed=3)
    assert parse_spec("simulated:seed=3, delay=0.25 ,rate=0,tokens=12") == full
    assert parse_spec("simulated:rate=7.5") == SimulatedConfig(rate=7.5)
    assert parse_spec(full.spec) == full


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("simulated:speed=3", ["'speed'", "unknown key"]),
        ("simulated:tokens=many", ["tokens", "'many'"]),
        ("simulated:tokens=2.5", ["tokens", "whole number"]),
        ("simulated:rate=fast", ["rate", "'fast'"]),
        ("simulated:rate=-1", ["rate", "negative"]),
        ("simulated:delay=-0.5", ["delay", "negative"]),
        ("simulated:seed=-2", ["seed", "negative"]),
        ("simulated:delay=nan", ["delay", "number"]),
        ("simulated:tokens=3,tokens=4", ["'tokens'", "twice"]),
        ("simulated:tokens", ["key=value", "'tokens'"]),
        ("simulated:tokens=1000000000", ["tokens", "at most"]),
        ("simulatedx", ["simulated"]),
    ],
)
def test_bad_spec_names_the_key(spec: str, words: list[str]) -> None:
    with pytest.raises(InvalidRequest) as info:
        parse_spec(spec)
    assert info.value.param == "model"
    assert error_kind(info.value).status == 400
    for word in words:
        assert word in info.value.message


def test_bad_spec_at_construction() -> None:
    with pytest.raises(InvalidRequest, match="rate"):
        SimulatedModel("simulated:rate=x")


def test_is_simulated() -> None:
    assert is_simulated("simulated")
    assert is_simulated(" simulated:tokens=3 ")
    assert not is_simulated("simulated-7b")
    assert not is_simulated("simulated::x")
    assert not is_simulated("llama-v3p3-70b-instruct")


def test_is_a_model_provider() -> None:
    provider: ModelProvider = SimulatedModel()
    assert provider.name == "simulated"


# --------------------------------------------------------------------------- text


def test_tokens_are_word_pieces() -> None:
    assert tokenize("Ah, my friend, what is it?") == [
        "Ah", ",", " my", " friend", ",", " what", " is", " it", "?"
    ]  # fmt: skip


def test_deterministic_for_same_messages_and_seed() -> None:
    assert simulated_text(SOCRATES) == simulated_text(SOCRATES)
    assert simulated_text(SOCRATES, seed=1) == simulated_text(SOCRATES, seed=1)
    by_seed = {simulated_text(SOCRATES, seed=seed) for seed in range(6)}
    assert len(by_seed) > 1
    other = [SOCRATES[0], {"role": "user", "content": "What is courage?"}]
    assert simulated_text(other) != simulated_text(SOCRATES)


@pytest.mark.parametrize("count", [1, 2, 5, 12, 60, 250])
def test_exact_token_count_and_a_full_stop(count: int) -> None:
    for messages in (SOCRATES, PLATO, PLAIN):
        text = simulated_text(messages, tokens=count)
        assert len(tokenize(text)) == count
        if count >= 2:
            assert text[-1] in ".?!"


def test_socratic_flavour() -> None:
    text = simulated_text(SOCRATES, tokens=120)
    assert "my friend" in text
    assert text.count("?") >= 2
    assert "justice" in text.lower()


def test_platonic_flavour() -> None:
    text = simulated_text(PLATO, tokens=120)
    assert any(word in text for word in ("Form", "cave", "shadow", "the Good", "Republic"))
    assert "my friend" not in text
    assert "justice" in text.lower()


def test_generic_assistant_mentions_the_topic() -> None:
    text = simulated_text(PLAIN, tokens=60)
    assert "the weather in Paris" in text
    assert "my friend" not in text
    assert "Form" not in text


def test_latest_persona_in_system_prompts_wins() -> None:
    both: list[dict[str, Any]] = [SOCRATES[0], PLATO[0], SOCRATES[1]]
    text = simulated_text(both, tokens=120)
    assert "my friend" not in text
    assert any(word in text for word in ("Form", "cave", "shadow", "the Good", "Republic"))


def test_last_user_message_and_content_parts() -> None:
    messages: list[dict[str, Any]] = [
        {"role": "user", "content": "What is courage?"},
        {"role": "assistant", "content": "Let us see."},
        {"role": "user", "content": [{"type": "text", "text": "What is piety?"}]},
    ]
    text = simulated_text(messages, tokens=80)
    assert "piety" in text
    assert "courage" not in text


def test_greeting_without_topic() -> None:
    text = simulated_text([{"role": "user", "content": "Hello!"}], tokens=10)
    assert "Hello!" not in text  # no "about Hello" nonsense
    assert len(tokenize(text)) == 10
    assert simulated_text([], tokens=10)  # no user message at all still answers


# --------------------------------------------------------------------------- chunks


async def test_chunk_shapes_like_openai() -> None:
    model = SimulatedModel("simulated:tokens=12,rate=0")
    chunks = await collect(model, request(SOCRATES, model="simulated:tokens=12,rate=0"))
    assert len(chunks) == 1 + 12 + 1
    first, *tokens, last = chunks
    assert first.choices[0].delta.role == "assistant"
    assert first.choices[0].delta.content == ""
    assert first.choices[0].finish_reason is None
    for chunk in tokens:
        assert chunk.choices[0].delta.content
        assert chunk.choices[0].delta.role is None
        assert chunk.choices[0].finish_reason is None
    assert last.choices[0].delta.content is None
    assert last.choices[0].finish_reason == "stop"
    assert {c.id for c in chunks} == {first.id}
    assert first.id.startswith("chatcmpl-")
    for chunk in chunks:
        assert chunk.object == "chat.completion.chunk"
        assert chunk.model == "simulated:tokens=12,rate=0"
        assert isinstance(chunk.created, int) and chunk.created > 0
        assert chunk.usage is None
        dumped = chunk.model_dump()
        assert dumped["choices"][0]["index"] == 0
        assert ChatCompletionChunk.model_validate(dumped) == chunk
    assert text_of(chunks) == simulated_text(SOCRATES, tokens=12)


async def test_usage_chunk_when_asked() -> None:
    model = SimulatedModel("simulated:tokens=5,rate=0")
    req = request(SOCRATES, extra={"stream_options": {"include_usage": True}})
    chunks = await collect(model, req)
    assert chunks[-2].choices[0].finish_reason == "stop"
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == []
    assert usage_chunk.usage is not None
    assert usage_chunk.usage.completion_tokens == 5
    assert usage_chunk.usage.prompt_tokens > 0
    assert usage_chunk.usage.total_tokens == 5 + usage_chunk.usage.prompt_tokens
    # OpenAI sends "usage": null on every other chunk of such a stream.
    assert all("usage" in c.model_dump(exclude_unset=True) for c in chunks)


async def test_zero_tokens() -> None:
    chunks = await collect(SimulatedModel("simulated:tokens=0,rate=0"), request(SOCRATES))
    assert [c.choices[0].finish_reason for c in chunks] == [None, "stop"]
    assert text_of(chunks) == ""


async def test_max_tokens_cuts_with_length() -> None:
    model = SimulatedModel("simulated:tokens=30,rate=0")
    full = text_of(await collect(model, request(SOCRATES)))
    chunks = await collect(model, request(SOCRATES, max_tokens=7))
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) == 7
    assert chunks[-1].choices[0].finish_reason == "length"
    assert full.startswith(text_of(chunks))
    # A limit above the reply's length changes nothing.
    roomy = await collect(model, request(SOCRATES, max_tokens=31))
    assert roomy[-1].choices[0].finish_reason == "stop"
    assert text_of(roomy) == full
    completion = await model.complete(request(SOCRATES, max_tokens=7))
    assert completion.choices[0].finish_reason == "length"
    assert completion.choices[0].message.content == text_of(chunks)


async def test_stop_sequence_ends_early() -> None:
    model = SimulatedModel("simulated:tokens=40,rate=0")
    full = simulated_text(SOCRATES, tokens=40)
    stop = "friend"
    assert stop in full
    chunks = await collect(model, request(SOCRATES, extra={"stop": [stop]}))
    assert text_of(chunks) == full[: full.index(stop)]
    assert chunks[-1].choices[0].finish_reason == "stop"


async def test_request_seed_overrides_spec_seed() -> None:
    model = SimulatedModel("simulated:tokens=40,rate=0,seed=0")
    seeded = text_of(await collect(model, request(SOCRATES, extra={"seed": 4})))
    assert seeded == simulated_text(SOCRATES, seed=4, tokens=40)


async def test_complete_returns_whole_text_and_usage() -> None:
    model = SimulatedModel("simulated:tokens=20,rate=0")
    completion = await model.complete(request(PLATO, model="simulated:tokens=20,rate=0"))
    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-")
    assert completion.model == "simulated:tokens=20,rate=0"
    choice = completion.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == simulated_text(PLATO, tokens=20)
    assert choice.finish_reason == "stop"
    assert completion.usage is not None and completion.usage.completion_tokens == 20
    completion.model_dump()


# --------------------------------------------------------------------------- pacing


async def test_rate_paces_tokens() -> None:
    loop = asyncio.get_running_loop()
    model = SimulatedModel("simulated:tokens=10,rate=100")
    started = loop.time()
    chunks = await collect(model, request(SOCRATES))
    elapsed = loop.time() - started
    assert len(chunks) == 12
    assert elapsed >= 0.08  # ten tokens at 100/s: the last is due 0.09 s after the first
    assert elapsed < 20 * UNIT  # very loose: only catches a hang


async def test_delay_before_first_token() -> None:
    loop = asyncio.get_running_loop()
    model = SimulatedModel("simulated:tokens=3,rate=0,delay=0.1")
    started = loop.time()
    stream = model.stream(request(SOCRATES))
    first = await anext(stream)
    assert loop.time() - started >= 0.09
    assert first.choices[0].delta.role == "assistant"
    rest = [chunk async for chunk in stream]
    assert len(rest) == 4


async def test_rate_zero_still_yields_to_the_loop() -> None:
    ticks = 0
    stop = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1
            await asyncio.sleep(0)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    await collect(SimulatedModel("simulated:tokens=200,rate=0"), request(SOCRATES))
    stop.set()
    await task
    assert ticks >= 200 // RATE0_BURST  # once per burst of tokens (a fast model's read)


async def test_cancellation_stops_the_stream() -> None:
    model = SimulatedModel("simulated:tokens=1000,rate=2")
    got_first_token = asyncio.Event()
    received: list[ChatCompletionChunk] = []

    async def consume() -> None:
        async for chunk in model.stream(request(SOCRATES)):
            received.append(chunk)
            if chunk.choices and chunk.choices[0].delta.content:
                got_first_token.set()

    task = asyncio.create_task(consume())
    async with asyncio.timeout(4 * UNIT):
        await got_first_token.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(4 * UNIT):
            await task
    count = len(received)
    await asyncio.sleep(0)
    assert len(received) == count
    assert received[-1].choices[0].finish_reason is None


async def test_closing_the_generator_midway() -> None:
    stream = SimulatedModel("simulated:tokens=50,rate=0").stream(request(SOCRATES))
    await anext(stream)
    await anext(stream)
    await stream.aclose()  # type: ignore[attr-defined]
    with pytest.raises(StopAsyncIteration):
        await anext(stream)


async def test_concurrent_streams_share_one_model() -> None:
    model = SimulatedModel("simulated:tokens=15,rate=0")
    results = await asyncio.gather(*(collect(model, request(SOCRATES)) for _ in range(5)))
    texts = {text_of(chunks) for chunks in results}
    assert texts == {simulated_text(SOCRATES, tokens=15)}
    assert len({chunks[0].id for chunks in results}) == 5
