"""The model provider interface: what a completion needs from a model, and nothing else.

Providers are asynchronous and run on the event loop. ``stream`` yields the ``openai``
package's ``ChatCompletionChunk`` objects as they arrive; cancelling the consuming task
closes the provider's connection. Failures raise :class:`~agent_runtime.errors.ProviderError`
(before the first chunk or mid-stream) with a message fit to show a user.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from openai.types.chat import ChatCompletion, ChatCompletionChunk

__all__ = ["CompletionRequest", "ModelProvider"]


@dataclass(slots=True)
class CompletionRequest:
    """One chat completion to make. ``messages`` are OpenAI-shaped dicts."""

    model: str
    messages: list[dict[str, Any]]
    temperature: float | None = None
    max_tokens: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    """Further OpenAI parameters (``tools``, ``stop``, ``top_p``…) passed through as is."""


class ModelProvider(Protocol):
    """A source of chat completions."""

    name: str

    def stream(self, request: CompletionRequest) -> AsyncIterator[ChatCompletionChunk]:
        """Chunks of one streamed completion, in order."""
        ...

    async def complete(self, request: CompletionRequest) -> ChatCompletion:
        """One whole completion."""
        ...
