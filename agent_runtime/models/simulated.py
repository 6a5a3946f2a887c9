"""The built-in ``simulated`` model: offline, deterministic, paced like a real one.

It is configured entirely through its model name::

    simulated
    simulated:tokens=120,rate=40,delay=0.5,seed=7

``tokens`` is the length of a reply in tokens (default 60), ``rate`` the tokens per
second (default 20; ``0`` streams as fast as possible), ``delay`` the seconds before the
first token (default 0) and ``seed`` varies the text (default 0; an OpenAI ``seed``
parameter in the request overrides it). Keys may be given in any order and any subset; a
bad spec raises :class:`~agent_runtime.errors.InvalidRequest` naming the key.

The reply reflects the conversation: a system prompt asking for Socrates gets a Socratic
answer (questions, "my friend"), one asking for Plato a Platonic one (the Forms, the
cave), anything else a generic helpful-assistant answer; each mentions the topic of the
last user message. The text is a pure function of (messages, seed, tokens): the same
conversation always gets the same words, and a shorter ``tokens`` gives a prefix of the
same text (ending on a full stop). ``max_tokens`` cuts the reply (``finish_reason``
``"length"``) and ``stop`` sequences end it early, as a real model would.

Concurrency and cancellation: a :class:`SimulatedModel` holds no mutable state, so any
number of streams may run on it at once. Pacing uses ``asyncio.sleep`` against deadlines
computed from the stream's start time, so scheduling jitter never accumulates; with
``rate=0`` it still yields to the event loop between chunks. Cancelling the consuming task
(or closing the generator) stops the stream at once; there is nothing to clean up.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import random
import re
import time
import uuid
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from openai.types import CompletionUsage
from openai.types.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionMessage
from openai.types.chat.chat_completion import Choice as CompletionChoice
from openai.types.chat.chat_completion_chunk import Choice as ChunkChoice
from openai.types.chat.chat_completion_chunk import ChoiceDelta

from ..errors import InvalidRequest
from .base import CompletionRequest

__all__ = [
    "SIMULATED",
    "SimulatedConfig",
    "SimulatedModel",
    "is_simulated",
    "parse_spec",
    "simulated_text",
    "tokenize",
]

logger = logging.getLogger(__name__)

SIMULATED = "simulated"
MAX_TOKENS = 100_000
"""Upper bound of ``tokens=``: the reply is built in memory before it streams."""

FinishReason = Literal["stop", "length"]


# --------------------------------------------------------------------------- spec


@dataclass(frozen=True, slots=True)
class SimulatedConfig:
    """The settings of one simulated model, parsed from its name."""

    tokens: int = 60
    rate: float = 20.0
    delay: float = 0.0
    seed: int = 0

    @property
    def spec(self) -> str:
        """The canonical model name of these settings."""
        return (
            f"{SIMULATED}:tokens={self.tokens},rate={self.rate:g},"
            f"delay={self.delay:g},seed={self.seed}"
        )


_KEYS = ("tokens", "rate", "delay", "seed")
_INTEGER_KEYS = frozenset({"tokens", "seed"})


def is_simulated(model: str) -> bool:
    """Whether ``model`` names the simulated model (``simulated`` or ``simulated:…``)."""
    model = model.strip()
    return model == SIMULATED or (model.startswith(SIMULATED + ":") and "::" not in model)


def _bad(spec: str, message: str) -> InvalidRequest:
    return InvalidRequest(f"invalid simulated model {spec!r}: {message}", param="model")


def _parse_value(spec: str, key: str, raw: str) -> int | float:
    integer = key in _INTEGER_KEYS
    kind = "a whole number" if integer else "a number"
    try:
        number = float(raw)
    except ValueError:
        raise _bad(spec, f"{key} must be {kind}, got {raw!r}") from None
    if not math.isfinite(number):
        raise _bad(spec, f"{key} must be {kind}, got {raw!r}")
    if number < 0:
        raise _bad(spec, f"{key} must not be negative, got {raw!r}")
    if integer:
        if not number.is_integer():
            raise _bad(spec, f"{key} must be {kind}, got {raw!r}")
        if key == "tokens" and number > MAX_TOKENS:
            raise _bad(spec, f"tokens must be at most {MAX_TOKENS}, got {raw!r}")
        return int(number)
    return number


def parse_spec(spec: str) -> SimulatedConfig:
    """Parse ``simulated`` or ``simulated:key=value,…`` into a :class:`SimulatedConfig`.

    Raises :class:`~agent_runtime.errors.InvalidRequest` (``param="model"``) naming the
    offending key for an unknown key, a repeated key, a non-number or a negative value.
    """
    text = spec.strip()
    if not is_simulated(text):
        raise _bad(spec, f"the name must be {SIMULATED!r} or start with '{SIMULATED}:'")
    body = text[len(SIMULATED) + 1 :] if text != SIMULATED else ""
    values: dict[str, int | float] = {}
    for item in body.split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, raw = item.partition("=")
        key, raw = key.strip().lower(), raw.strip()
        if not sep:
            raise _bad(spec, f"expected key=value, got {item!r} (keys: {', '.join(_KEYS)})")
        if key not in _KEYS:
            raise _bad(spec, f"unknown key {key!r} (known keys: {', '.join(_KEYS)})")
        if key in values:
            raise _bad(spec, f"key {key!r} is given twice")
        values[key] = _parse_value(spec, key, raw)
    defaults = SimulatedConfig()
    return SimulatedConfig(
        tokens=int(values.get("tokens", defaults.tokens)),
        rate=float(values.get("rate", defaults.rate)),
        delay=float(values.get("delay", defaults.delay)),
        seed=int(values.get("seed", defaults.seed)),
    )


# --------------------------------------------------------------------------- text

_TOKEN_RE = re.compile(r"\s*(?:[\w'’]+|[^\w\s])")
_TERMINAL = frozenset({".", "?", "!"})
_PAUSES = frozenset({",", ";", ":", "—", "-"})


def tokenize(text: str) -> list[str]:
    """Split ``text`` into word-ish tokens (``" my"``, ``" friend"``, ``","``)."""
    return _TOKEN_RE.findall(text)


@dataclass(frozen=True, slots=True)
class _Persona:
    name: str
    default_topic: str
    openings: tuple[str, ...]
    greetings: tuple[str, ...]
    body: tuple[str, ...]


_SOCRATES = _Persona(
    name="socrates",
    default_topic="virtue",
    openings=(
        "Ah, my friend, you ask about {topic}.",
        "Tell me, my friend, before we go further: what do you mean by {topic}?",
        "{Topic}? A fine question, my friend, and not an easy one.",
        "So you wish to speak of {topic}, my friend? Then let us reason together.",
    ),
    greetings=(
        "Greetings, my friend! Shall we examine some question together?",
        "Ah, my friend, what shall we inquire into today?",
    ),
    body=(
        "But tell me, what do we truly mean when we speak of {topic}?",
        "Is it not strange that we use the word every day, yet cannot say what it is?",
        "Suppose a man claimed to understand {topic} perfectly; would he not be able "
        "to teach it to others?",
        "And if he could not teach it, would we say that he knows it at all?",
        "I confess, my friend, that I know only that I know nothing.",
        "Yet perhaps, by questioning together, we may come a little closer to the truth.",
        "Let us examine this, then, step by step, as the midwife helps a birth.",
        "Would you agree that a thing cannot be both good and bad in the same respect?",
        "Then is {topic} good in itself, or only for what it brings us?",
        "You hesitate, and rightly so, for the unexamined life is not worth living.",
        "So let me ask you once more: what is {topic}, really?",
        "Is it something we discover, or something we merely agree upon?",
        "Come, my friend, do not be discouraged; perplexity is the beginning of wisdom.",
        "If you say one thing now and another later, which of the two shall we believe?",
    ),
)

_PLATO = _Persona(
    name="plato",
    default_topic="the Good",
    openings=(
        "As I have written, {topic} is best understood through the Forms.",
        "Consider {topic}, and consider it as a philosopher would.",
        "Let us approach {topic} as my teacher Socrates taught me: by looking past appearances.",
        "Of {topic} I would say what I say of all things: seek the Form, not the shadow.",
    ),
    greetings=(
        "Welcome, friend, to the Academy; let us turn our minds from shadows to the light.",
        "Greetings. Let us begin, as philosophy must, with wonder.",
    ),
    body=(
        "What we perceive with the senses is only a shadow of the true Form of {topic}.",
        "Imagine prisoners chained in a cave, who see nothing but shadows cast upon the wall.",
        "They take the shadows for reality, for they have never seen the light of the sun.",
        "So too with {topic}: its many examples change and fade, but its Form remains "
        "eternal and unchanging.",
        "The philosopher is the one who turns away from the shadows and ascends toward "
        "the light of the Good.",
        "In the Republic I argued that the soul has three parts: reason, spirit and appetite.",
        "Justice in the soul, as in the city, is each part doing its own work.",
        "Knowledge is not learned so much as recollected, for the soul beheld the Forms "
        "before birth.",
        "Thus the lover of wisdom seeks not opinion but true knowledge.",
        "Let us, then, rise along the divided line from mere belief to understanding.",
        "The Good is to the intelligible world what the sun is to the visible one.",
        "Only when philosophers rule, or rulers become philosophers, will the city be just.",
    ),
)

_ASSISTANT = _Persona(
    name="assistant",
    default_topic="this",
    openings=(
        "Sure! Here is a brief overview of {topic}.",
        "Great question about {topic}.",
        "Happy to help with {topic}.",
        "Here is how I would think about {topic}.",
    ),
    greetings=(
        "Hello! How can I help you today?",
        "Hi there! What would you like to talk about?",
    ),
    body=(
        "At its core, {topic} comes down to a few key ideas.",
        "First, it helps to define the terms clearly.",
        "Next, consider the main factors involved and how they relate to each other.",
        "A concrete example often makes this much easier to understand.",
        "There are also some common misconceptions worth avoiding.",
        "If you share more about your goal, I can tailor the details.",
        "In short, {topic} is best approached step by step.",
        "Let me know if you would like sources or a deeper dive.",
        "It is also worth weighing the trade-offs before deciding.",
        "Many people find it useful to start small and build from there.",
        "Keep in mind that the details can vary with context.",
        "I hope this gives you a useful starting point on {topic}.",
    ),
)

_GREETINGS = frozenset(
    {"hi", "hello", "hey", "greetings", "good morning", "good evening", "good afternoon",
     "hi there", "hello there", "hey there", "yo", "howdy"}
)  # fmt: skip

_PREFIXES: tuple[tuple[str, str], ...] = (
    ("please ", ""),
    ("can you ", ""),
    ("could you ", ""),
    ("would you ", ""),
    ("will you ", ""),
    ("tell me about ", ""),
    ("tell me ", ""),
    ("talk about ", ""),
    ("let's talk about ", ""),
    ("explain ", ""),
    ("describe ", ""),
    ("define ", ""),
    ("what is ", ""),
    ("what are ", ""),
    ("what's ", ""),
    ("whats ", ""),
    ("who is ", ""),
    ("who was ", ""),
    ("who are ", ""),
    ("i want to know about ", ""),
    ("i'd like to know about ", ""),
    ("what do you think about ", ""),
    ("what do you think of ", ""),
    ("how do i ", "how to "),
    ("how can i ", "how to "),
    ("how should i ", "how to "),
)

_SWAPS = {
    "i": "you",
    "me": "you",
    "my": "your",
    "mine": "yours",
    "myself": "yourself",
    "i'm": "you're",
    "i've": "you've",
    "am": "are",
    "we": "you",
    "us": "you",
    "our": "your",
}

_MAX_TOPIC_WORDS = 8


def _text_of(content: Any) -> str:
    """The text of an OpenAI message ``content`` (a string or a list of parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                parts.append(part["text"])
            elif isinstance(part, str):
                parts.append(part)
        return " ".join(parts)
    return ""


def _persona(messages: Sequence[Mapping[str, Any]]) -> _Persona:
    prompt = " ".join(
        _text_of(m.get("content"))
        for m in messages
        if isinstance(m, Mapping) and m.get("role") in ("system", "developer")
    ).lower()
    socrates = prompt.rfind("socrat")  # Socrates, Socratic
    plato = prompt.rfind("plato")  # Plato, Platonic
    if socrates < 0 and plato < 0:
        return _ASSISTANT
    return _SOCRATES if socrates > plato else _PLATO


def _topic(messages: Sequence[Mapping[str, Any]]) -> str | None:
    """A short phrase naming what the last user message is about, or None."""
    text = ""
    for message in reversed(messages):
        if isinstance(message, Mapping) and message.get("role") == "user":
            text = _text_of(message.get("content"))
            break
    text = " ".join(text.split()).strip(" \"'“”‘’`").rstrip("?.!…:;, ")
    if not text or text.lower() in _GREETINGS:
        return None
    for _ in range(3):
        lowered = text.lower()
        for prefix, replacement in _PREFIXES:
            if lowered.startswith(prefix) and len(text) > len(prefix):
                text = replacement + text[len(prefix) :].lstrip()
                break
        else:
            break
    words = [_SWAPS.get(w.lower(), w) for w in text.split()[:_MAX_TOPIC_WORDS]]
    topic = " ".join(words).rstrip("?.!…:;, ")
    return topic or None


def _capitalized(text: str) -> str:
    return text[:1].upper() + text[1:]


def _rng(messages: Sequence[Mapping[str, Any]], seed: int) -> random.Random:
    try:
        options = orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS
        plain = [dict(m) if isinstance(m, Mapping) else m for m in messages]
        key = orjson.dumps(plain, option=options, default=str)
    except (TypeError, ValueError):  # e.g. integers beyond 64 bits
        key = repr(list(messages)).encode()
    digest = hashlib.sha256(key + b"\0" + str(seed).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _fill(template: str, topic: str) -> str:
    return template.replace("{Topic}", _capitalized(topic)).replace("{topic}", topic)


def _reply_tokens(messages: Sequence[Mapping[str, Any]], seed: int, count: int) -> list[str]:
    """Exactly ``count`` tokens of the reply to ``messages``, ending on a full stop."""
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
        # The budget ends inside a sentence: end it there, on a full stop.
        if cut[-1] in _PAUSES:
            cut[-1] = "."
        elif cut[-2] in _TERMINAL:
            cut[-2], cut[-1] = " indeed", cut[-2]
        elif cut[-2] in _PAUSES:
            cut[-2], cut[-1] = " indeed", "."
        else:
            cut[-1] = "."
    return cut


def simulated_text(
    messages: Sequence[Mapping[str, Any]], *, seed: int = 0, tokens: int = 60
) -> str:
    """The whole reply the simulated model gives to ``messages`` (no stop, no max_tokens)."""
    return "".join(_reply_tokens(messages, seed, tokens))


def _apply_stop(tokens: list[str], stop: Any) -> list[str]:
    """``tokens`` cut just before the first occurrence of a stop sequence, if any."""
    sequences = [stop] if isinstance(stop, str) else stop if isinstance(stop, list) else []
    sequences = [s for s in sequences if isinstance(s, str) and s]
    if not sequences:
        return tokens
    text = "".join(tokens)
    hits = [i for i in (text.find(s) for s in sequences) if i >= 0]
    if not hits:
        return tokens
    end = min(hits)
    out: list[str] = []
    position = 0
    for token in tokens:
        if position + len(token) <= end:
            out.append(token)
            position += len(token)
            continue
        if end > position:
            out.append(token[: end - position])
        break
    return out


def _prompt_tokens(messages: Sequence[Mapping[str, Any]]) -> int:
    return sum(
        4 + len(tokenize(_text_of(m.get("content")))) for m in messages if isinstance(m, Mapping)
    )


# --------------------------------------------------------------------------- model


class SimulatedModel:
    """A :class:`~agent_runtime.models.base.ModelProvider` that needs no network.

    ``SimulatedModel("simulated:tokens=12,rate=0")`` or
    ``SimulatedModel(SimulatedConfig(tokens=12, rate=0))``.
    """

    name: str = SIMULATED

    def __init__(self, spec: str | SimulatedConfig = SIMULATED) -> None:
        self.config = spec if isinstance(spec, SimulatedConfig) else parse_spec(spec)
        self.spec = spec if isinstance(spec, str) else spec.spec

    def __repr__(self) -> str:
        return f"SimulatedModel({self.config.spec!r})"

    def _plan(self, request: CompletionRequest) -> tuple[list[str], FinishReason]:
        seed = request.extra.get("seed")
        if not isinstance(seed, int) or isinstance(seed, bool):
            seed = self.config.seed
        tokens = _reply_tokens(request.messages, seed, self.config.tokens)
        tokens = _apply_stop(tokens, request.extra.get("stop"))
        limit = request.max_tokens
        if limit is None:
            extra_limit = request.extra.get("max_completion_tokens")
            if isinstance(extra_limit, int) and not isinstance(extra_limit, bool):
                limit = extra_limit
        if limit is not None and len(tokens) > max(limit, 0):
            return tokens[: max(limit, 0)], "length"
        return tokens, "stop"

    async def stream(self, request: CompletionRequest) -> AsyncIterator[ChatCompletionChunk]:
        """Chunks exactly as OpenAI streams them: role, one per token, finish, usage."""
        tokens, finish = self._plan(request)
        options = request.extra.get("stream_options")
        include_usage = isinstance(options, dict) and bool(options.get("include_usage"))
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        created = int(time.time())
        model = request.model or self.spec
        common: dict[str, Any] = {
            "id": completion_id,
            "created": created,
            "model": model,
            "object": "chat.completion.chunk",
        }
        if include_usage:
            common["usage"] = None

        def chunk(delta: ChoiceDelta, finish_reason: FinishReason | None) -> ChatCompletionChunk:
            choice = ChunkChoice(index=0, delta=delta, finish_reason=finish_reason, logprobs=None)
            return ChatCompletionChunk(choices=[choice], **common)

        config = self.config
        loop = asyncio.get_running_loop()
        start = loop.time() + config.delay
        await _sleep_until(loop, start)
        yield chunk(ChoiceDelta(role="assistant", content=""), None)
        interval = 1.0 / config.rate if config.rate > 0 else 0.0
        for index, token in enumerate(tokens):
            await _sleep_until(loop, start + index * interval)
            yield chunk(ChoiceDelta(content=token), None)
        await asyncio.sleep(0)
        yield chunk(ChoiceDelta(), finish)
        if include_usage:
            usage = self._usage(request, len(tokens))
            yield ChatCompletionChunk(choices=[], **{**common, "usage": usage})

    async def complete(self, request: CompletionRequest) -> ChatCompletion:
        """The whole reply, after the same pacing as the stream."""
        parts: list[str] = []
        finish: FinishReason = "stop"
        created = int(time.time())
        async for chunk in self.stream(request):
            created = chunk.created
            for choice in chunk.choices:
                if choice.delta.content:
                    parts.append(choice.delta.content)
                if choice.finish_reason == "length":
                    finish = "length"
        message = ChatCompletionMessage(role="assistant", content="".join(parts))
        return ChatCompletion(
            id=f"chatcmpl-{uuid.uuid4().hex}",
            choices=[
                CompletionChoice(index=0, message=message, finish_reason=finish, logprobs=None)
            ],
            created=created,
            model=request.model or self.spec,
            object="chat.completion",
            usage=self._usage(request, len(parts)),
        )

    @staticmethod
    def _usage(request: CompletionRequest, completion_tokens: int) -> CompletionUsage:
        prompt = _prompt_tokens(request.messages)
        return CompletionUsage(
            prompt_tokens=prompt,
            completion_tokens=completion_tokens,
            total_tokens=prompt + completion_tokens,
        )

    async def aclose(self) -> None:
        """Nothing to release; present so every provider can be closed alike."""


async def _sleep_until(loop: asyncio.AbstractEventLoop, deadline: float) -> None:
    """Sleep until ``deadline`` (loop time); always yields to the loop at least once."""
    remaining = deadline - loop.time()
    await asyncio.sleep(remaining if remaining > 0 else 0)
