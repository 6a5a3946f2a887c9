"""Helpers of the real-client tests (``test_clients_*.py``): the official ``openai`` SDK
(sync and async clients that count their requests, event handlers that record what they
saw, the SDK's own stream managers over ``GET …/stream/{run_id}``) and loose checks of the
two personas of the description's example.

The sync :class:`~openai.OpenAI` client blocks, and the hub runs on the test's event loop:
sync scenarios run in a worker thread (``await asyncio.to_thread(scenario)``).
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest
from openai import (
    AssistantEventHandler,
    AsyncAssistantEventHandler,
    AsyncOpenAI,
    AsyncStream,
    OpenAI,
    Stream,
)
from openai.lib.streaming import AssistantStreamManager, AsyncAssistantStreamManager
from openai.types.beta import AssistantStreamEvent
from openai.types.beta.threads import Message, Run, Text, TextDelta

try:  # the HTTP library the installed SDK is built on
    import httpx2 as httpx  # type: ignore[import-not-found,unused-ignore]
except ImportError:  # pragma: no cover
    import httpx  # type: ignore[no-redef,import-not-found,unused-ignore]

from .conftest import UNIT, HubClient

__all__ = [
    "ASSISTANTS_DEPRECATED",
    "AsyncRecorder",
    "Recorder",
    "Requests",
    "async_join",
    "async_sdk",
    "check_recording",
    "join",
    "live_model",
    "platonic",
    "socratic",
    "sync_sdk",
    "texts_of",
]

ASSISTANTS_DEPRECATED = pytest.mark.filterwarnings(
    "ignore:The Assistants API is deprecated:DeprecationWarning"
)
"""The SDK marks ``client.beta.threads…`` deprecated; the warning is not ours."""

H = TypeVar("H", bound=AssistantEventHandler)
AH = TypeVar("AH", bound=AsyncAssistantEventHandler)


def live_model(tokens: int = 40, seconds: float = 0.2) -> str:
    """A simulated model whose messages each stream for ``seconds`` test units: long
    enough that a client sees deltas while the run is live."""
    return f"simulated:tokens={tokens},rate={tokens / (seconds * UNIT):g}"


def socratic(text: str) -> bool:
    """Loosely, the simulated model answering as Socrates."""
    return "my friend" in text


def platonic(text: str) -> bool:
    """Loosely, the simulated model answering as Plato."""
    marks = ("Form", "philosoph", "Socrates", "shadow", "cave", "the Good", "soul", "Academy")
    return "my friend" not in text and any(mark in text for mark in marks)


def texts_of(messages: list[Message]) -> list[str]:
    """The text of each SDK ``Message``."""
    return ["".join(p.text.value for p in m.content if p.type == "text") for m in messages]


# -- clients ---------------------------------------------------------------------------------


@dataclass
class Requests:
    """Every request a client sent, as ``(method, path)``."""

    seen: list[tuple[str, str]] = field(default_factory=list)

    def record(self, request: httpx.Request) -> None:
        self.seen.append((request.method, request.url.path))

    async def arecord(self, request: httpx.Request) -> None:
        self.record(request)

    def count(self, method: str, contains: str = "") -> int:
        return sum(1 for m, path in self.seen if m == method and contains in path)


def _url(hub: HubClient | str) -> str:
    return hub if isinstance(hub, str) else hub.url


@contextmanager
def sync_sdk(
    hub: HubClient | str, prefix: str = "/v1", *, api_key: str = "unused"
) -> Iterator[tuple[OpenAI, Requests]]:
    """The official sync client on the hub (or a hub's URL), with its default retries,
    counting requests."""
    requests = Requests()
    http = httpx.Client(event_hooks={"request": [requests.record]}, timeout=10 * UNIT)
    client = OpenAI(base_url=_url(hub) + prefix, api_key=api_key, http_client=http)
    try:
        yield client, requests
    finally:
        client.close()


@asynccontextmanager
async def async_sdk(
    hub: HubClient | str, prefix: str = "/v1", *, api_key: str = "unused"
) -> AsyncIterator[tuple[AsyncOpenAI, Requests]]:
    """The async twin of :func:`sync_sdk`."""
    requests = Requests()
    http = httpx.AsyncClient(event_hooks={"request": [requests.arecord]}, timeout=10 * UNIT)
    client = AsyncOpenAI(base_url=_url(hub) + prefix, api_key=api_key, http_client=http)
    try:
        yield client, requests
    finally:
        await client.close()


def _stream_options(framing: str, cursor: int | str | None, snapshot: bool) -> Any:
    """The SDK's ``RequestOptions``: the query and the cursor header."""
    params: dict[str, str] = {} if framing == "default" else {"format": framing}
    if snapshot:
        params["snapshot"] = "1"
    headers = {} if cursor is None else {"Last-Event-ID": str(cursor)}
    return {"params": params, "headers": headers}


def join(
    client: OpenAI,
    thread_id: str,
    run_id: str,
    handler: H,
    *,
    framing: str = "openai",
    cursor: int | str | None = None,
    snapshot: bool = False,
) -> AssistantStreamManager[H]:
    """``GET /threads/{thread_id}/stream/{run_id}`` through the SDK's own stream classes,
    built as ``runs.stream`` builds its manager (a deferred request, ``Stream`` of
    ``AssistantStreamEvent``)."""
    request = functools.partial(
        client.get,
        f"/threads/{thread_id}/stream/{run_id}",
        cast_to=Run,
        stream=True,
        stream_cls=Stream[AssistantStreamEvent],
        options=_stream_options(framing, cursor, snapshot),
    )
    return AssistantStreamManager(request, event_handler=handler)


def async_join(
    client: AsyncOpenAI,
    thread_id: str,
    run_id: str,
    handler: AH,
    *,
    framing: str = "openai",
    cursor: int | str | None = None,
    snapshot: bool = False,
) -> AsyncAssistantStreamManager[AH]:
    """The async twin of :func:`join` (``runs.stream`` of ``AsyncOpenAI`` hands its manager
    the request's coroutine)."""
    request = client.get(
        f"/threads/{thread_id}/stream/{run_id}",
        cast_to=Run,
        stream=True,
        stream_cls=AsyncStream[AssistantStreamEvent],
        options=_stream_options(framing, cursor, snapshot),
    )
    return AsyncAssistantStreamManager(request, event_handler=handler)


# -- event handlers that record ------------------------------------------------------------


class _Recording:
    """What an event handler saw: ``(kind, message id)`` in order, each message's text
    deltas, and whether the run was still live when the first delta arrived."""

    def __init__(self, is_live: Callable[[str], bool] | None) -> None:
        self.order: list[tuple[str, str]] = []
        self.deltas: dict[str, list[str]] = {}
        self.events: list[str] = []
        self.live_at_first_delta: bool | None = None
        self._is_live = is_live

    def _created(self, message: Message) -> None:
        self.order.append(("created", message.id))
        self.deltas[message.id] = []

    def _delta(self, message: Message | None, run: Run | None, delta: TextDelta) -> None:
        assert message is not None, "a text delta without a current message"
        self.order.append(("delta", message.id))
        self.deltas.setdefault(message.id, []).append(delta.value or "")
        if self.live_at_first_delta is None and self._is_live is not None:
            assert run is not None, "a text delta before any run event"
            self.live_at_first_delta = self._is_live(run.id)

    def _done(self, message: Message) -> None:
        self.order.append(("done", message.id))

    def texts(self) -> list[str]:
        return ["".join(parts) for parts in self.deltas.values()]


class Recorder(AssistantEventHandler):
    """A sync ``AssistantEventHandler`` that records what it saw (see :class:`_Recording`)."""

    def __init__(self, is_live: Callable[[str], bool] | None = None) -> None:
        super().__init__()
        self.seen = _Recording(is_live)

    def on_event(self, event: AssistantStreamEvent) -> None:
        self.seen.events.append(event.event)

    def on_message_created(self, message: Message) -> None:
        self.seen._created(message)

    def on_text_delta(self, delta: TextDelta, snapshot: Text) -> None:
        self.seen._delta(self.current_message_snapshot, self.current_run, delta)

    def on_message_done(self, message: Message) -> None:
        self.seen._done(message)


class AsyncRecorder(AsyncAssistantEventHandler):
    """The async twin of :class:`Recorder`."""

    def __init__(self, is_live: Callable[[str], bool] | None = None) -> None:
        super().__init__()
        self.seen = _Recording(is_live)

    async def on_event(self, event: AssistantStreamEvent) -> None:
        self.seen.events.append(event.event)

    async def on_message_created(self, message: Message) -> None:
        self.seen._created(message)

    async def on_text_delta(self, delta: TextDelta, snapshot: Text) -> None:
        self.seen._delta(self.current_message_snapshot, self.current_run, delta)

    async def on_message_done(self, message: Message) -> None:
        self.seen._done(message)


def check_recording(
    seen: _Recording, final: list[Message], *, min_deltas: int = 2, live: bool = False
) -> None:
    """Each message of ``final`` (the SDK's ``get_final_messages()``) was created before
    its deltas, which were several and concatenate to its final text, then completed;
    with ``live``, the first delta arrived while the run was still live."""
    assert [m.id for m in final] == list(seen.deltas), (seen.order, [m.id for m in final])
    assert all(m.status == "completed" for m in final)
    for message, text in zip(final, texts_of(final), strict=True):
        kinds = [kind for kind, mid in seen.order if mid == message.id]
        assert kinds[0] == "created" and kinds[-1] == "done", kinds
        assert set(kinds[1:-1]) == {"delta"}, kinds
        assert len(kinds) - 2 >= min_deltas, f"{message.id}: {len(kinds) - 2} deltas"
        assert "".join(seen.deltas[message.id]) == text
    if live:
        assert seen.live_at_first_delta is True, "the first delta arrived after the run ended"
