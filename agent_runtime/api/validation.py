"""Reading request bodies and query strings into pydantic models, with OpenAI-style errors."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

import orjson
from aiohttp import web
from pydantic import BaseModel, ValidationError

from ..errors import InvalidRequest

__all__ = ["json_response", "parse_query", "read_json"]

M = TypeVar("M", bound=BaseModel)


def _describe(exc: ValidationError) -> InvalidRequest:
    first = exc.errors()[0]
    loc = ".".join(str(part) for part in first["loc"]) or None
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
