"""Any OpenAI-compatible chat completions provider, through ``openai.AsyncOpenAI``.

Known providers (see :data:`PROVIDERS`)::

    fireworks  https://api.fireworks.ai/inference/v1   FIREWORKS_API_KEY
    openai     https://api.openai.com/v1               OPENAI_API_KEY
    together   https://api.together.xyz/v1             TOGETHER_API_KEY
    groq       https://api.groq.com/openai/v1          GROQ_API_KEY
    local      http://127.0.0.1:8000/v1                LOCAL_API_KEY (optional)

Every base URL can be overridden with ``AGENTSTREAM_<PROVIDER>_BASE_URL`` (for example
``AGENTSTREAM_LOCAL_BASE_URL``). Fireworks model names without a ``/`` are completed to
``accounts/fireworks/models/<name>``. The environment is read once, when the provider is
created, from the mapping given as ``env`` (``os.environ`` by default), so tests never
depend on the real environment.

Failures surface as :class:`~agent_runtime.errors.ProviderError`, whose message names the
provider (and, for a missing key, the variable to set): an HTTP error answer keeps the
provider's status and message; an unreachable provider is a 502, a timeout a 504; an error
event or a broken connection in the middle of a stream, or a stream that ends before its
``finish_reason``, is a 502 raised from the iterator. The client retries at most
``max_retries`` times (default 1) so a failing provider is reported quickly.

Concurrency and cancellation: one provider owns one ``AsyncOpenAI`` client (one HTTP
connection pool) shared by any number of concurrent requests. ``stream()`` is an async
generator; cancelling the consuming task, or closing the generator, closes the HTTP
response at once (the provider sees the connection go away and stops generating).
``aclose()`` closes the connection pool.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, cast

import openai
from openai.types.chat import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionMessageParam,
)

from ..errors import InvalidRequest, ProviderError
from .base import CompletionRequest

__all__ = ["PROVIDERS", "OpenAICompatProvider", "ProviderInfo"]

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 120.0
"""Seconds the client waits for the provider at any one step (connect, or between bytes)."""
DEFAULT_MAX_RETRIES = 1
_NO_KEY = "EMPTY"  # what OpenAI-compatible local servers (vLLM, llama.cpp…) accept
_OWN_FIELDS = frozenset({"model", "messages", "stream", "temperature", "max_tokens"})


@dataclass(frozen=True, slots=True)
class ProviderInfo:
    """Where an OpenAI-compatible provider lives and how it authenticates."""

    name: str
    base_url: str
    key_env: str
    key_required: bool = True
    model_prefix: str | None = None
    """Prepended to model names without a ``/`` (Fireworks' ``accounts/…/models/``)."""

    @property
    def base_url_env(self) -> str:
        """The environment variable overriding :attr:`base_url`."""
        return f"AGENTSTREAM_{self.name.upper()}_BASE_URL"

    def resolve_base_url(self, env: Mapping[str, str]) -> str:
        return (env.get(self.base_url_env) or "").strip() or self.base_url

    def api_key(self, env: Mapping[str, str]) -> str | None:
        return (env.get(self.key_env) or "").strip() or None

    def is_configured(self, env: Mapping[str, str]) -> bool:
        """Whether requests could be sent: a key is set (or optional and a base URL is)."""
        if self.api_key(env) is not None:
            return True
        return not self.key_required and bool((env.get(self.base_url_env) or "").strip())

    def model_name(self, model: str) -> str:
        model = model.strip()
        if self.model_prefix and "/" not in model:
            return self.model_prefix + model
        return model


PROVIDERS: Mapping[str, ProviderInfo] = {
    info.name: info
    for info in (
        ProviderInfo(
            "fireworks",
            "https://api.fireworks.ai/inference/v1",
            "FIREWORKS_API_KEY",
            model_prefix="accounts/fireworks/models/",
        ),
        ProviderInfo("openai", "https://api.openai.com/v1", "OPENAI_API_KEY"),
        ProviderInfo("together", "https://api.together.xyz/v1", "TOGETHER_API_KEY"),
        ProviderInfo("groq", "https://api.groq.com/openai/v1", "GROQ_API_KEY"),
        ProviderInfo("local", "http://127.0.0.1:8000/v1", "LOCAL_API_KEY", key_required=False),
    )
}


def _error_detail(exc: openai.APIStatusError) -> str:
    """The provider's own words from an error answer."""
    body = exc.body
    if isinstance(body, Mapping):
        message = body.get("message") or body.get("detail") or body.get("error")
        if isinstance(message, str) and message:
            return message
    if isinstance(body, str) and body.strip():
        return body.strip()[:500]
    return exc.message


class OpenAICompatProvider:
    """A :class:`~agent_runtime.models.base.ModelProvider` over an OpenAI-compatible API.

    Raises :class:`~agent_runtime.errors.ProviderError` at construction when the provider
    needs an API key and none is configured; the message names the variable to set.
    """

    def __init__(
        self,
        provider: str | ProviderInfo,
        *,
        env: Mapping[str, str] | None = None,
        api_key: str | None = None,
        base_url: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
    ) -> None:
        if isinstance(provider, str):
            try:
                provider = PROVIDERS[provider]
            except KeyError:
                known = ", ".join(PROVIDERS)
                raise InvalidRequest(
                    f"unknown model provider {provider!r} (known: {known})", param="model"
                ) from None
        self.info = provider
        self.name: str = provider.name
        environ: Mapping[str, str] = os.environ if env is None else env
        key = (api_key or "").strip() or provider.api_key(environ)
        if key is None and provider.key_required:
            raise ProviderError(
                f"model provider {provider.name!r} needs an API key: set {provider.key_env}",
                code="provider_not_configured",
            )
        self.base_url = (base_url or "").strip() or provider.resolve_base_url(environ)
        self.timeout = timeout
        self._client = openai.AsyncOpenAI(
            api_key=key or _NO_KEY,
            base_url=self.base_url,
            timeout=timeout,
            max_retries=max_retries,
        )

    def __repr__(self) -> str:
        return f"OpenAICompatProvider({self.name!r}, base_url={self.base_url!r})"

    def model_name(self, model: str) -> str:
        """The provider's name for ``model`` (Fireworks: ``accounts/fireworks/models/…``)."""
        return self.info.model_name(model)

    def _body(self, request: CompletionRequest, *, stream: bool) -> dict[str, Any]:
        body = {k: v for k, v in request.extra.items() if k not in _OWN_FIELDS}
        if not stream:
            body.pop("stream_options", None)  # OpenAI refuses it without stream=true
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.max_tokens is not None:
            body["max_tokens"] = request.max_tokens
        return body

    def _messages(self, request: CompletionRequest) -> Iterable[ChatCompletionMessageParam]:
        return cast(Iterable[ChatCompletionMessageParam], request.messages)

    def _error(self, exc: openai.OpenAIError, *, streaming: bool = False) -> ProviderError:
        who = f"model provider {self.name!r}"
        if isinstance(exc, openai.APITimeoutError):
            return ProviderError(
                f"{who} timed out (no answer within {self.timeout:g}s)",
                upstream_status=504,
                code="provider_timeout",
            )
        if isinstance(exc, openai.APIConnectionError):
            cause = exc.__cause__
            detail = f"{type(cause).__name__}: {cause}" if cause is not None else exc.message
            if streaming:
                message = f"{who} broke off the stream ({detail})"
            else:
                message = f"{who} could not be reached at {self.base_url} ({detail})"
            return ProviderError(message, upstream_status=502, code="provider_unreachable")
        if isinstance(exc, openai.APIStatusError):
            return ProviderError(
                f"{who} answered {exc.status_code}: {_error_detail(exc)}",
                upstream_status=exc.status_code,
                param=exc.param,
                code=exc.code,
            )
        if isinstance(exc, openai.APIError):
            # An error event inside the stream (``data: {"error": {...}}``).
            return ProviderError(f"{who} reported an error: {exc.message}", code=exc.code)
        return ProviderError(f"{who} failed: {exc}")

    async def stream(self, request: CompletionRequest) -> AsyncIterator[ChatCompletionChunk]:
        """The provider's chunks, unchanged. Raises ProviderError before or mid-stream."""
        model = self.model_name(request.model)
        try:
            response = await self._client.chat.completions.create(
                model=model,
                messages=self._messages(request),
                stream=True,
                extra_body=self._body(request, stream=True),
            )
        except openai.OpenAIError as exc:
            logger.warning("%s: stream of %r refused: %s", self.name, model, exc)
            raise self._error(exc) from exc
        finished = False
        try:
            async for chunk in response:
                if any(choice.finish_reason for choice in chunk.choices):
                    finished = True
                yield chunk
        except openai.OpenAIError as exc:
            if finished and isinstance(exc, openai.APIConnectionError):
                # Everything but the [DONE] (and maybe a usage chunk) arrived.
                logger.info("%s: connection lost after the last chunk of %r", self.name, model)
                return
            logger.warning("%s: stream of %r failed: %s", self.name, model, exc)
            raise self._error(exc, streaming=True) from exc
        finally:
            await response.close()
        if not finished:
            logger.warning("%s: stream of %r ended without a finish_reason", self.name, model)
            raise ProviderError(
                f"model provider {self.name!r} ended the stream before the completion finished",
                code="provider_stream_incomplete",
            )

    async def complete(self, request: CompletionRequest) -> ChatCompletion:
        """The provider's whole completion."""
        model = self.model_name(request.model)
        try:
            return await self._client.chat.completions.create(
                model=model,
                messages=self._messages(request),
                extra_body=self._body(request, stream=False),
            )
        except openai.OpenAIError as exc:
            logger.warning("%s: completion of %r failed: %s", self.name, model, exc)
            raise self._error(exc) from exc

    async def aclose(self) -> None:
        """Close the HTTP connection pool."""
        await self._client.close()
