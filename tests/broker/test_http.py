"""The SSE handler over a real aiohttp server on a real socket.

Clients are ``aiohttp.ClientSession`` and, where exact bytes or transfer framing matter,
a raw HTTP/1.1 client (``helpers.RawHTTP``).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple, cast

import aiohttp
import pytest
from aiohttp import web

from broker.config import BrokerConfig
from broker.events import DONE_FRAME, Framing
from broker.registry import Registry
from broker.sse import StreamQuery, make_stream_handler, serve_stream
from broker.stream import Stream

from .conftest import OpenRaw, Serve
from .helpers import (
    GAP,
    UNIT,
    IncompleteBody,
    Rec,
    Server,
    check_sequence,
    eventually,
    records_of,
    within,
)
from .split import SplitRegistry
from .sse_parse import parse_frames


def snap(at: int) -> list[tuple[str, Any]]:
    return [
        ("thread.run", {"id": "run_1", "status": "in_progress", "at": at}),
        ("thread.message.created", {"id": "msg_1", "at": at}),
        ("thread.message.delta", {"id": "msg_1", "text": f"text up to {at}"}),
    ]


def publish_n(stream: Stream, n: int, pad: int = 0) -> list[tuple[str, Any]]:
    out = []
    for _ in range(n):
        payload = {"i": stream.head + 1, "text": "tok\n" + "p" * pad}
        stream.publish("thread.message.delta", payload)
        out.append(("thread.message.delta", payload))
    return out


RETRY = b"retry: 1000\n"
"""Every default-framing response starts with the SSE reconnection delay (BrokerConfig.retry_ms)."""


def frames_of(stream: Stream, first: int, last: int, framing: Framing = Framing.DEFAULT) -> bytes:
    events = [stream.buffer.get(i) for i in range(first, last + 1)]
    assert all(e is not None for e in events)
    return b"".join(e.frame(framing) for e in events if e is not None)


def body_of(stream: Stream, first: int, last: int) -> bytes:
    """A whole default-framing response body carrying events ``first`` to ``last``."""
    return RETRY + frames_of(stream, first, last)


NewRegistry = Callable[..., Registry]


class Served(NamedTuple):
    registry: Registry
    server: Server
    stream: Stream


ServeOne = Callable[..., Awaitable[Served]]


@pytest.fixture(autouse=True, params=["memory", "redis"])
def backend(request: pytest.FixtureRequest) -> str:
    """Every test runs twice: on one in-memory registry, and on two nodes sharing Redis
    (published on one, served by the other; see ``split.SplitRegistry``)."""
    return str(request.param)


@pytest.fixture
def new_registry(backend: str, request: pytest.FixtureRequest) -> NewRegistry:
    """``new_registry(config=None)``: a registry on the test's backend, not yet served."""
    if backend != "redis":
        return Registry
    url = request.getfixturevalue("redis_url")
    prefix = request.getfixturevalue("redis_prefix")

    def on_redis(config: BrokerConfig | None = None) -> Registry:
        return cast(Registry, SplitRegistry(config, url=url, prefix=prefix))

    return on_redis


@pytest.fixture
def serve_one(serve: Serve, new_registry: NewRegistry) -> ServeOne:
    """``await serve_one(config=None, **options)``: a new registry on the test's backend,
    served (``serve``), then its stream ``k`` created with ``options`` (``snapshot``,
    ``resume_snapshot``). Teardown is ``serve``'s."""

    async def start(config: BrokerConfig | None = None, **options: Any) -> Served:
        registry = new_registry(config)
        server = await serve(registry)
        return Served(registry, server, registry.create("k", **options))

    return start


@pytest.fixture
async def session() -> Any:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10 * UNIT)) as s:
        yield s


# -- response head ------------------------------------------------------------------------------


async def test_sse_headers_and_no_compression(
    serve_one: ServeOne, session: aiohttp.ClientSession
) -> None:
    _, server, stream = await serve_one()
    publish_n(stream, 2)
    headers = {"Accept-Encoding": "gzip, deflate, br"}
    async with within(), session.get(server.url("/s/k"), headers=headers) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "text/event-stream"
        assert resp.headers["Cache-Control"] == "no-cache"
        assert resp.headers["X-Accel-Buffering"] == "no"
        assert "Content-Encoding" not in resp.headers
        assert "Content-Length" not in resp.headers
        stream.close()
        body = await resp.read()
    assert body == body_of(stream, 1, 2)


async def test_every_response_sets_the_reconnection_delay_unless_disabled(
    serve_one: ServeOne, session: aiohttp.ClientSession
) -> None:
    _, server, stream = await serve_one(BrokerConfig(retry_ms=250))
    publish_n(stream, 1)
    stream.close()
    async with within(), session.get(server.url("/s/k")) as resp:
        assert await resp.read() == b"retry: 250\n" + frames_of(stream, 1, 1)
    async with within(), session.get(server.url("/s/k?format=openai")) as resp:
        body = await resp.read()
        assert body == b"retry: 250\n" + frames_of(stream, 1, 1, Framing.OPENAI) + DONE_FRAME
    _, server, stream = await serve_one(BrokerConfig(retry_ms=None))
    publish_n(stream, 1)
    stream.close()
    async with within(), session.get(server.url("/s/k")) as resp:
        assert await resp.read() == frames_of(stream, 1, 1)


async def test_raw_head_is_chunked_and_uncompressed(serve_one: ServeOne, open_raw: OpenRaw) -> None:
    _, server, stream = await serve_one()
    publish_n(stream, 1)
    client = await open_raw(server, "/s/k", {"Accept-Encoding": "gzip"})
    assert (client.version, client.status) == ("HTTP/1.1", 200)
    assert client.headers["content-type"] == "text/event-stream"
    assert client.headers["cache-control"] == "no-cache"
    assert client.headers["x-accel-buffering"] == "no"
    assert client.headers["transfer-encoding"] == "chunked"
    assert "content-encoding" not in client.headers
    async with within():
        await client.read_events(1)
        stream.close()
        body = await client.read_to_end()
    assert body == body_of(stream, 1, 1)
    assert client.chunk_sizes[-1] == 0  # the body ended properly


# -- joining and resuming -----------------------------------------------------------------------


async def test_late_join_gets_everything_from_event_one_then_live(
    serve_one: ServeOne, open_raw: OpenRaw
) -> None:
    _, server, stream = await serve_one()
    publish_n(stream, 5)
    client = await open_raw(server, "/s/k")
    async with within():
        await client.read_events(5)
        assert bytes(client.body) == body_of(stream, 1, 5)  # the backlog, exactly
        publish_n(stream, 1)
        await client.read_events(6)  # a live event arrives without anything else happening
        publish_n(stream, 4)
        stream.close()
        body = await client.read_to_end()
    assert body == body_of(stream, 1, 10)


@pytest.mark.parametrize("how", ["header", "query"])
async def test_resume_continues_exactly(serve_one: ServeOne, open_raw: OpenRaw, how: str) -> None:
    _, server, stream = await serve_one()
    published = publish_n(stream, 6)
    first = await open_raw(server, "/s/k")
    async with within():
        frames = await first.read_events(4)
    seen = [f for f in frames if not f.is_comment]
    last_id = seen[-1].id
    assert last_id is not None
    await first.aclose()
    published += publish_n(stream, 3)
    if how == "header":
        second = await open_raw(server, "/s/k", {"Last-Event-ID": last_id})
    else:
        second = await open_raw(server, f"/s/k?last_event_id={last_id}")
    stream.close()
    async with within():
        rest = await second.read_to_end()
    # Together the two connections saw every event exactly once, in order.
    records = records_of(first.body) + records_of(rest)
    assert check_sequence(records, published=published, start=0).cursor == 9
    assert rest == body_of(stream, int(last_id) + 1, 9)


@pytest.mark.parametrize("cursor", [0, 1, 5, 8])
async def test_every_cursor_gives_the_exact_tail(
    serve_one: ServeOne, session: aiohttp.ClientSession, cursor: int
) -> None:
    _, server, stream = await serve_one()
    publish_n(stream, 9)
    stream.close()
    async with within(), session.get(server.url(f"/s/k?last_event_id={cursor}")) as resp:
        assert resp.status == 200
        assert await resp.read() == body_of(stream, cursor + 1, 9)


async def test_header_beats_query(serve_one: ServeOne, session: aiohttp.ClientSession) -> None:
    _, server, stream = await serve_one()
    publish_n(stream, 8)
    stream.close()
    url = server.url("/s/k?last_event_id=2")
    async with within(), session.get(url, headers={"Last-Event-ID": "5"}) as resp:
        assert resp.status == 200
        assert await resp.read() == body_of(stream, 6, 8)
    async with within(), session.get(url, headers={"Last-Event-ID": ""}) as resp:
        assert await resp.read() == body_of(stream, 3, 8)  # an empty header is absent


async def test_serve_stream_serves_the_query_it_is_given(
    serve: Serve, new_registry: NewRegistry, session: aiohttp.ClientSession
) -> None:
    """The caller parses the request once; ``serve_stream`` does not read it again."""
    registry = new_registry()
    stream = registry.create("k")
    publish_n(stream, 8)
    stream.close()
    query = StreamQuery(
        cursor=5, cursor_param="last_event_id", framing=Framing.OPENAI, snapshot=False
    )

    async def handler(request: web.Request) -> web.StreamResponse:
        return await serve_stream(request, stream, query, config=registry.config)

    server = await serve(registry, lambda app: app.router.add_get("/given", handler))
    async with within(), session.get(server.url("/given?last_event_id=1&format=xml")) as resp:
        assert resp.status == 200
        assert await resp.read() == RETRY + frames_of(stream, 6, 8, Framing.OPENAI) + DONE_FRAME


@pytest.mark.parametrize(
    ("query", "headers", "param"),
    [
        ("?last_event_id=abc", {}, "last_event_id"),
        ("?last_event_id=-1", {}, "last_event_id"),
        ("?last_event_id=4", {}, "last_event_id"),  # ahead of the head (3)
        ("?last_event_id=99999999999999999999999", {}, "last_event_id"),
        ("", {"Last-Event-ID": "abc"}, "Last-Event-ID"),
        ("", {"Last-Event-ID": "-1"}, "Last-Event-ID"),
        ("?last_event_id=1", {"Last-Event-ID": "x1"}, "Last-Event-ID"),
        ("?format=xml", {}, "format"),
    ],
)
async def test_bad_request_is_a_400_json_error(
    serve_one: ServeOne,
    session: aiohttp.ClientSession,
    query: str,
    headers: dict[str, str],
    param: str,
) -> None:
    registry, server, stream = await serve_one()
    publish_n(stream, 3)
    async with within(), session.get(server.url("/s/k" + query), headers=headers) as resp:
        assert resp.status == 400
        assert resp.content_type == "application/json"
        assert resp.headers["x-should-retry"] == "false"
        body = await resp.json()
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert isinstance(error["message"], str) and error["message"]
    assert registry.subscriber_count == 0


async def test_a_header_cursor_ahead_of_the_stream_names_the_header(
    serve_one: ServeOne, session: aiohttp.ClientSession
) -> None:
    """BUG: a ``Last-Event-ID`` ahead of the head is refused naming ``last_event_id``.

    ``ReplayBuffer.check_cursor`` raises ``InvalidCursor`` with its default
    ``param="last_event_id"`` whatever the cursor's origin, while a malformed header is
    reported as ``Last-Event-ID`` (``cursor.parse_cursor``).
    """
    _, server, stream = await serve_one()
    publish_n(stream, 3)
    url = server.url("/s/k")
    async with within(), session.get(url, headers={"Last-Event-ID": "4"}) as resp:
        assert resp.status == 400
        body = await resp.json()
    assert body["error"]["param"] == "Last-Event-ID"


async def test_unknown_key_is_a_404_json_error(
    serve: Serve, new_registry: NewRegistry, session: aiohttp.ClientSession
) -> None:
    registry = new_registry()
    server = await serve(registry)
    async with within(), session.get(server.url("/s/nope")) as resp:
        assert resp.status == 404
        assert resp.headers["x-should-retry"] == "false"
        body = await resp.json()
    assert body["error"]["type"] == "not_found_error"
    assert body["error"]["param"] is None


async def test_the_broker_alone_answers_errors_in_plain_text(
    serve: Serve, new_registry: NewRegistry, session: aiohttp.ClientSession
) -> None:
    """Without ``on_error``, the broker's own handler answers a status and the message."""
    registry = new_registry()
    stream = registry.create("k")
    publish_n(stream, 3)
    handler = make_stream_handler(registry)
    server = await serve(registry, lambda app: app.router.add_get("/plain/{key}", handler))
    async with within(), session.get(server.url("/plain/nope")) as resp:
        assert resp.status == 404 and resp.content_type == "text/plain"
        assert "nope" in await resp.text()
    async with within(), session.get(server.url("/plain/k?last_event_id=9")) as resp:
        assert resp.status == 400
        assert (await resp.text()).endswith("\nparam: last_event_id\n")


async def test_subscriber_limit_is_a_429(serve_one: ServeOne, open_raw: OpenRaw) -> None:
    _, server, _ = await serve_one(BrokerConfig(max_subscribers_per_stream=1))
    first = await open_raw(server, "/s/k")
    assert first.status == 200
    second = await open_raw(server, "/s/k")
    assert second.status == 429
    body = await second.read_to_end()
    assert b'"max_subscribers_per_stream"' in body
    assert second.headers["x-should-retry"] == "false"


async def test_subscriber_limit_holds_for_concurrent_requests(
    serve: Serve, new_registry: NewRegistry, open_raw: OpenRaw
) -> None:
    """BUG (latent race): the limit is checked before ``await response.prepare()`` and the
    subscription made after it.

    ``prepare`` awaits the application's ``on_response_prepare`` signal; when a receiver
    yields (any real async work), a second request passes ``check_subscribe`` before the
    first has subscribed, and both are served: ``max_subscribers_per_stream=1`` lets two in.
    """
    entered = 0
    both = asyncio.Event()

    async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
        nonlocal entered
        entered += 1
        if entered >= 2:
            both.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1 * UNIT):
                await both.wait()  # both requests meet here (or time out)

    registry = new_registry(BrokerConfig(max_subscribers_per_stream=1))
    server = await serve(registry, lambda app: app.on_response_prepare.append(on_prepare))
    registry.create("k")
    async with within():
        a, b = await asyncio.gather(open_raw(server, "/s/k"), open_raw(server, "/s/k"))
    assert sorted([a.status, b.status]) == [200, 429]
    assert registry.subscriber_count == 1


# -- framings and the end of the stream ---------------------------------------------------------


async def test_openai_framing(serve_one: ServeOne, session: aiohttp.ClientSession) -> None:
    _, server, stream = await serve_one()
    published = publish_n(stream, 3)
    async with within(), session.get(server.url("/s/k?format=openai")) as resp:
        assert resp.status == 200
        published += publish_n(stream, 2)
        stream.close()
        body = await resp.read()
    assert body == RETRY + frames_of(stream, 1, 5, Framing.OPENAI) + DONE_FRAME
    assert body.count(b"event: ") == 6
    result = check_sequence(records_of(body, Framing.OPENAI), published=published, start=0)
    assert result.done_frame and result.cursor == 5


async def test_openai_framing_of_a_finished_stream_from_a_cursor(
    serve_one: ServeOne, session: aiohttp.ClientSession
) -> None:
    _, server, stream = await serve_one()
    publish_n(stream, 3)
    stream.close()
    url = server.url("/s/k?format=openai&last_event_id=2")
    async with within(), session.get(url) as resp:
        assert await resp.read() == RETRY + frames_of(stream, 3, 3, Framing.OPENAI) + DONE_FRAME


async def test_the_response_ends_after_close_and_the_connection_is_reusable(
    serve_one: ServeOne, open_raw: OpenRaw
) -> None:
    registry, server, stream = await serve_one()
    client = await open_raw(server, "/s/k")
    async with within():
        publish_n(stream, 2)
        await client.read_events(2)
        stream.close()
        await client.read_to_end()
        assert client.ended and client.chunk_sizes[-1] == 0
        assert registry.subscriber_count == 0
        # Keep-alive: the same connection serves the next request (the cursor at the end).
        again = await client.request("/s/k", {"Last-Event-ID": "2"})
    assert again.status == 204


async def test_cursor_at_the_end_of_a_closed_stream_is_204(
    serve_one: ServeOne, session: aiohttp.ClientSession
) -> None:
    _, server, stream = await serve_one()
    publish_n(stream, 4)
    stream.close()
    for url, headers in [
        ("/s/k", {"Last-Event-ID": "4"}),
        ("/s/k?last_event_id=4", {}),
        ("/s/k?last_event_id=4&format=openai", {}),
    ]:
        async with within(), session.get(server.url(url), headers=headers) as resp:
            assert resp.status == 204
            assert await resp.read() == b""
    async with within(), session.get(server.url("/s/k?last_event_id=3")) as resp:
        assert resp.status == 200
        assert await resp.read() == body_of(stream, 4, 4)


async def test_a_live_stream_at_its_head_is_not_204(serve_one: ServeOne, open_raw: OpenRaw) -> None:
    _, server, stream = await serve_one()
    publish_n(stream, 2)
    client = await open_raw(server, "/s/k", {"Last-Event-ID": "2"})
    assert client.status == 200
    async with within():
        publish_n(stream, 1)
        await client.read_events(1)
    assert bytes(client.body) == body_of(stream, 3, 3)


async def test_subscribers_receive_byte_identical_bodies(
    serve_one: ServeOne, session: aiohttp.ClientSession
) -> None:
    _, server, stream = await serve_one()
    publish_n(stream, 3)
    async with within():
        responses = [await session.get(server.url("/s/k")) for _ in range(3)]
        for n in range(50):
            publish_n(stream, 1, pad=n)
            if n % 10 == 0:
                await asyncio.sleep(0)  # a loop turn: spread the events over several batches
        late = await session.get(server.url("/s/k"))
        stream.close()
        bodies = [await r.read() for r in [*responses, late]]
        for r in [*responses, late]:
            r.release()
    assert bodies[0] == body_of(stream, 1, 53)
    assert all(body == bodies[0] for body in bodies)


async def test_http_1_0_gets_an_unchunked_body_ended_by_close(
    serve_one: ServeOne, open_raw: OpenRaw
) -> None:
    _, server, stream = await serve_one()
    publish_n(stream, 2)
    client = await open_raw(server, "/s/k", version="1.0")
    assert client.status == 200 and not client.chunked
    async with within():
        await client.read_events(2)
        publish_n(stream, 1)
        stream.close()
        body = await client.read_to_end()
    assert body == body_of(stream, 1, 3)


# -- keepalive and leaving ----------------------------------------------------------------------


async def test_keepalive_comments_while_idle(serve_one: ServeOne, open_raw: OpenRaw) -> None:
    _, server, stream = await serve_one(BrokerConfig(keepalive=0.05 * UNIT))
    publish_n(stream, 1)
    client = await open_raw(server, "/s/k")
    async with within():
        while client.body.count(b"\n: ping\n") < 2:  # one comment line each, while idle
            assert await client.pump(), "the body ended while idle"
    async with within():
        publish_n(stream, 1)
        stream.close()
        await client.read_to_end()
    frames = parse_frames(bytes(client.body))
    assert not any(f.event == "ping" for f in frames)  # never an `event: ping`
    assert frames[1].comments[:2] == ["ping", "ping"]  # they joined the next event's block
    assert [r.id for r in records_of(client.body)] == [1, 2]


async def test_a_client_leaving_mid_stream_releases_its_subscription(
    serve_one: ServeOne, open_raw: OpenRaw
) -> None:
    registry, server, stream = await serve_one()
    client = await open_raw(server, "/s/k")
    stay = await open_raw(server, "/s/k")
    async with within():
        publish_n(stream, 3)
        await client.read_events(3)
    assert registry.subscriber_count == 2
    await client.aclose()
    await eventually(lambda: registry.subscriber_count == 1, what="subscription released")
    async with within():
        publish_n(stream, 2)
        stream.close()
        await stay.read_to_end()
    assert [r.id for r in records_of(stay.body)] == [1, 2, 3, 4, 5]
    assert registry.subscriber_count == 0


async def test_a_stream_dropped_under_a_subscriber_leaves_the_body_unterminated(
    serve_one: ServeOne, open_raw: OpenRaw
) -> None:
    registry, server, stream = await serve_one()
    client = await open_raw(server, "/s/k")
    async with within():
        publish_n(stream, 2)
        await client.read_events(2)
        registry.discard("k")
        with pytest.raises(IncompleteBody) as info:
            await client.read_to_end()
    assert [r.id for r in records_of(info.value.received)] == [1, 2]
    assert registry.subscriber_count == 0


# -- gaps and snapshots -------------------------------------------------------------------------


async def test_fresh_join_after_eviction_gets_gap_snapshot_then_tail(
    serve_one: ServeOne, open_raw: OpenRaw
) -> None:
    _, server, stream = await serve_one(BrokerConfig(max_events_per_stream=5), snapshot=snap)
    published = publish_n(stream, 20)
    client = await open_raw(server, "/s/k")
    async with within():
        await client.read_events(4)
        published += publish_n(stream, 2)
        stream.close()
        await client.read_to_end()
    recs = records_of(client.body)
    assert recs[0] == Rec(None, GAP, {"from": 0, "to": 21})
    assert [(r.id, r.name) for r in recs[1:4]] == [
        (None, "thread.run"),
        (None, "thread.message.created"),
        (20, "thread.message.delta"),
    ]
    assert [r.id for r in recs[4:]] == [21, 22]
    result = check_sequence(recs, published=published, start=0, snapshot=snap)
    assert result.gaps == [(0, 21)] and result.cursor == 22
    frames = client.frames
    assert [f.id for f in frames] == [None, None, None, "20", "21", "22"]


async def test_snapshot_on_resume_then_exact_tail(serve_one: ServeOne, open_raw: OpenRaw) -> None:
    _, server, stream = await serve_one(BrokerConfig(max_events_per_stream=5), snapshot=snap)
    published = publish_n(stream, 20)
    stream.close()
    client = await open_raw(server, "/s/k?snapshot=1", {"Last-Event-ID": "17"})
    async with within():
        await client.read_to_end()
    recs = records_of(client.body)
    assert [(r.id, r.name) for r in recs] == [
        (None, "thread.run"),
        (None, "thread.message.created"),
        (17, "thread.message.delta"),
        (18, "thread.message.delta"),
        (19, "thread.message.delta"),
        (20, "thread.message.delta"),
    ]
    assert recs[2].payload == {"id": "msg_1", "text": "text up to 17"}
    result = check_sequence(
        recs, published=published, start=17, snapshot=snap, snapshot_prefix=True
    )
    assert result.gaps == [] and result.snapshots == [17]


async def test_resume_before_the_buffer_gets_gap_and_snapshot(
    serve_one: ServeOne, session: aiohttp.ClientSession
) -> None:
    _, server, stream = await serve_one(BrokerConfig(max_events_per_stream=5), snapshot=snap)
    published = publish_n(stream, 20)
    stream.close()
    url = server.url("/s/k?format=openai&last_event_id=3")
    async with within(), session.get(url) as resp:
        body = await resp.read()
    recs = records_of(body, Framing.OPENAI)
    assert recs[0] == Rec(None, GAP, {"from": 3, "to": 21})
    result = check_sequence(recs, published=published, start=3, snapshot=snap)
    assert result.done_frame and result.cursor == 20


async def test_snapshot_on_resume_uses_the_resume_snapshot(
    serve_one: ServeOne, session: aiohttp.ClientSession
) -> None:
    def resume(at: int) -> list[tuple[str, Any]]:
        return [("thread.run", {"resumed_at": at})]

    _, server, stream = await serve_one(
        BrokerConfig(max_events_per_stream=5), snapshot=snap, resume_snapshot=resume
    )
    published = publish_n(stream, 20)
    stream.close()
    url = server.url("/s/k?snapshot=true&last_event_id=18&format=openai")
    async with within(), session.get(url) as resp:
        body = await resp.read()
    recs = records_of(body, Framing.OPENAI)
    assert recs[0] == Rec(18, "thread.run", {"resumed_at": 18})
    result = check_sequence(
        recs,
        published=published,
        start=18,
        snapshot=snap,
        snapshot_prefix=True,
        resume_snapshot=resume,
    )
    assert result.done_frame and result.cursor == 20
