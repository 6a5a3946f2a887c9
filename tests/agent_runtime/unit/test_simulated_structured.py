"""The simulated model's structured output (``response_format``) and its ``n`` choices,
streamed and not; schemas as pydantic emits them, instances checked with ``jsonschema``."""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Any, Literal

import jsonschema
import pytest
from openai.types.chat import ChatCompletionChunk
from pydantic import BaseModel, Field

from agent_runtime.errors import InvalidRequest
from agent_runtime.models.base import CompletionRequest
from agent_runtime.models.simulated import SimulatedModel

PLAIN: list[dict[str, Any]] = [{"role": "user", "content": "Tell me about the weather in Paris"}]
FAST = "simulated:tokens=20,rate=0"


class Colour(StrEnum):
    RED = "red"
    BLUE = "blue"


class Address(BaseModel):
    city: str
    zip_code: str = Field(min_length=5, max_length=5)


class Node(BaseModel):
    label: str
    children: list[Node] = []


class Person(BaseModel):
    name: str
    age: int = Field(ge=0, le=130)
    height: float = Field(gt=0, lt=3)
    member: bool
    colour: Colour
    mood: Literal["happy", "sad"]
    tags: list[str] = Field(min_length=1, max_length=4)
    address: Address
    previous: Address | None
    nickname: str | None = None
    tree: Node
    score: int | float


def schema_format(model: type[BaseModel]) -> dict[str, Any]:
    return {
        "type": "json_schema",
        "json_schema": {"name": model.__name__, "schema": model.model_json_schema()},
    }


async def chunks_of(model: SimulatedModel, req: CompletionRequest) -> list[ChatCompletionChunk]:
    return [chunk async for chunk in model.stream(req)]


def texts_by_choice(chunks: list[ChatCompletionChunk]) -> dict[int, str]:
    out: dict[int, str] = {}
    for chunk in chunks:
        for choice in chunk.choices:
            out[choice.index] = out.get(choice.index, "") + (choice.delta.content or "")
    return out


def finishes(chunks: list[ChatCompletionChunk]) -> dict[int, str]:
    return {c.index: c.finish_reason for chunk in chunks for c in chunk.choices if c.finish_reason}


@pytest.mark.parametrize("seed", range(12))
async def test_json_schema_gives_a_valid_instance(seed: int) -> None:
    schema = Person.model_json_schema()
    req = CompletionRequest(
        model="simulated",
        messages=PLAIN,
        extra={"response_format": schema_format(Person), "seed": seed},
    )
    whole = await SimulatedModel(FAST).complete(req)
    value = json.loads(whole.choices[0].message.content or "")
    jsonschema.validate(value, schema)
    Person.model_validate(value)
    streamed = texts_by_choice(await chunks_of(SimulatedModel(FAST), req))
    assert streamed == {0: whole.choices[0].message.content}, "deterministic, streamed or not"


async def test_json_schema_depends_on_the_seed() -> None:
    def req(seed: int) -> CompletionRequest:
        return CompletionRequest(
            model="simulated",
            messages=PLAIN,
            extra={"response_format": schema_format(Person), "seed": seed},
        )

    texts = {
        (await SimulatedModel(FAST).complete(req(seed))).choices[0].message.content
        for seed in range(6)
    }
    assert len(texts) > 1


async def test_json_object_gives_an_object() -> None:
    req = CompletionRequest(
        model="simulated", messages=PLAIN, extra={"response_format": {"type": "json_object"}}
    )
    value = json.loads((await SimulatedModel(FAST).complete(req)).choices[0].message.content or "")
    assert isinstance(value, dict) and "Paris" in value["answer"]


async def test_text_format_is_the_plain_reply() -> None:
    plain = CompletionRequest(model="simulated", messages=PLAIN)
    text = CompletionRequest(
        model="simulated", messages=PLAIN, extra={"response_format": {"type": "text"}}
    )
    model = SimulatedModel(FAST)
    assert (await model.complete(plain)).choices[0].message.content == (
        await model.complete(text)
    ).choices[0].message.content


@pytest.mark.parametrize(
    "response_format",
    [{"type": "xml"}, {"type": "json_schema"}, {"type": "json_schema", "json_schema": {}}, "json"],
)
async def test_bad_response_format_is_invalid(response_format: Any) -> None:
    req = CompletionRequest(
        model="simulated", messages=PLAIN, extra={"response_format": response_format}
    )
    with pytest.raises(InvalidRequest) as caught:
        await SimulatedModel(FAST).complete(req)
    assert caught.value.param is not None and caught.value.param.startswith("response_format")


@pytest.mark.parametrize("key", ["max_tokens", "max_completion_tokens"])
async def test_limits_cut_structured_output_with_length(key: str) -> None:
    extra: dict[str, Any] = {"response_format": schema_format(Person)}
    if key == "max_tokens":
        req = CompletionRequest(model="simulated", messages=PLAIN, max_tokens=3, extra=extra)
    else:
        req = CompletionRequest(model="simulated", messages=PLAIN, extra={**extra, key: 3})
    chunks = await chunks_of(SimulatedModel(FAST), req)
    assert finishes(chunks) == {0: "length"}
    assert len(texts_by_choice(chunks)[0]) == 12  # three tokens of four characters
    whole = await SimulatedModel(FAST).complete(req)
    assert whole.choices[0].finish_reason == "length"


async def test_stop_cuts_structured_output() -> None:
    req = CompletionRequest(
        model="simulated",
        messages=PLAIN,
        extra={"response_format": {"type": "json_object"}, "stop": ["Paris"]},
    )
    text = (await SimulatedModel(FAST).complete(req)).choices[0].message.content or ""
    assert text.startswith('{"answer":') and "Paris" not in text


async def test_n_gives_several_choices_streamed_and_not() -> None:
    req = CompletionRequest(model="simulated", messages=PLAIN, max_tokens=8, extra={"n": 3})
    chunks = await chunks_of(SimulatedModel(FAST), req)
    streamed = texts_by_choice(chunks)
    assert sorted(streamed) == [0, 1, 2]
    assert finishes(chunks) == {0: "length", 1: "length", 2: "length"}
    whole = await SimulatedModel(FAST).complete(req)
    assert [c.index for c in whole.choices] == [0, 1, 2]
    assert {c.index: c.message.content for c in whole.choices} == streamed
    assert whole.usage is not None and whole.usage.completion_tokens == 24
    single = CompletionRequest(model="simulated", messages=PLAIN, max_tokens=8)
    assert streamed[0] == (await SimulatedModel(FAST).complete(single)).choices[0].message.content


async def test_n_out_of_range_is_invalid() -> None:
    req = CompletionRequest(model="simulated", messages=PLAIN, extra={"n": 0})
    with pytest.raises(InvalidRequest):
        await SimulatedModel(FAST).complete(req)
