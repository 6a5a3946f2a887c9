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
same text (ending on a full stop). ``max_tokens`` (or ``max_completion_tokens``) cuts
the reply (``finish_reason`` ``"length"``) and ``stop`` sequences end it early, as a real
model would. ``n`` (1 to 128) gives that many choices, choice ``i`` answering with seed
``seed + i``.

Structured output (:mod:`.simulated_json`): ``response_format`` ``{"type":
"json_object"}`` gets a JSON object (``{"answer": "<the reply>"}``), and ``{"type":
"json_schema", "json_schema": {"schema": …}}`` an instance valid against the schema,
deterministic from the conversation and the seed, streamed a few characters per token.
``max_tokens`` and ``stop`` cut it as they cut text (so it may no longer parse, as with a
real model).

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
``rate=0`` it still yields to the event loop between bursts of :data:`RATE0_BURST` tokens
(what a fast model's network read delivers at once). Cancelling the consuming task
(or closing the generator) stops the stream at once; there is nothing to clean up.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any, Literal

from openai.types import CompletionUsage
from openai.types.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionMessage
from openai.types.chat.chat_completion import Choice as CompletionChoice
from openai.types.chat.chat_completion_chunk import Choice as ChunkChoice
from openai.types.chat.chat_completion_chunk import (
    ChoiceDelta,
    ChoiceDeltaToolCall,
    ChoiceDeltaToolCallFunction,
)

from ..errors import InvalidRequest
from ..tool_calls import ToolCallFold
from .base import CompletionRequest
from .simulated_json import structured_text
from .simulated_text import (
    apply_stop,
    iter_reply_tokens,
    plan_tool_call,
    prompt_tokens,
    reply_tokens,
    simulated_text,
    stop_sequences,
    tokenize,
)

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
"""Upper bound of ``tokens=``. A plain reply is made as it streams (its first token
comes at once); a structured one, or one cut by ``stop``, is built in memory first."""
MAX_DELAY = 60.0
"""Upper bound of ``delay=`` (seconds): no request is held before its first token longer."""
MIN_RATE = 0.1
MAX_RATE = 1_000_000.0
"""Bounds of a non-zero ``rate=`` (tokens per second): at most 10 s between two tokens."""
MAX_SEED = 2**32 - 1
RATE0_BURST = 64
"""With ``rate=0``, tokens (text, or tool call fragments) come in bursts of this many per
loop turn, as a fast model's chunks do from one network read (so the hub publishes them
together, one flush each)."""
MAX_CHOICES = 128
"""Upper bound of ``n`` (choices per completion), as OpenAI's."""
_JSON_PIECE = 4
"""Characters of structured (JSON) output per streamed token."""

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

    def _seed(self, request: CompletionRequest) -> int:
        seed = request.extra.get("seed")
        if not isinstance(seed, int) or isinstance(seed, bool):
            seed = self.config.seed
        return seed

    def _plan(self, request: CompletionRequest, seed: int) -> _Plan:
        """One choice's tokens: the reply (or the JSON its ``response_format`` asks for),
        cut by ``stop`` then by ``max_tokens``/``max_completion_tokens``.

        A plain reply without ``stop`` is made token by token as it streams (its first
        token comes without the rest being generated); a structured reply, or one that
        ``stop`` may cut, is made whole first."""
        limit = request.max_tokens
        if limit is None:
            extra_limit = request.extra.get("max_completion_tokens")
            if isinstance(extra_limit, int) and not isinstance(extra_limit, bool):
                limit = extra_limit
        structured = structured_text(request.extra.get("response_format"), request.messages, seed)
        stop = request.extra.get("stop")
        if structured is None and not stop_sequences(stop):
            length = max(self.config.tokens, 0)
            lazy = iter_reply_tokens(request.messages, seed, length)
            if limit is not None and length > max(limit, 0):
                return _Plan(itertools.islice(lazy, max(limit, 0)), max(limit, 0), "length")
            return _Plan(lazy, length, "stop")
        if structured is None:
            tokens = reply_tokens(request.messages, seed, self.config.tokens)
        else:
            tokens = _json_tokens(structured)
        tokens = apply_stop(tokens, stop)
        if limit is not None and len(tokens) > max(limit, 0):
            tokens = tokens[: max(limit, 0)]
            return _Plan(iter(tokens), len(tokens), "length")
        return _Plan(iter(tokens), len(tokens), "stop")

    @staticmethod
    def _choices(request: CompletionRequest) -> int:
        n = request.extra.get("n")
        if n is None:
            return 1
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_CHOICES:
            raise InvalidRequest(f"n must be a whole number from 1 to {MAX_CHOICES}", param="n")
        return n

    async def stream(self, request: CompletionRequest) -> AsyncIterator[ChatCompletionChunk]:
        """Chunks exactly as OpenAI streams them: role, one per token, finish, usage.

        With ``n`` choices, each token position yields one chunk per choice (choice ``i``
        is the reply for seed ``seed + i``), and each choice ends with its own finish chunk.
        """
        n = self._choices(request)
        tool = plan_tool_call(request, bool(self.config.tools))
        seed = self._seed(request)
        if tool is not None:
            plans = [_Plan(iter(()), 0, "tool_calls") for _ in range(n)]
        else:
            plans = [self._plan(request, seed + i) for i in range(n)]
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

        def chunk(
            delta: ChoiceDelta, finish_reason: FinishReason | None, index: int = 0
        ) -> ChatCompletionChunk:
            choice = ChunkChoice(
                index=index, delta=delta, finish_reason=finish_reason, logprobs=None
            )
            return ChatCompletionChunk(choices=[choice], **common)

        config = self.config
        loop = asyncio.get_running_loop()
        start = loop.time() + config.delay
        await _sleep_until(loop, start)
        interval = 1.0 / config.rate if config.rate > 0 else 0.0
        completion_tokens = 0
        if tool is not None:
            head = ChoiceDeltaToolCall(
                index=0,
                id=tool.call_id,
                type="function",
                function=ChoiceDeltaToolCallFunction(name=tool.name, arguments=""),
            )
            for i in range(n):
                delta = ChoiceDelta(role="assistant", content=None, tool_calls=[head])
                yield chunk(delta, None, i)
            fragments = tool.fragments()
            for index, fragment in enumerate(fragments):
                if interval or index % RATE0_BURST == 0:
                    await _sleep_until(loop, start + (index + 1) * interval)
                piece = ChoiceDeltaToolCall(
                    index=0, function=ChoiceDeltaToolCallFunction(arguments=fragment)
                )
                for i in range(n):
                    yield chunk(ChoiceDelta(tool_calls=[piece]), None, i)
            completion_tokens = len(fragments) * n  # counted as completion tokens
        else:
            for i in range(n):
                yield chunk(ChoiceDelta(role="assistant", content=""), None, i)
            longest = max(plan.length for plan in plans)
            for index in range(longest):
                if interval or index % RATE0_BURST == 0:
                    await _sleep_until(loop, start + index * interval)
                for i, plan in enumerate(plans):
                    if index < plan.length:
                        yield chunk(ChoiceDelta(content=next(plan.tokens)), None, i)
            completion_tokens = sum(plan.length for plan in plans)
        await asyncio.sleep(0)
        for i, plan in enumerate(plans):
            yield chunk(ChoiceDelta(), plan.finish, i)
        if include_usage:
            usage = self._usage(request, completion_tokens)
            yield ChatCompletionChunk(choices=[], **{**common, "usage": usage})

    async def complete(self, request: CompletionRequest) -> ChatCompletion:
        """The whole reply (``n`` choices), after the same pacing as the stream."""
        n = self._choices(request)
        parts: list[list[str]] = [[] for _ in range(n)]
        finishes: list[FinishReason] = ["stop"] * n
        created = int(time.time())
        calls = [ToolCallFold() for _ in range(n)]
        tokens = 0
        async for chunk in self.stream(request):
            created = chunk.created
            for choice in chunk.choices:
                i = choice.index
                if choice.delta.content:
                    parts[i].append(choice.delta.content)
                    tokens += 1
                for _entry in calls[i].add_deltas(choice.delta.tool_calls):
                    tokens += 1  # counted as tokens
                if choice.finish_reason in ("length", "tool_calls"):
                    finishes[i] = choice.finish_reason
        choices = []
        for i in range(n):
            if calls[i]:
                message = ChatCompletionMessage(
                    role="assistant", content=None, tool_calls=calls[i].message_calls()
                )
            else:
                message = ChatCompletionMessage(role="assistant", content="".join(parts[i]))
            choices.append(
                CompletionChoice(index=i, message=message, finish_reason=finishes[i], logprobs=None)
            )
        return ChatCompletion(
            id=f"chatcmpl-{uuid.uuid4().hex}",
            choices=choices,
            created=created,
            model=request.model or self.spec,
            object="chat.completion",
            usage=self._usage(request, tokens),
        )

    @staticmethod
    def _usage(request: CompletionRequest, completion_tokens: int) -> CompletionUsage:
        prompt = prompt_tokens(request.messages)
        return CompletionUsage(
            prompt_tokens=prompt,
            completion_tokens=completion_tokens,
            total_tokens=prompt + completion_tokens,
        )

    async def aclose(self) -> None:
        """Nothing to release; present so every provider can be closed alike."""


@dataclass(frozen=True, slots=True)
class _Plan:
    """One choice's reply: its tokens (made as they are taken, or ready), how many, and
    the finish reason."""

    tokens: Iterator[str]
    length: int
    finish: FinishReason


def _json_tokens(text: str) -> list[str]:
    """Structured output as tokens of a few characters (their concatenation is exact)."""
    return [text[i : i + _JSON_PIECE] for i in range(0, len(text), _JSON_PIECE)]


async def _sleep_until(loop: asyncio.AbstractEventLoop, deadline: float) -> None:
    """Sleep until ``deadline`` (loop time); always yields to the loop at least once."""
    remaining = deadline - loop.time()
    await asyncio.sleep(remaining if remaining > 0 else 0)
