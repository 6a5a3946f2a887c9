"""OpenAI-compatible providers, against a fake provider served by aiohttp on 127.0.0.1.

The fake is the one allowed stand-in: the real providers live on the internet, an edge this
project does not own. Its behaviour is chosen by the requested model name.
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from openai.types.chat import ChatCompletionChunk

from agent_runtime.api.errors import error_kind
from agent_runtime.errors import InvalidRequest, ProviderError
from agent_runtime.models.base import CompletionRequest, ModelProvider
from agent_runtime.models.openai_compat import PROVIDERS, OpenAICompatProvider

UNIT = 0.5  # seconds; every wait in this file is a small multiple of it
FW_PREFIX = "accounts/fireworks/models/"


def chunk_json(index: int, **delta: Any) -> dict[str, Any]:
    finish = delta.pop("finish_reason", None)
    return {
        "id": "chatcmpl-fake1",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": "fake-model",
        "system_fingerprint": "fp_fake",
        "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}],
    }


GOOD_CHUNKS = [
    chunk_json(0, role="assistant", content=""),
    chunk_json(0, content="Hello"),
    chunk_json(0, content=" from"),
    chunk_json(0, content=" fake"),
    chunk_json(0, finish_reason="stop"),
]


class FakeProvider:
    """An OpenAI-compatible server whose behaviour depends on the model name's last part."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.auth: list[str | None] = []
        self.release = asyncio.Event()  # what "hang" handlers wait for
        self.disconnected = asyncio.Event()  # set when a "hang" handler is cancelled
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self.handle)
        self._runner = web.AppRunner(app, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}/v1"

    async def stop(self) -> None:
        self.release.set()
        if self._runner is not None:
            await self._runner.cleanup()

    @staticmethod
    def error(status: int, message: str, **headers: str) -> web.Response:
        body = {"error": {"message": message, "type": "fake_error", "code": f"fake_{status}"}}
        return web.json_response(body, status=status, headers=headers)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.bodies.append(body)
        self.auth.append(request.headers.get("Authorization"))
        behaviour = body["model"].rsplit("/", 1)[-1]
        if behaviour == "rate-limited":
            return self.error(429, "Too many requests, slow down", **{"retry-after-ms": "1"})
        if behaviour == "broken":
            return self.error(500, "upstream exploded", **{"retry-after-ms": "1"})
        if behaviour == "hang-before":
            await self._hang()
        if not body.get("stream"):
            return web.json_response(
                {
                    "id": "chatcmpl-fake2",
                    "object": "chat.completion",
                    "created": 1700000000,
                    "model": "fake-model",
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": "Hello from fake"},
                            "finish_reason": "stop",
                            "logprobs": None,
                        }
                    ],
                    "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
                }
            )
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        chunks = GOOD_CHUNKS[:3] if behaviour != "ok" else GOOD_CHUNKS
        for chunk in chunks:
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())
        if behaviour == "cut":
            assert request.transport is not None
            request.transport.abort()  # the connection drops mid-body
            return response
        if behaviour == "error-event":
            error = {"error": {"message": "model overloaded", "code": "overloaded"}}
            await response.write(f"data: {json.dumps(error)}\n\n".encode())
        elif behaviour == "hang-after":
            await self._hang()
        elif behaviour == "ok" and (body.get("stream_options") or {}).get("include_usage"):
            usage = {**chunk_json(0), "choices": [], "usage": {
                "prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}}  # fmt: skip
            await response.write(f"data: {json.dumps(usage)}\n\n".encode())
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    async def _hang(self) -> None:
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.disconnected.set()
            raise


@pytest.fixture
async def fake() -> AsyncIterator[FakeProvider]:
    server = FakeProvider()
    await server.start()
    yield server
    await server.stop()


MakeProvider = Callable[..., Awaitable[OpenAICompatProvider]]


@pytest.fixture
async def make_provider(fake: FakeProvider) -> AsyncIterator[MakeProvider]:
    created: list[OpenAICompatProvider] = []

    async def make(name: str = "fireworks", **kwargs: Any) -> OpenAICompatProvider:
        info = PROVIDERS[name]
        env = {info.base_url_env: fake.url, info.key_env: f"{name}-test-key"}
        kwargs.setdefault("max_retries", 0)
        provider = OpenAICompatProvider(name, env=kwargs.pop("env", env), **kwargs)
        created.append(provider)
        return provider

    yield make
    for provider in created:
        await provider.aclose()


def req(model: str, **kwargs: Any) -> CompletionRequest:
    return CompletionRequest(model=model, messages=[{"role": "user", "content": "hi"}], **kwargs)


async def collect(provider: ModelProvider, request: CompletionRequest) -> list[ChatCompletionChunk]:
    return [chunk async for chunk in provider.stream(request)]


# --------------------------------------------------------------------------- happy paths


async def test_stream_passes_chunks_through(
    fake: FakeProvider, make_provider: MakeProvider
) -> None:
    provider = await make_provider("fireworks")
    request = req(
        "llama-v3p3-70b-instruct/ok",
        temperature=0.3,
        max_tokens=50,
        extra={"stop": ["\n\n"], "top_p": 0.9, "stream_options": {"include_usage": True}},
    )
    chunks = await collect(provider, request)
    assert all(isinstance(c, ChatCompletionChunk) for c in chunks)
    assert [c.model_dump(exclude_unset=True) for c in chunks[:5]] == GOOD_CHUNKS
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == (
        "Hello from fake"
    )
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 8
    body = fake.bodies[-1]
    assert body["stream"] is True
    assert body["temperature"] == 0.3
    assert body["max_tokens"] == 50
    assert body["stop"] == ["\n\n"]
    assert body["top_p"] == 0.9
    assert body["stream_options"] == {"include_usage": True}
    assert body["messages"] == [{"role": "user", "content": "hi"}]
    assert fake.auth[-1] == "Bearer fireworks-test-key"


async def test_complete(fake: FakeProvider, make_provider: MakeProvider) -> None:
    provider = await make_provider("groq")
    completion = await provider.complete(
        req("llama-3.3-70b-versatile", extra={"stream_options": {"include_usage": True}})
    )
    assert completion.choices[0].message.content == "Hello from fake"
    assert completion.usage is not None and completion.usage.total_tokens == 8
    body = fake.bodies[-1]
    assert body["model"] == "llama-3.3-70b-versatile"
    assert "stream_options" not in body  # refused by OpenAI without stream=true
    assert not body.get("stream")
    assert fake.auth[-1] == "Bearer groq-test-key"


async def test_fireworks_model_path(fake: FakeProvider, make_provider: MakeProvider) -> None:
    provider = await make_provider("fireworks")
    assert provider.model_name("llama-v3p3-70b-instruct") == FW_PREFIX + "llama-v3p3-70b-instruct"
    assert provider.model_name("accounts/me/models/mine") == "accounts/me/models/mine"
    await provider.complete(req("llama-v3p3-70b-instruct"))
    assert fake.bodies[-1]["model"] == FW_PREFIX + "llama-v3p3-70b-instruct"
    await provider.complete(req("accounts/fireworks/models/qwen3-8b"))
    assert fake.bodies[-1]["model"] == "accounts/fireworks/models/qwen3-8b"


async def test_other_providers_keep_names(make_provider: MakeProvider) -> None:
    together = await make_provider("together")
    assert together.model_name("meta-llama/Llama-3.3-70B") == "meta-llama/Llama-3.3-70B"
    assert together.model_name("plain") == "plain"


async def test_local_needs_no_key(fake: FakeProvider, make_provider: MakeProvider) -> None:
    provider = await make_provider("local", env={"AGENTSTREAM_LOCAL_BASE_URL": fake.url})
    assert provider.base_url == fake.url
    chunks = await collect(provider, req("any/ok"))
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert fake.auth[-1] == "Bearer EMPTY"


def test_base_urls_and_overrides() -> None:
    expected = {
        "fireworks": "https://api.fireworks.ai/inference/v1",
        "openai": "https://api.openai.com/v1",
        "together": "https://api.together.xyz/v1",
        "groq": "https://api.groq.com/openai/v1",
        "local": "http://127.0.0.1:8000/v1",
    }
    assert {name: info.base_url for name, info in PROVIDERS.items()} == expected
    for name, info in PROVIDERS.items():
        assert info.resolve_base_url({}) == expected[name]
        assert info.base_url_env == f"AGENTSTREAM_{name.upper()}_BASE_URL"
        assert info.resolve_base_url({info.base_url_env: "http://x/v1"}) == "http://x/v1"


# --------------------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    ("name", "variable"),
    [
        ("fireworks", "FIREWORKS_API_KEY"),
        ("openai", "OPENAI_API_KEY"),
        ("together", "TOGETHER_API_KEY"),
        ("groq", "GROQ_API_KEY"),
    ],
)
def test_missing_key_names_the_variable(name: str, variable: str) -> None:
    with pytest.raises(ProviderError) as info:
        OpenAICompatProvider(name, env={})
    assert info.value.message == f"model provider {name!r} needs an API key: set {variable}"
    with pytest.raises(ProviderError, match=variable):
        OpenAICompatProvider(name, env={variable: "  "})


def test_unknown_provider() -> None:
    with pytest.raises(InvalidRequest, match=r"'nope'.*fireworks"):
        OpenAICompatProvider("nope", env={})


# --------------------------------------------------------------------------- failures


@pytest.mark.parametrize(("model", "status", "words"), [
    ("x/rate-limited", 429, "Too many requests, slow down"),
    ("x/broken", 500, "upstream exploded"),
])  # fmt: skip
async def test_error_answers_keep_status_and_message(
    make_provider: MakeProvider, model: str, status: int, words: str
) -> None:
    provider = await make_provider("fireworks")
    with pytest.raises(ProviderError) as info:
        await collect(provider, req(model))
    assert info.value.upstream_status == status
    assert words in info.value.message
    assert "'fireworks'" in info.value.message
    assert info.value.code == f"fake_{status}"
    with pytest.raises(ProviderError) as info:
        await provider.complete(req(model))
    assert info.value.upstream_status == status


async def test_retries_are_few(fake: FakeProvider, make_provider: MakeProvider) -> None:
    provider = await make_provider("fireworks", max_retries=1)
    with pytest.raises(ProviderError):
        await provider.complete(req("x/broken"))
    assert len(fake.bodies) == 2  # the first try and one retry


async def test_stream_cut_midway(make_provider: MakeProvider) -> None:
    provider = await make_provider("fireworks")
    received: list[ChatCompletionChunk] = []
    with pytest.raises(ProviderError) as info:
        async for chunk in provider.stream(req("x/cut")):
            received.append(chunk)
    assert len(received) == 3  # what arrived before the cut was passed on
    assert error_kind(info.value).status == 502
    assert "broke off the stream" in info.value.message


async def test_error_event_midstream(make_provider: MakeProvider) -> None:
    provider = await make_provider("fireworks")
    received: list[ChatCompletionChunk] = []
    with pytest.raises(ProviderError) as info:
        async for chunk in provider.stream(req("x/error-event")):
            received.append(chunk)
    assert len(received) == 3
    assert "model overloaded" in info.value.message
    assert info.value.code == "overloaded"
    assert error_kind(info.value).status == 502


async def test_stream_ending_without_finish(make_provider: MakeProvider) -> None:
    provider = await make_provider("fireworks")
    with pytest.raises(ProviderError, match="before the completion finished"):
        await collect(provider, req("x/no-finish"))


async def test_unreachable_provider() -> None:
    with socket.socket() as sock:  # a port that nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {"AGENTSTREAM_GROQ_BASE_URL": f"http://127.0.0.1:{port}/v1", "GROQ_API_KEY": "k"}
    provider = OpenAICompatProvider("groq", env=env, max_retries=0)
    try:
        with pytest.raises(ProviderError) as info:
            await collect(provider, req("m"))
        assert error_kind(info.value).status == 502
        assert "could not be reached" in info.value.message
        assert str(port) in info.value.message
    finally:
        await provider.aclose()


async def test_timeout(make_provider: MakeProvider) -> None:
    provider = await make_provider("fireworks", timeout=UNIT)
    with pytest.raises(ProviderError) as info:
        await provider.complete(req("x/hang-before"))
    assert error_kind(info.value).status == 504
    assert "timed out" in info.value.message


async def test_cancelling_the_consumer_closes_the_connection(
    fake: FakeProvider, make_provider: MakeProvider
) -> None:
    provider = await make_provider("fireworks")
    first = asyncio.Event()

    async def consume() -> None:
        async for _chunk in provider.stream(req("x/hang-after")):
            first.set()

    task = asyncio.create_task(consume())
    async with asyncio.timeout(4 * UNIT):
        await first.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    async with asyncio.timeout(4 * UNIT):
        await fake.disconnected.wait()  # the provider saw the connection go away
