"""The simulated model streams its first token without generating the whole reply first,
and its words are unchanged: the same tokens as the whole-reply generation it replaced
(kept here as the reference), for several specs, seeds, conversations and cuts."""

from __future__ import annotations

import itertools
import random
from collections.abc import Mapping, Sequence
from typing import Any

import pytest

from agent_runtime.models import simulated_text
from agent_runtime.models.base import CompletionRequest
from agent_runtime.models.simulated import SimulatedModel
from agent_runtime.models.simulated_text import (
    _PAUSES,
    _TERMINAL,
    _fill,
    _persona,
    _rng,
    _topic,
    apply_stop,
    iter_reply_tokens,
    reply_tokens,
    tokenize,
)

CONVERSATIONS: list[list[dict[str, Any]]] = [
    [{"role": "user", "content": "What is virtue?"}],
    [
        {"role": "system", "content": "respond as though you were Socrates"},
        {"role": "user", "content": "Tell me about justice"},
    ],
    [
        {"role": "system", "content": "Now, respond as though you were Plato"},
        {"role": "user", "content": "hello"},
    ],
]
COUNTS = [0, 1, 2, 3, 7, 12, 60, 100, 333, 2000]


def whole_reply(messages: Sequence[Mapping[str, Any]], seed: int, count: int) -> list[str]:
    """The reply as the simulated model generated it before it was lazy: the whole of
    it, then cut and ended on a full stop (the reference for the words)."""
    if count <= 0:
        return []
    persona = _persona(messages)
    topic = _topic(messages)
    rng = _rng(messages, seed)
    if topic is None:
        opening = rng.choice(persona.greetings)
        topic = persona.default_topic
    else:
        opening = _fill(rng.choice(persona.openings), topic)
    tokens = tokenize(opening)
    while len(tokens) < count:
        body = list(persona.body)
        rng.shuffle(body)
        for sentence in body:
            tokens.extend(tokenize(" " + _fill(sentence, topic)))
            if len(tokens) >= count:
                break
    cut = tokens[:count]
    if count >= 2 and cut[-1] not in _TERMINAL:
        if cut[-1] in _PAUSES:
            cut[-1] = "."
        elif cut[-2] in _TERMINAL:
            cut[-2], cut[-1] = " indeed", cut[-2]
        elif cut[-2] in _PAUSES:
            cut[-2], cut[-1] = " indeed", "."
        else:
            cut[-1] = "."
    return cut


@pytest.mark.parametrize("count", COUNTS)
@pytest.mark.parametrize("seed", [0, 1, 7, 2**32 - 1])
def test_lazy_tokens_are_the_whole_reply(count: int, seed: int) -> None:
    for messages in CONVERSATIONS:
        expected = whole_reply(messages, seed, count)
        assert list(iter_reply_tokens(messages, seed, count)) == expected
        assert reply_tokens(messages, seed, count) == expected


def test_lazy_tokens_on_random_budgets() -> None:
    rng = random.Random(18)
    for _ in range(200):
        messages = rng.choice(CONVERSATIONS)
        seed, count = rng.randrange(1000), rng.randrange(0, 400)
        assert list(iter_reply_tokens(messages, seed, count)) == whole_reply(messages, seed, count)


def _request(spec: str, messages: list[dict[str, Any]], **extra: Any) -> CompletionRequest:
    max_tokens = extra.pop("max_tokens", None)
    return CompletionRequest(model=spec, messages=messages, max_tokens=max_tokens, extra=extra)


async def _choices(spec: str, messages: list[dict[str, Any]], **extra: Any) -> dict[int, Any]:
    """Per choice: its streamed tokens and its finish reason."""
    out: dict[int, Any] = {}
    async for chunk in SimulatedModel(spec).stream(_request(spec, messages, **extra)):
        for choice in chunk.choices:
            tokens, _finish = out.get(choice.index, ([], None))
            if choice.delta.content:
                tokens.append(choice.delta.content)
            out[choice.index] = (tokens, choice.finish_reason or _finish)
    return out


SPECS = [
    "simulated:tokens=100,rate=0",
    "simulated:tokens=1,rate=0",
    "simulated:tokens=2,rate=0,seed=3",
    "simulated:tokens=333,rate=0,seed=5",
    "simulated:tokens=0,rate=0",
]


@pytest.mark.parametrize("spec", SPECS)
async def test_streamed_replies_unchanged(spec: str) -> None:
    """Whole, cut by max_tokens, with n choices, cut by stop: as the whole-reply model."""
    count = int(spec.split("tokens=")[1].split(",")[0])
    seed = int(spec.split("seed=")[1]) if "seed=" in spec else 0
    for messages in CONVERSATIONS:
        whole = whole_reply(messages, seed, count)
        assert await _choices(spec, messages) == {0: (whole, "stop")}
        cut = await _choices(spec, messages, max_tokens=5)
        assert cut == {0: (whole[:5], "length" if count > 5 else "stop")}
        several = await _choices(spec, messages, n=3, max_completion_tokens=40)
        for i in range(3):
            mine = whole_reply(messages, seed + i, count)
            assert several[i] == (mine[:40], "length" if count > 40 else "stop")
        stopped = await _choices(spec, messages, stop=".")
        assert stopped == {0: (apply_stop(whole, "."), "stop")}


async def test_first_token_before_the_rest_is_generated(monkeypatch: pytest.MonkeyPatch) -> None:
    """The first token of a 100,000-token reply is streamed after a sentence or two
    were tokenized, not all of them."""
    calls = itertools.count()
    real = simulated_text.tokenize

    def counting(text: str) -> list[str]:
        next(calls)
        return real(text)

    monkeypatch.setattr(simulated_text, "tokenize", counting)
    spec = "simulated:tokens=100000,rate=0"
    stream = SimulatedModel(spec).stream(_request(spec, CONVERSATIONS[1]))
    first_text = None
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            first_text = chunk.choices[0].delta.content
            break
    await stream.aclose()  # type: ignore[attr-defined]
    assert first_text == whole_reply(CONVERSATIONS[1], 0, 3)[0]
    assert next(calls) <= 3  # the opening and at most two sentences, of thousands
