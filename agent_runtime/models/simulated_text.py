"""The simulated model's words: replies that follow the system prompt (a Socrates prompt
gets a Socratic reply), deterministic from the messages and the seed, and the tool
calls it makes when tools are offered. Pure: no I/O, no clock."""

from __future__ import annotations

import hashlib
import itertools
import random
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from ..errors import InvalidRequest
from .base import CompletionRequest

__all__ = [
    "apply_stop",
    "iter_reply_tokens",
    "plan_tool_call",
    "prompt_tokens",
    "reply_tokens",
    "simulated_text",
    "stop_sequences",
    "tokenize",
]


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


def reply_tokens(messages: Sequence[Mapping[str, Any]], seed: int, count: int) -> list[str]:
    """Exactly ``count`` tokens of the reply to ``messages``, ending on a full stop."""
    return list(iter_reply_tokens(messages, seed, count))


def iter_reply_tokens(
    messages: Sequence[Mapping[str, Any]], seed: int, count: int
) -> Iterator[str]:
    """The tokens of :func:`reply_tokens`, made as they are taken: the first comes
    without the rest being generated (two are held back, to end the reply on a full
    stop). The same words for the same messages, seed and count."""
    if count <= 0:
        return
    held: list[str] = []
    for token in itertools.islice(_raw_tokens(messages, seed), count):
        held.append(token)
        if len(held) > 2:
            yield held.pop(0)
    if count >= 2 and held[-1] not in _TERMINAL:
        # The budget ends inside a sentence: end it there, on a full stop.
        if held[-1] in _PAUSES:
            held[-1] = "."
        elif held[-2] in _TERMINAL:
            held[-2], held[-1] = " indeed", held[-2]
        elif held[-2] in _PAUSES:
            held[-2], held[-1] = " indeed", "."
        else:
            held[-1] = "."
    yield from held


def _raw_tokens(messages: Sequence[Mapping[str, Any]], seed: int) -> Iterator[str]:
    """The reply's tokens without end, one sentence tokenized at a time: the opening,
    then the persona's sentences, reshuffled each round."""
    persona = _persona(messages)
    topic = _topic(messages)
    rng = _rng(messages, seed)
    if topic is None:
        opening = rng.choice(persona.greetings)
        topic = persona.default_topic
    else:
        opening = _fill(rng.choice(persona.openings), topic)
    yield from tokenize(opening)
    while True:
        body = list(persona.body)
        rng.shuffle(body)
        for sentence in body:
            yield from tokenize(" " + _fill(sentence, topic))


def simulated_text(
    messages: Sequence[Mapping[str, Any]], *, seed: int = 0, tokens: int = 60
) -> str:
    """The whole reply the simulated model gives to ``messages`` (no stop, no max_tokens)."""
    return "".join(reply_tokens(messages, seed, tokens))


def stop_sequences(stop: Any) -> list[str]:
    """The stop sequences of a request's ``stop`` (a string or a list; others ignored)."""
    sequences = [stop] if isinstance(stop, str) else stop if isinstance(stop, list) else []
    return [s for s in sequences if isinstance(s, str) and s]


def apply_stop(tokens: list[str], stop: Any) -> list[str]:
    """``tokens`` cut just before the first occurrence of a stop sequence, if any."""
    sequences = stop_sequences(stop)
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


def _example(schema: Any, topic: str, depth: int = 0, root: Any = None) -> Any:
    """A deterministic value fitting a JSON schema (the common subset, with ``$ref`` into
    the root's ``$defs`` and the first non-null branch of ``anyOf``/``oneOf``)."""
    root = schema if root is None else root
    if not isinstance(schema, Mapping) or depth > 6:
        return topic
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/") and isinstance(root, Mapping):
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part) if isinstance(target, Mapping) else None
        return _example(target, topic, depth + 1, root)
    if "default" in schema:
        return schema["default"]
    if "const" in schema:
        return schema["const"]
    for key in ("anyOf", "oneOf", "allOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            useful = [
                o for o in options if not (isinstance(o, Mapping) and o.get("type") == "null")
            ]
            return _example((useful or options)[0], topic, depth + 1, root)
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
        return [_example(schema.get("items"), topic, depth + 1, root)]
    if kind == "object":
        properties = schema.get("properties")
        if not isinstance(properties, Mapping):
            return {}
        required = schema.get("required")
        names = [n for n in properties if not isinstance(required, list) or n in required]
        return {n: _example(properties[n], topic, depth + 1, root) for n in names}
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


def plan_tool_call(request: CompletionRequest, always: bool) -> _ToolPlan | None:
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


def prompt_tokens(messages: Sequence[Mapping[str, Any]]) -> int:
    return sum(
        4 + len(tokenize(_text_of(m.get("content")))) for m in messages if isinstance(m, Mapping)
    )


# --------------------------------------------------------------------------- model
