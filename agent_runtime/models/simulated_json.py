"""The simulated model's structured output: what it answers to a ``response_format``.

``{"type": "json_object"}`` gets a JSON object holding the reply's text
(``{"answer": "…"}``); ``{"type": "json_schema", "json_schema": {"schema": …}}`` gets an
instance valid against the schema. The values are a pure function of (schema, messages,
seed): strings are taken from the reply's words, numbers, booleans, enum members, the
branch of an ``anyOf`` and array lengths are drawn from a generator seeded by them.

The schema subset covered is the one clients emit (OpenAI's structured outputs, pydantic's
``model_json_schema``): ``type`` (one or a list), ``properties`` (every property is
given, so ``required`` and ``additionalProperties: false`` hold), ``items``,
``prefixItems``, ``minItems``/``maxItems``, ``enum``, ``const``, ``default``-free
generation, ``anyOf``/``oneOf``/``allOf``, ``$ref`` into ``$defs``/``definitions``
(recursive schemas end by choosing ``null``, an empty array or only required properties
past a depth), ``minimum``/``maximum`` (and exclusive ones), ``minLength``/``maxLength``
and the ``date-time``, ``date``, ``time``, ``email``, ``uri`` and ``uuid`` formats.
``pattern`` is not honoured. Pure: no I/O, no clock.
"""

from __future__ import annotations

import math
import random
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from ..errors import InvalidRequest
from .simulated_text import reply_tokens

__all__ = ["structured_text"]

_MAX_DEPTH = 8
"""Past this nesting, optional parts are left out so recursive schemas end."""
_WORDS = 40
"""Tokens of the reply that strings are drawn from."""


def structured_text(
    response_format: Any, messages: Sequence[Mapping[str, Any]], seed: int
) -> str | None:
    """The JSON text answering ``response_format``, or ``None`` for plain text.

    Raises :class:`~agent_runtime.errors.InvalidRequest` (``param="response_format"``) for a
    format that is not an object or whose type is not ``text``, ``json_object`` or
    ``json_schema``, or a ``json_schema`` without an object ``schema``.
    """
    if response_format is None:
        return None
    if not isinstance(response_format, Mapping):
        raise InvalidRequest("response_format must be an object", param="response_format")
    kind = response_format.get("type")
    if kind == "text":
        return None
    words = [t.strip() for t in reply_tokens(messages, seed, _WORDS) if t.strip().isalnum()]
    rng = random.Random(orjson.dumps([seed, kind, words]))
    if kind == "json_object":
        return orjson.dumps({"answer": "".join(reply_tokens(messages, seed, _WORDS))}).decode()
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, Mapping) else None
        if not isinstance(schema, Mapping):
            raise InvalidRequest(
                "response_format.json_schema.schema must be a JSON schema object",
                param="response_format.json_schema.schema",
            )
        value = _Generator(schema, words or ["answer"], rng).value(schema, 0)
        return orjson.dumps(value).decode()
    raise InvalidRequest(
        f"response_format.type must be 'text', 'json_object' or 'json_schema', not {kind!r}",
        param="response_format.type",
    )


class _Generator:
    """A deterministic instance of one schema (see the module doc for the subset)."""

    def __init__(self, root: Mapping[str, Any], words: list[str], rng: random.Random) -> None:
        self.root = root
        self.words = words
        self.rng = rng

    def _resolve(self, ref: str) -> Mapping[str, Any]:
        if not ref.startswith("#"):
            raise InvalidRequest(f"unsupported $ref {ref!r}", param="response_format")
        node: Any = self.root
        for part in ref[1:].split("/"):
            if not part:
                continue
            part = part.replace("~1", "/").replace("~0", "~")
            if not isinstance(node, Mapping) or part not in node:
                raise InvalidRequest(f"unresolvable $ref {ref!r}", param="response_format")
            node = node[part]
        if not isinstance(node, Mapping):
            raise InvalidRequest(f"unresolvable $ref {ref!r}", param="response_format")
        return node

    def value(self, schema: Any, depth: int) -> Any:
        if not isinstance(schema, Mapping):
            return self._string({})
        if "$ref" in schema:
            rest = {k: v for k, v in schema.items() if k != "$ref"}
            return self.value({**self._resolve(str(schema["$ref"])), **rest}, depth + 1)
        if "const" in schema:
            return schema["const"]
        enum = schema.get("enum")
        if isinstance(enum, list) and enum:
            return self.rng.choice(enum)
        for key in ("anyOf", "oneOf"):
            options = schema.get(key)
            if isinstance(options, list) and options:
                return self.value(self._choose(options, depth), depth + 1)
        parts = schema.get("allOf")
        if isinstance(parts, list) and parts:
            merged: dict[str, Any] = {k: v for k, v in schema.items() if k != "allOf"}
            for part in parts:
                part = self._resolve(part["$ref"]) if "$ref" in part else part
                for k, v in part.items():
                    if k in ("properties", "$defs") and isinstance(v, Mapping):
                        merged[k] = {**merged.get(k, {}), **v}
                    elif k == "required" and isinstance(v, list):
                        merged[k] = [*merged.get(k, []), *v]
                    else:
                        merged.setdefault(k, v)
            return self.value(merged, depth + 1)
        kind = schema.get("type")
        if isinstance(kind, list):
            kinds = [k for k in kind if k != "null"]
            kind = "null" if not kinds or depth > _MAX_DEPTH else kinds[0]
        if kind is None:
            if isinstance(schema.get("properties"), Mapping):
                kind = "object"
            elif "items" in schema or "prefixItems" in schema:
                kind = "array"
            else:
                kind = "string"
        if kind == "object":
            return self._object(schema, depth)
        if kind == "array":
            return self._array(schema, depth)
        if kind == "integer":
            return int(self._number(schema, integer=True))
        if kind == "number":
            return self._number(schema, integer=False)
        if kind == "boolean":
            return self.rng.random() < 0.5
        if kind == "null":
            return None
        return self._string(schema)

    def _choose(self, options: list[Any], depth: int) -> Any:
        def is_null(option: Any) -> bool:
            return isinstance(option, Mapping) and option.get("type") == "null"

        if depth > _MAX_DEPTH and any(is_null(o) for o in options):
            return next(o for o in options if is_null(o))
        useful = [o for o in options if not is_null(o)] or options
        return self.rng.choice(useful)

    def _object(self, schema: Mapping[str, Any], depth: int) -> dict[str, Any]:
        properties = schema.get("properties")
        if not isinstance(properties, Mapping):
            return {}
        required = schema.get("required")
        names = list(properties)
        if depth > _MAX_DEPTH and isinstance(required, list):
            names = [n for n in names if n in required]
        return {name: self.value(properties[name], depth + 1) for name in names}

    def _array(self, schema: Mapping[str, Any], depth: int) -> list[Any]:
        low = schema.get("minItems")
        high = schema.get("maxItems")
        low = low if isinstance(low, int) else 0
        high = high if isinstance(high, int) else max(low, 3)
        count = low if depth > _MAX_DEPTH else self.rng.randint(low, max(low, min(high, 3)))
        prefix = schema.get("prefixItems")
        prefix = prefix if isinstance(prefix, list) else []
        count = max(count, len(prefix)) if prefix and schema.get("items") is False else count
        out = [self.value(p, depth + 1) for p in prefix[:count]]
        items = schema.get("items")
        while len(out) < count:
            out.append(self.value(items if isinstance(items, Mapping) else {}, depth + 1))
        return out

    def _number(self, schema: Mapping[str, Any], *, integer: bool) -> float:
        def bound(key: str) -> float | None:
            value = schema.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool):
                return float(value)
            return None

        low, high = bound("minimum"), bound("maximum")
        xlow, xhigh = bound("exclusiveMinimum"), bound("exclusiveMaximum")
        step = 1.0 if integer else 0.01
        if xlow is not None:
            low = max(low if low is not None else xlow + step, xlow + step)
        if xhigh is not None:
            high = min(high if high is not None else xhigh - step, xhigh - step)
        if low is None:
            low = min(0.0, high - 100) if high is not None else 0.0
        if high is None:
            high = low + 100
        if integer:
            lo, hi = math.ceil(low), math.floor(high)
            return float(self.rng.randint(lo, max(lo, hi)))
        return min(high, max(low, round(self.rng.uniform(low, high), 2)))

    def _string(self, schema: Mapping[str, Any]) -> str:
        fmt = schema.get("format")
        rng = self.rng
        if fmt == "date-time":
            return f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T12:00:00Z"
        if fmt == "date":
            return f"2024-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
        if fmt == "time":
            return f"{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:00"
        if fmt == "email":
            return f"{rng.choice(self.words).lower()}@example.com"
        if fmt in ("uri", "url"):
            return f"https://example.com/{rng.choice(self.words).lower()}"
        if fmt == "uuid":
            return str(uuid.UUID(int=rng.getrandbits(128), version=4))
        start = rng.randrange(len(self.words))
        text = " ".join(self.words[start : start + rng.randint(1, 4)])
        low = schema.get("minLength")
        high = schema.get("maxLength")
        if isinstance(low, int):
            while len(text) < low:
                text += " " + rng.choice(self.words)
            text = text[: max(low, len(text))]
        if isinstance(high, int):
            text = text[:high]
        return text
