"""OpenAI-compatible ``POST /chat/completions`` and ``GET /models`` over the hub's models.

:func:`routes` returns the handlers with paths relative to the API root (the app mounts
them under ``/v1`` and ``/api/v1``). Errors raised here are
:class:`~agent_runtime.errors.AgentRuntimeError` subclasses; ``error_middleware`` turns
them into ``{"error": {...}}`` answers.

``stream: true`` answers ``text/event-stream`` in OpenAI's chat framing: one
``data: <chunk json>`` per chunk, then ``data: [DONE]`` (no ``event:`` lines). The first
chunk is awaited *before* the response starts, so a provider refusing the request (bad key,
429, unknown model…) is a plain JSON error with the provider's status. A provider failing
once the stream has started is reported in-band as ``data: {"error": {...}}``, after which
the response ends without ``[DONE]`` (the openai SDK raises ``APIError`` on it).

Concurrency and cancellation: each request streams on its own handler task; nothing is
shared but the router. When the client goes away the provider stream is closed at once:
with ``handler_cancellation=True`` (the hub's setting) the handler is cancelled; otherwise
the next write fails and ends it. Either way the provider's generator is ``aclose()``d,
which closes its upstream HTTP response.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import suppress
from typing import Any, Literal

import orjson
from aiohttp import web
from openai.types.chat import ChatCompletionChunk
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from ..agents import AgentCatalog
from ..errors import AgentRuntimeError, InvalidRequest
from ..models.base import CompletionRequest
from ..models.router import ModelRouter
from ..responses.objects import agent_models
from .errors import error_payload
from .validation import param_path

__all__ = ["ChatCompletionBody", "routes"]

logger = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}
_DONE = b"data: [DONE]\n\n"
_OWN_FIELDS = frozenset(
    {"model", "messages", "stream", "max_tokens", "max_completion_tokens", "temperature"}
)


class ChatMessage(BaseModel):
    """One message of the conversation; fields other than role and content pass through."""

    model_config = ConfigDict(extra="allow", strict=True)

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: Any = None

    @field_validator("content")
    @classmethod
    def _content(cls, value: Any) -> Any:
        if value is None or isinstance(value, str):
            return value
        if isinstance(value, list) and all(isinstance(part, dict) for part in value):
            return value
        raise ValueError("content must be a string, a list of content parts, or null")


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    include_usage: bool | None = None


class ChatCompletionBody(BaseModel):
    """The request body of ``POST /chat/completions``; unknown fields pass through."""

    model_config = ConfigDict(extra="allow", strict=True)

    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool | None = False
    max_tokens: int | None = Field(default=None, ge=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0, le=2)
    stream_options: StreamOptions | None = None
    n: int | None = Field(default=None, ge=1, le=128)


def _invalid(exc: ValidationError) -> InvalidRequest:
    error = exc.errors(include_url=False)[0]
    param = param_path(error["loc"])
    if error["type"] == "missing":
        return InvalidRequest(f"Missing required parameter: '{param}'.", param=param)
    message = str(error["msg"]).removeprefix("Value error, ")
    return InvalidRequest(f"Invalid value for '{param}': {message}.", param=param)


async def _parse(request: web.Request) -> tuple[ChatCompletionBody, dict[str, Any]]:
    raw = await request.read()
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(f"The request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    try:
        return ChatCompletionBody.model_validate(data), data
    except ValidationError as exc:
        raise _invalid(exc) from None


def _completion_request(
    body: ChatCompletionBody, data: dict[str, Any], model: str
) -> CompletionRequest:
    extra = {k: v for k, v in data.items() if k not in _OWN_FIELDS}
    return CompletionRequest(
        model=model,
        messages=data["messages"],
        temperature=body.temperature,
        max_tokens=body.max_tokens if body.max_tokens is not None else body.max_completion_tokens,
        extra=extra,
    )


def _frame(chunk: ChatCompletionChunk) -> bytes:
    return b"data: " + chunk.model_dump_json(exclude_unset=True).encode() + b"\n\n"


def _error_frame(exc: BaseException) -> bytes:
    return b"data: " + orjson.dumps({"error": error_payload(exc)}) + b"\n\n"


async def _aclose(chunks: AsyncIterator[ChatCompletionChunk]) -> None:
    if isinstance(chunks, AsyncGenerator):
        try:
            await chunks.aclose()
        except Exception:  # the stream is over either way
            logger.exception("closing a model stream failed")


async def _stream(
    request: web.Request, chunks: AsyncIterator[ChatCompletionChunk]
) -> web.StreamResponse:
    try:
        first: ChatCompletionChunk | None = await anext(chunks)
    except StopAsyncIteration:
        first = None
    except BaseException:
        await _aclose(chunks)
        raise  # before the first byte: a JSON error answer with the provider's status

    response = web.StreamResponse(headers=SSE_HEADERS)
    try:
        await response.prepare(request)
        if first is not None:
            await response.write(_frame(first))
            async for chunk in chunks:
                await response.write(_frame(chunk))
        await response.write(_DONE)
    except ConnectionResetError:
        logger.debug("chat completion stream: the client went away")
        return response
    except Exception as exc:  # reported to the client in-band
        if isinstance(exc, AgentRuntimeError):
            logger.warning("chat completion stream failed: %s", exc.message)
        else:
            logger.exception("chat completion stream failed")
        with suppress(ConnectionResetError):
            await response.write(_error_frame(exc))
    finally:
        await _aclose(chunks)
    with suppress(ConnectionResetError):
        await response.write_eof()
    return response


def routes(
    models: ModelRouter, catalog: AgentCatalog | None = None
) -> list[tuple[str, str, Handler]]:
    """``POST /chat/completions`` and ``GET /models``, paths relative to the API root.
    ``GET /models`` lists the ``catalog``'s agents too, as ``agent:NAME`` (the Responses
    API's models for them)."""

    async def create_chat_completion(request: web.Request) -> web.StreamResponse:
        body, data = await _parse(request)
        models.check(body.model)  # 400 for a model this hub cannot serve
        provider, model = models.resolve(body.model)
        completion = _completion_request(body, data, model)
        if body.stream:
            return await _stream(request, provider.stream(completion))
        result = await provider.complete(completion)
        return web.Response(
            body=result.model_dump_json(exclude_unset=True).encode(),
            content_type="application/json",
        )

    async def list_models(request: web.Request) -> web.StreamResponse:
        data = models.list_models() + agent_models(catalog.list() if catalog else [])
        return web.json_response({"object": "list", "data": data})

    return [
        ("POST", "/chat/completions", create_chat_completion),
        ("GET", "/models", list_models),
    ]
