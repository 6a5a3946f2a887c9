"""A started hub and an HTTP client over it (:class:`HubClient`), as the ``start_hub``
fixture (in ``conftest``) returns it; :class:`Reply`, one whole answer."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import aiohttp
from multidict import CIMultiDictProxy

from agent_runtime.api.keys import HUB
from agent_runtime.hub import Hub
from agent_runtime.server import Server
from broker.redis_streams import RedisRegistry

from .basics import QUESTION, eventually, within
from .sse import Ev, SSEReader, parse_events


@dataclass
class Reply:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def events(self, framing: str = "default") -> list[Ev]:
        return parse_events(self.body, framing)


class HubClient:
    """A started hub and an aiohttp session on it."""

    def __init__(
        self, server: Server, session: aiohttp.ClientSession, watcher: Server | None = None
    ) -> None:
        self.server = server
        self.session = session
        self.watcher = watcher
        """On the Redis backend, the second node: it serves every stream request."""

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def stream_url(self) -> str:
        """Where stream requests go: the other node on Redis, else the hub itself."""
        return (self.watcher or self.server).url

    @property
    def hub(self) -> Hub:
        assert self.server.app is not None
        return self.server.app[HUB]

    async def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        data: bytes | str | None = None,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
    ) -> Reply:
        async with self.session.request(
            method, self.url + path, json=json_body, data=data, headers=headers, params=params
        ) as response:
            body = await response.read()
            return Reply(response.status, response.headers, body)

    async def dropped(self, run_id: str) -> None:
        """Wait until the hub has dropped the run's stream (its retention is over) and,
        on Redis, until Redis has expired it too and the node serving streams has let its
        mirror go (a loaded machine runs its retention timer late)."""
        await eventually(lambda: run_id not in self.hub.registry, what="the stream is dropped")
        if self.watcher is not None and self.watcher.app is not None:
            mirrors = self.watcher.app[HUB].registry
            await eventually(lambda: run_id not in mirrors, what="the mirror is dropped")
        registry = self.hub.registry
        if isinstance(registry, RedisRegistry):
            key = registry.redis_key(run_id)
            async with within(5):
                while await registry.client.exists(key):  # noqa: ASYNC110 - no event exists
                    await asyncio.sleep(0.005)  # a key's expiry: nothing to await

    async def create_thread(self, *texts: str) -> str:
        messages = [{"role": "user", "content": text} for text in texts]
        reply = await self.request("POST", "/v1/threads", json_body={"messages": messages})
        assert reply.status == 200, reply.body
        thread_id: str = reply.json()["id"]
        return thread_id

    async def create_run(self, thread_id: str, agent: str = "streaming-example") -> dict[str, Any]:
        reply = await self.request(
            "POST", f"/v1/threads/{thread_id}/runs", json_body={"assistant_id": agent}
        )
        assert reply.status == 200, reply.body
        run: dict[str, Any] = reply.json()
        return run

    async def start(
        self, agent: str = "streaming-example", text: str = QUESTION
    ) -> tuple[str, str]:
        """A new thread holding ``text`` and a run of ``agent`` on it: (thread id, run id)."""
        thread_id = await self.create_thread(text)
        run = await self.create_run(thread_id, agent)
        return thread_id, run["id"]

    @asynccontextmanager
    async def open_stream(
        self,
        thread_id: str,
        run_id: str,
        *,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
        prefix: str = "/v1",
        on_owner: bool = False,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """``on_owner``: ask the node running the run even on Redis (a subscriber that
        must be there from the first event)."""
        base = self.url if on_owner else self.stream_url
        url = f"{base}{prefix}/threads/{thread_id}/stream/{run_id}"
        async with self.session.get(url, headers=headers, params=params) as response:
            yield response

    @asynccontextmanager
    async def reader(
        self, thread_id: str, run_id: str, *, framing: str = "default", **kwargs: Any
    ) -> AsyncIterator[SSEReader]:
        """A live stream, read event by event; it must answer 200 with an event stream."""
        if framing != "default":
            kwargs["params"] = {**kwargs.get("params", {}), "format": framing}
        async with self.open_stream(thread_id, run_id, **kwargs) as response:
            assert response.status == 200, await response.read()
            assert response.headers["Content-Type"].startswith("text/event-stream")
            yield SSEReader(response, framing)

    async def stream(
        self,
        thread_id: str,
        run_id: str,
        *,
        units: float = 5,
        headers: dict[str, str] | None = None,
        params: dict[str, str] | None = None,
        prefix: str = "/v1",
    ) -> Reply:
        """The whole answer of ``GET …/stream/{run_id}`` (bounded by ``units``)."""
        async with within(units):
            async with self.open_stream(
                thread_id, run_id, headers=headers, params=params, prefix=prefix
            ) as response:
                body = await response.read()
                return Reply(response.status, response.headers, body)

    async def events(self, thread_id: str, run_id: str, **kwargs: Any) -> list[Ev]:
        framing = kwargs.get("params", {}).get("format", "default")
        reply = await self.stream(thread_id, run_id, **kwargs)
        assert reply.status == 200, reply.body
        return reply.events(framing)

    async def messages(self, thread_id: str) -> list[dict[str, Any]]:
        reply = await self.request(
            "GET", f"/v1/threads/{thread_id}/messages", params={"order": "asc", "limit": "100"}
        )
        assert reply.status == 200, reply.body
        data: list[dict[str, Any]] = reply.json()["data"]
        return data

    async def assistant_texts(self, thread_id: str) -> list[str]:
        return [text_of(m) for m in await self.messages(thread_id) if m["role"] == "assistant"]

    async def run(self, thread_id: str, run_id: str) -> dict[str, Any]:
        reply = await self.request("GET", f"/v1/threads/{thread_id}/runs/{run_id}")
        assert reply.status == 200, reply.body
        run: dict[str, Any] = reply.json()
        return run


def text_of(message: dict[str, Any]) -> str:
    """The text of a ``thread.message`` object."""
    return "".join(p["text"]["value"] for p in message["content"] if p["type"] == "text")


StartHub = Callable[..., Awaitable[HubClient]]
