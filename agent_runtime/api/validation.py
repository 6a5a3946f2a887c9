"""Reading request bodies and query strings into pydantic models, with OpenAI-style errors,
and the size limits OpenAI puts on ``metadata`` and ``instructions`` (:data:`Metadata`,
:data:`Instructions`): checked once, here at the API edge, since both are repeated in
every event of a run."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Annotated, TypeVar

import orjson
from aiohttp import web
from pydantic import AfterValidator, BaseModel, Field, ValidationError
from pydantic_core import PydanticCustomError

from ..errors import InvalidRequest

__all__ = [
    "MAX_INSTRUCTIONS_CHARS",
    "MAX_METADATA_KEY_CHARS",
    "MAX_METADATA_PAIRS",
    "MAX_METADATA_VALUE_CHARS",
    "Instructions",
    "Metadata",
    "json_response",
    "param_path",
    "parse_query",
    "read_json",
]

MAX_METADATA_PAIRS = 16
MAX_METADATA_KEY_CHARS = 64
MAX_METADATA_VALUE_CHARS = 512
MAX_INSTRUCTIONS_CHARS = 256_000
"""OpenAI's limits: ``metadata`` holds 16 pairs at most, keys of 64 characters at most
and values of 512; ``instructions`` are 256,000 characters at most."""


def _shown(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:40] + "…")


def _check_metadata(value: dict[str, str]) -> dict[str, str]:
    if len(value) > MAX_METADATA_PAIRS:
        raise PydanticCustomError(
            "metadata_too_large",
            "metadata holds at most {limit} key-value pairs, got {count}",
            {"limit": MAX_METADATA_PAIRS, "count": len(value)},
        )
    for key, item in value.items():
        if len(key) > MAX_METADATA_KEY_CHARS:
            raise PydanticCustomError(
                "metadata_too_large",
                "metadata keys are at most {limit} characters, key {key} has {count}",
                {"limit": MAX_METADATA_KEY_CHARS, "key": _shown(key), "count": len(key)},
            )
        if len(item) > MAX_METADATA_VALUE_CHARS:
            raise PydanticCustomError(
                "metadata_too_large",
                "metadata values are at most {limit} characters, the value of {key} has {count}",
                {"limit": MAX_METADATA_VALUE_CHARS, "key": _shown(key), "count": len(item)},
            )
    return value


Metadata = Annotated[dict[str, str], AfterValidator(_check_metadata)]
"""A ``metadata`` field of a request, within OpenAI's limits (400 naming it beyond)."""
Instructions = Annotated[str, Field(max_length=MAX_INSTRUCTIONS_CHARS)]
"""An ``instructions`` field of a request, within OpenAI's limit (400 naming it beyond)."""

M = TypeVar("M", bound=BaseModel)


def param_path(loc: Sequence[int | str]) -> str:
    """A parameter's path as OpenAI spells it: ``("messages", 0, "role")`` →
    ``"messages[0].role"``."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


def _describe(exc: ValidationError) -> InvalidRequest:
    first = exc.errors()[0]
    loc = param_path(first["loc"]) or None
    message = first["msg"]
    if first["type"] == "extra_forbidden":
        message = f"Unknown parameter: '{loc}'."
    elif loc:
        message = f"Invalid value for '{loc}': {message}."
    return InvalidRequest(message, param=loc)


async def read_json(request: web.Request, model: type[M]) -> M:
    """The request's JSON body validated as ``model``. 400 on malformed JSON or invalid
    fields (naming the parameter); an empty body counts as ``{}``."""
    raw = await request.read()
    if not raw.strip():
        raw = b"{}"
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise _describe(exc) from None


def parse_query(query: Mapping[str, str], model: type[M]) -> M:
    try:
        return model.model_validate(dict(query))
    except ValidationError as exc:
        raise _describe(exc) from None


def json_response(data: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")
