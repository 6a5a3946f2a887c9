"""``POST /v1/chat/completions`` and ``GET /v1/models`` on a real socket, driven by the
official ``openai`` SDK and by raw HTTP."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import openai
import pytest
from aiohttp import web
from openai.types.chat import ChatCompletion, ChatCompletionChunk, ChatCompletionMessageParam
from openai.types.chat.chat_completion_chunk import Choice, ChoiceDelta

from agent_runtime.api.chat import routes
from agent_runtime.api.errors import error_middleware
from agent_runtime.errors import ProviderError
from agent_runtime.models.base import CompletionRequest, ModelProvider
from agent_runtime.models.router import ModelRouter
from agent_runtime.models.simulated import SimulatedModel, simulated_text

UNIT = 0.5  # seconds; every wait in this file is a small multiple of it

MESSAGES: list[ChatCompletionMessageParam] = [
    {"role": "system", "content": "respond as though you were Socrates"},
    {"role": "user", "content": "What is justice?"},
]


def stub_chunk(content: str | None = None, finish: bool = False) -> ChatCompletionChunk:
    delta = ChoiceDelta(content=content) if content is not None else ChoiceDelta()
    choice = Choice(index=0, delta=delta, finish_reason="stop" if finish else None)
    return ChatCompletionChunk(
        id="chatcmpl-stub",
        choices=[choice],
        created=1,
        model="stub",
        object="chat.completion.chunk",
    )


@dataclass
class StubProvider:
    """A provider scripted per test: fail before the first chunk, midway, or hang."""

    name: str = "stub"
    fail_before: ProviderError | None = None
    fail_after: int | None = None
    hang_after: int | None = None
    closed: asyncio.Event = field(default_factory=asyncio.Event)
    requests: list[CompletionRequest] = field(default_factory=list)

    async def stream(self, request: CompletionRequest) -> AsyncIterator[ChatCompletionChunk]:
        self.requests.append(request)
        try:
            if self.fail_before is not None:
                raise self.fail_before
            for index in range(3):
                if index == self.fail_after:
                    raise ProviderError("model provider 'stub' broke off the stream")
                if index == self.hang_after:
                    await asyncio.Event().wait()
                yield stub_chunk(f" part{index}")
            yield stub_chunk(finish=True)
        finally:
            self.closed.set()

    async def complete(self, request: CompletionRequest) -> Any:
        self.requests.append(request)
        if self.fail_before is not None:
            raise self.fail_before
        raise AssertionError("not used")


class StubRouter(ModelRouter):
    """The real router, plus scripted providers under the names ``stub:<key>``."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stubs: dict[str, StubProvider] = {}

    def resolve(self, model: str | None, provider: str | None = None) -> tuple[ModelProvider, str]:
        if model in self.stubs:
            return self.stubs[model], model
        return super().resolve(model, provider)

    def check(self, model: str, provider: str | None = None) -> None:
        if model not in self.stubs:
            super().check(model, provider)


@dataclass
class Server:
    url: str
    router: StubRouter
    http: aiohttp.ClientSession
    sdk: openai.AsyncOpenAI


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    router = StubRouter(env={})
    app = web.Application(middlewares=[error_middleware])
    for method, path, handler in routes(router):
        app.router.add_route(method, "/v1" + path, handler)
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    sdk = openai.AsyncOpenAI(base_url=url, api_key="x", max_retries=0)
    async with aiohttp.ClientSession() as http:
        yield Server(url, router, http, sdk)
    await sdk.close()
    await runner.cleanup()
    await router.aclose()


async def post(server: Server, body: Any, *, raw: bytes | None = None) -> aiohttp.ClientResponse:
    data = raw if raw is not None else json.dumps(body).encode()
    return await server.http.post(
        f"{server.url}/chat/completions", data=data, headers={"Content-Type": "application/json"}
    )


async def sse_events(response: aiohttp.ClientResponse) -> list[str]:
    text = await response.text()
    assert text.endswith("\n\n")
    frames = text[:-2].split("\n\n")
    for frame in frames:
        assert frame.startswith("data: ")
        assert "\n" not in frame  # one data line per frame, no event: lines
    return [frame[len("data: ") :] for frame in frames]


# --------------------------------------------------------------------------- the SDK


async def test_sdk_stream(server: Server) -> None:
    stream = await server.sdk.chat.completions.create(
        model="simulated:tokens=12,rate=0", messages=MESSAGES, stream=True
    )
    chunks = [chunk async for chunk in stream]
    assert len(chunks) == 14
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.model == "simulated:tokens=12,rate=0" for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == simulated_text(MESSAGES, tokens=12)
    assert "my friend" in text


async def test_sdk_stream_with_usage(server: Server) -> None:
    stream = await server.sdk.chat.completions.create(
        model="simulated:tokens=5,rate=0",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [chunk async for chunk in stream]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 5


async def test_sdk_non_stream(server: Server) -> None:
    completion = await server.sdk.chat.completions.create(
        model="simulated:tokens=12,rate=0", messages=MESSAGES
    )
    assert completion.object == "chat.completion"
    assert completion.choices[0].message.content == simulated_text(MESSAGES, tokens=12)
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None and completion.usage.completion_tokens == 12
    limited = await server.sdk.chat.completions.create(
        model="simulated:tokens=12,rate=0",
        messages=MESSAGES,
        max_tokens=4,
    )
    assert limited.choices[0].finish_reason == "length"
    assert limited.usage is not None and limited.usage.completion_tokens == 4


async def test_sdk_max_completion_tokens(server: Server) -> None:
    completion = await server.sdk.chat.completions.create(
        model="simulated:tokens=12,rate=0",
        messages=MESSAGES,
        max_completion_tokens=3,
    )
    assert completion.choices[0].finish_reason == "length"


async def test_sdk_bad_request_carries_our_message(server: Server) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        await server.sdk.chat.completions.create(model="simulated:tokens=abc", messages=MESSAGES)
    assert "tokens must be a whole number" in info.value.message
    assert info.value.param == "model"
    with pytest.raises(openai.BadRequestError, match="unknown model provider 'nope'"):
        await server.sdk.chat.completions.create(model="nope::m", messages=MESSAGES, stream=True)


async def test_sdk_provider_error_before_streaming(server: Server) -> None:
    server.router.stubs["stub:429"] = StubProvider(
        fail_before=ProviderError(
            "model provider 'stub' answered 429: slow down", upstream_status=429
        )
    )
    with pytest.raises(openai.RateLimitError, match="slow down"):
        await server.sdk.chat.completions.create(model="stub:429", messages=MESSAGES, stream=True)
    with pytest.raises(openai.RateLimitError, match="slow down"):
        await server.sdk.chat.completions.create(model="stub:429", messages=MESSAGES)


async def test_sdk_provider_error_midstream(server: Server) -> None:
    server.router.stubs["stub:mid"] = StubProvider(fail_after=2)
    stream = await server.sdk.chat.completions.create(
        model="stub:mid", messages=MESSAGES, stream=True
    )
    received: list[str] = []
    with pytest.raises(openai.APIError, match="broke off the stream"):
        async for chunk in stream:
            received.append(chunk.choices[0].delta.content or "")
    assert received == [" part0", " part1"]


# --------------------------------------------------------------------------- raw HTTP


async def test_stream_framing_and_headers(server: Server) -> None:
    body = {"model": "simulated:tokens=4,rate=0", "messages": MESSAGES, "stream": True}
    async with await post(server, body) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        assert response.headers["Cache-Control"] == "no-cache"
        assert response.headers["X-Accel-Buffering"] == "no"
        assert "Content-Encoding" not in response.headers
        events = await sse_events(response)
    assert events[-1] == "[DONE]"
    chunks = [ChatCompletionChunk.model_validate_json(e) for e in events[:-1]]
    assert len(chunks) == 6
    assert json.loads(events[0])["choices"][0]["delta"] == {"role": "assistant", "content": ""}


async def test_midstream_error_frame(server: Server) -> None:
    server.router.stubs["stub:mid"] = StubProvider(fail_after=1)
    body = {"model": "stub:mid", "messages": MESSAGES, "stream": True}
    async with await post(server, body) as response:
        assert response.status == 200
        events = await sse_events(response)
    assert "[DONE]" not in events
    error = json.loads(events[-1])["error"]
    assert error["message"] == "model provider 'stub' broke off the stream"
    assert error["type"] == "provider_error"
    assert server.router.stubs["stub:mid"].closed.is_set()


async def test_a_provider_without_its_key_is_refused_before_streaming(server: Server) -> None:
    body = {"model": "fireworks::llama-v3p3-70b-instruct", "messages": MESSAGES, "stream": True}
    async with await post(server, body) as response:
        assert response.status == 400
        assert response.headers["x-should-retry"] == "false"
        error = (await response.json())["error"]
    assert error["message"] == (
        "model provider 'fireworks' is not configured on this hub: set FIREWORKS_API_KEY"
    )
    assert error["type"] == "invalid_request_error" and error["param"] == "model"


async def test_client_disconnect_cancels_the_provider_stream(server: Server) -> None:
    stub = server.router.stubs["stub:hang"] = StubProvider(hang_after=1)
    body = {"model": "stub:hang", "messages": MESSAGES, "stream": True}
    response = await post(server, body)
    async with asyncio.timeout(4 * UNIT):
        line = await response.content.readline()
    assert line.startswith(b"data: ")
    assert not stub.closed.is_set()
    response.close()  # the client goes away mid-stream
    async with asyncio.timeout(4 * UNIT):
        await stub.closed.wait()


async def test_request_fields_reach_the_provider(server: Server) -> None:
    stub = server.router.stubs["stub:ok"] = StubProvider()
    body = {
        "model": "stub:ok",
        "messages": [{"role": "user", "content": "hi", "name": "ann"}],
        "stream": True,
        "temperature": 1,
        "max_completion_tokens": 9,
        "stop": ["x"],
        "tools": [{"type": "function", "function": {"name": "f"}}],
    }
    async with await post(server, body) as response:
        events = await sse_events(response)
    assert events[-1] == "[DONE]"
    request = stub.requests[-1]
    assert request.model == "stub:ok"
    assert request.messages == body["messages"]
    assert request.temperature == 1
    assert request.max_tokens == 9
    assert request.extra == {"stop": ["x"], "tools": body["tools"]}


@pytest.mark.parametrize(
    ("raw", "param", "words"),
    [
        (b"{not json", None, "not valid JSON"),
        (b"[]", None, "JSON object"),
        (b'{"messages": [{"role": "user", "content": "hi"}]}', "model", "Missing"),
        (b'{"model": "simulated"}', "messages", "Missing"),
        (b'{"model": 7, "messages": [{"role": "user", "content": "hi"}]}', "model", "string"),
        (b'{"model": "", "messages": [{"role": "user", "content": "hi"}]}', "model", "at least"),
        (b'{"model": "simulated", "messages": []}', "messages", "at least 1"),
        (b'{"model": "simulated", "messages": [{"content": "hi"}]}', "messages[0].role", "Missing"),
        (
            b'{"model": "simulated", "messages": [{"role": "wizard", "content": "hi"}]}',
            "messages[0].role",
            "'user'",
        ),
        (
            b'{"model": "simulated", "messages": [{"role": "user", "content": 5}]}',
            "messages[0].content",
            "content must be a string",
        ),
        (
            b'{"model": "simulated", "messages": [{"role": "user"}], "max_tokens": 0}',
            "max_tokens",
            "greater than or equal to 1",
        ),
        (
            b'{"model": "simulated", "messages": [{"role": "user"}], "stream": "yes"}',
            "stream",
            "boolean",
        ),
        (b'{"model": "simulated", "messages": [{"role": "user"}], "n": 129}', "n", "128"),
    ],
)
async def test_bad_bodies(server: Server, raw: bytes, param: str | None, words: str) -> None:
    async with await post(server, None, raw=raw) as response:
        assert response.status == 400
        assert response.headers["x-should-retry"] == "false"
        error = (await response.json())["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert words in error["message"]


async def test_list_models(server: Server) -> None:
    async with server.http.get(f"{server.url}/models") as response:
        assert response.status == 200
        body = await response.json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ["simulated"]
    page = await server.sdk.models.list()
    assert [m.id for m in page.data] == ["simulated"]


async def test_disconnect_without_handler_cancellation() -> None:
    """Without ``handler_cancellation`` the next write finds the client gone and stops."""
    closed = asyncio.Event()
    inner = SimulatedModel("simulated:tokens=1000,rate=50")

    class Watched:
        name = "watched"

        async def stream(self, request: CompletionRequest) -> AsyncIterator[ChatCompletionChunk]:
            try:
                async for chunk in inner.stream(request):
                    yield chunk
            finally:
                closed.set()

        async def complete(self, request: CompletionRequest) -> ChatCompletion:
            return await inner.complete(request)

    router = StubRouter(env={})
    router.stubs["watched"] = Watched()  # type: ignore[assignment]
    app = web.Application(middlewares=[error_middleware])
    for method, path, handler in routes(router):
        app.router.add_route(method, "/v1" + path, handler)
    runner = web.AppRunner(app, handler_cancellation=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/v1/chat/completions"
    try:
        async with aiohttp.ClientSession() as http:
            body = {"model": "watched", "messages": MESSAGES, "stream": True}
            response = await http.post(url, json=body)
            async with asyncio.timeout(4 * UNIT):
                await response.content.readline()
            response.close()
            async with asyncio.timeout(4 * UNIT):
                await closed.wait()
    finally:
        await runner.cleanup()
