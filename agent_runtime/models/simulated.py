"""The built-in ``simulated`` model: offline, deterministic, paced like a real one.

It is configured entirely through its model name::

    simulated
    simulated:tokens=120,rate=40,delay=0.5,seed=7

``tokens`` is the length of a reply in tokens (default 60), ``rate`` the tokens per
second (default 20; ``0`` streams as fast as possible), ``delay`` the seconds before the
first token (default 0), ``seed`` varies the text (default 0; an OpenAI ``seed``
parameter in the request overrides it) and ``tools=1`` makes it call a tool whenever the
request offers ``tools`` (default 0: only when ``tool_choice`` forces one). Keys may be
given in any order and any subset. Each has a range, so no name can hold a request open
for ever: tokens 0 to 100,000, rate 0 or 0.1 to 1,000,000, delay 0 to 60 seconds, seed
0 to 2**32 - 1, tools 0 or 1. A bad spec raises
:class:`~agent_runtime.errors.InvalidRequest` naming the key and its accepted range.

The reply reflects the conversation: a system prompt asking for Socrates gets a Socratic
answer (questions, "my friend"), one asking for Plato a Platonic one (the Forms, the
cave), anything else a generic helpful-assistant answer; each mentions the topic of the
last user message. The text is a pure function of (messages, seed, tokens): the same
conversation always gets the same words, and a shorter ``tokens`` gives a prefix of the
same text (ending on a full stop). ``max_tokens`` cuts the reply (``finish_reason``
``"length"``) and ``stop`` sequences end it early, as a real model would.

Tool calls: a request with ``tools`` whose ``tool_choice`` is ``"required"`` or names a
function (``{"type": "function", "function": {"name": …}}``) — or any request with
``tools`` under ``tools=1``, unless its last message is a tool result — gets one tool
call instead of text (``finish_reason`` ``"tool_calls"``): the named (else the first)
function, with arguments built from its JSON schema (strings are the topic of the last
user message, numbers 1, booleans true, enums their first value, defaults kept), streamed
as OpenAI streams them: the call's id and name first, then the arguments in fragments of
a few characters, paced like tokens. ``tool_choice="none"`` never calls a tool.

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
from openai.types.chat.chat_completion_chunk import (
    ChoiceDelta,
    ChoiceDeltaToolCall,
    ChoiceDeltaToolCallFunction,
)
from openai.types.chat.chat_completion_message_tool_call import (
    ChatCompletionMessageToolCall,
    Function,
)

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
MAX_DELAY = 60.0
"""Upper bound of ``delay=`` (seconds): no request is held before its first token longer."""
MIN_RATE = 0.1
MAX_RATE = 1_000_000.0
"""Bounds of a non-zero ``rate=`` (tokens per second): at most 10 s between two tokens."""
MAX_SEED = 2**32 - 1

_RANGES: dict[str, tuple[float, float, str]] = {
    "tokens": (0, MAX_TOKENS, f"0 to {MAX_TOKENS}"),
    "rate": (
        0,
        MAX_RATE,
        f"0 for as fast as possible, or {MIN_RATE:g} to {MAX_RATE:.0f} tokens per second",
    ),
    "delay": (0, MAX_DELAY, f"0 to {MAX_DELAY:g} seconds"),
    "seed": (0, MAX_SEED, f"0 to {MAX_SEED}"),
    "tools": (0, 1, "0 or 1"),
}
"""Each key's accepted values: (lowest, highest, how the error message says it)."""

FinishReason = Literal["stop", "length", "tool_calls"]


# --------------------------------------------------------------------------- spec


@dataclass(frozen=True, slots=True)
class SimulatedConfig:
    """The settings of one simulated model, parsed from its name."""

    tokens: int = 60
    rate: float = 20.0
    delay: float = 0.0
    seed: int = 0
    tools: int = 0

    @property
    def spec(self) -> str:
        """The canonical model name of these settings."""
        spec = (
            f"{SIMULATED}:tokens={self.tokens},rate={self.rate:g},"
            f"delay={self.delay:g},seed={self.seed}"
        )
        return spec + (f",tools={self.tools}" if self.tools else "")


_KEYS = ("tokens", "rate", "delay", "seed", "tools")
_INTEGER_KEYS = frozenset({"tokens", "seed", "tools"})


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
    low, high, accepted = _RANGES[key]
    if number < low:
        raise _bad(spec, f"{key} must not be negative (accepted: {accepted}), got {raw!r}")
    if number > high:
        highest = f"{high:.0f}" if float(high).is_integer() else f"{high:g}"
        raise _bad(spec, f"{key} must be at most {highest} (accepted: {accepted}), got {raw!r}")
    if key == "rate" and 0 < number < MIN_RATE:
        raise _bad(
            spec, f"rate must be 0 or at least {MIN_RATE:g} (accepted: {accepted}), got {raw!r}"
        )
    if integer:
        if not number.is_integer():
            raise _bad(spec, f"{key} must be {kind}, got {raw!r}")
        return int(number)
    return number


def parse_spec(spec: str) -> SimulatedConfig:
    """Parse ``simulated`` or ``simulated:key=value,…`` into a :class:`SimulatedConfig`.

    Raises :class:`~agent_runtime.errors.InvalidRequest` (``param="model"``) naming the
    offending key for an unknown key, a repeated key, a non-number or a value out of its
    range, which the message states (:data:`_RANGES`: tokens 0 to 100000, rate 0 or 0.1 to
    1000000, delay 0 to 60 seconds, seed 0 to 2**32 - 1, tools 0 or 1).
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
        tools=int(values.get("tools", defaults.tools)),
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


_ARGUMENT_FRAGMENT = 6
"""Characters of tool call arguments per streamed fragment."""


@dataclass(frozen=True, slots=True)
class _ToolPlan:
    call_id: str
    name: str
    arguments: str

    def fragments(self) -> list[str]:
        text = self.arguments
        return [text[i : i + _ARGUMENT_FRAGMENT] for i in range(0, len(text), _ARGUMENT_FRAGMENT)]


def _example(schema: Any, topic: str, depth: int = 0) -> Any:
    """A deterministic value fitting a JSON schema (the common subset)."""
    if not isinstance(schema, Mapping) or depth > 6:
        return topic
    if "default" in schema:
        return schema["default"]
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    if kind is None and isinstance(schema.get("properties"), Mapping):
        kind = "object"
    if kind == "integer":
        return 1
    if kind == "number":
        return 1
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    if kind == "array":
        return [_example(schema.get("items"), topic, depth + 1)]
    if kind == "object":
        properties = schema.get("properties")
        if not isinstance(properties, Mapping):
            return {}
        required = schema.get("required")
        names = [n for n in properties if not isinstance(required, list) or n in required]
        return {n: _example(properties[n], topic, depth + 1) for n in names}
    return topic


def _function_tools(tools: Any) -> list[Mapping[str, Any]]:
    if not isinstance(tools, list):
        return []
    out = []
    for tool in tools:
        if isinstance(tool, Mapping) and isinstance(tool.get("function"), Mapping):
            if isinstance(tool["function"].get("name"), str):
                out.append(tool["function"])
    return out


def _plan_tool_call(request: CompletionRequest, always: bool) -> _ToolPlan | None:
    """The tool call the simulated model makes for ``request``, if any (module doc)."""
    functions = _function_tools(request.extra.get("tools"))
    if not functions:
        return None
    choice = request.extra.get("tool_choice")
    if choice == "none":
        return None
    forced: str | None = None
    if isinstance(choice, Mapping):
        function = choice.get("function")
        if isinstance(function, Mapping) and isinstance(function.get("name"), str):
            forced = function["name"]
    messages = request.messages
    answered = bool(messages) and isinstance(messages[-1], Mapping)
    answered = answered and messages[-1].get("role") == "tool"
    if forced is None and choice != "required" and (not always or answered):
        return None
    function = next((f for f in functions if f["name"] == forced), functions[0])
    if forced is not None and function["name"] != forced:
        raise InvalidRequest(
            f"tool_choice names the function {forced!r}, which is not among the tools",
            param="tool_choice",
        )
    arguments = _example(function.get("parameters") or {}, _topic(messages) or "this")
    if not isinstance(arguments, dict):
        arguments = {}
    text = orjson.dumps(arguments).decode()
    digest = hashlib.sha256(
        orjson.dumps([function["name"], text, len(messages)], default=str)
    ).hexdigest()
    return _ToolPlan(call_id=f"call_{digest[:24]}", name=function["name"], arguments=text)


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
        tool = _plan_tool_call(request, bool(self.config.tools))
        tokens, finish = ([], "tool_calls") if tool is not None else self._plan(request)
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
        interval = 1.0 / config.rate if config.rate > 0 else 0.0
        if tool is not None:
            head = ChoiceDeltaToolCall(
                index=0,
                id=tool.call_id,
                type="function",
                function=ChoiceDeltaToolCallFunction(name=tool.name, arguments=""),
            )
            yield chunk(ChoiceDelta(role="assistant", content=None, tool_calls=[head]), None)
            for index, fragment in enumerate(tool.fragments()):
                await _sleep_until(loop, start + (index + 1) * interval)
                piece = ChoiceDeltaToolCall(
                    index=0, function=ChoiceDeltaToolCallFunction(arguments=fragment)
                )
                yield chunk(ChoiceDelta(tool_calls=[piece]), None)
            tokens = tool.fragments()  # counted as completion tokens in the usage
        else:
            yield chunk(ChoiceDelta(role="assistant", content=""), None)
        for index, token in enumerate(tokens if tool is None else ()):
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
        calls: dict[int, list[str]] = {}
        async for chunk in self.stream(request):
            created = chunk.created
            for choice in chunk.choices:
                if choice.delta.content:
                    parts.append(choice.delta.content)
                for call in choice.delta.tool_calls or ():
                    slot = calls.setdefault(call.index, ["", "", ""])
                    slot[0] = call.id or slot[0]
                    if call.function is not None:
                        slot[1] += call.function.name or ""
                        slot[2] += call.function.arguments or ""
                        parts.append(call.function.arguments or "")
                if choice.finish_reason in ("length", "tool_calls"):
                    finish = choice.finish_reason
        if calls:
            tool_calls = [
                ChatCompletionMessageToolCall(
                    id=call_id, type="function", function=Function(name=name, arguments=args)
                )
                for _index, (call_id, name, args) in sorted(calls.items())
            ]
            message = ChatCompletionMessage(role="assistant", content=None, tool_calls=tool_calls)
        else:
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
