"""API keys, thread ownership and CORS, over a real socket and with the real openai SDK."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from agent_runtime.config import HubConfig
from agent_runtime.objects import Thread, new_id, now
from agent_runtime.server import Server
from agent_runtime.store import SQLiteStore

from ..conftest import FAST_MODEL, StartHub, check_run, within
from ..e2e.test_cli import cli
from ..provider_stub import ServeProcess, call
from ..sse import parse_events

KEY_A = "sk-agentstream-a-" + "1" * 24
KEY_B = "sk-agentstream-b-" + "2" * 24


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_without_keys_everything_is_open(start_hub: StartHub) -> None:
    hub = await start_hub(model=FAST_MODEL)
    reply = await hub.request("POST", "/v1/threads", json_body={})
    assert reply.status == 200


async def test_keys_are_required_and_checked(start_hub: StartHub) -> None:
    hub = await start_hub(model=FAST_MODEL, api_keys=(KEY_A, KEY_B))
    missing = await hub.request("POST", "/v1/threads", json_body={})
    assert missing.status == 401
    assert missing.json()["error"]["code"] == "invalid_api_key"
    assert missing.headers["x-should-retry"] == "false"
    wrong = await hub.request("GET", "/v1/agents", headers=bearer("sk-nope"))
    assert wrong.status == 401
    assert "Incorrect API key" in wrong.json()["error"]["message"]
    assert (await hub.request("GET", "/v1/agents", headers=bearer(KEY_B))).status == 200
    assert (await hub.request("GET", "/metrics")).status == 401
    # Liveness and the chat page stay open: the page asks for a key itself.
    assert (await hub.request("GET", "/healthz")).status == 200
    assert (await hub.request("GET", "/")).status == 200


async def test_a_thread_belongs_to_the_key_that_made_it(start_hub: StartHub) -> None:
    hub = await start_hub(model=FAST_MODEL, api_keys=(KEY_A, KEY_B))
    made = await hub.request(
        "POST",
        "/v1/threads",
        json_body={"messages": [{"role": "user", "content": "hi"}]},
        headers=bearer(KEY_A),
    )
    thread_id = made.json()["id"]
    run = await hub.request(
        "POST",
        f"/v1/threads/{thread_id}/runs",
        json_body={"assistant_id": "streaming-example"},
        headers=bearer(KEY_A),
    )
    assert run.status == 200
    run_id = run.json()["id"]
    paths = [
        ("GET", f"/v1/threads/{thread_id}"),
        ("GET", f"/v1/threads/{thread_id}/messages"),
        ("POST", f"/v1/threads/{thread_id}/messages"),
        ("GET", f"/v1/threads/{thread_id}/runs"),
        ("GET", f"/v1/threads/{thread_id}/runs/{run_id}"),
        ("GET", f"/v1/threads/{thread_id}/runs/{run_id}/timings"),
        ("POST", f"/v1/threads/{thread_id}/runs"),
        ("POST", f"/v1/threads/{thread_id}/runs/{run_id}/cancel"),
        ("GET", f"/v1/threads/{thread_id}/stream/{run_id}"),
        ("DELETE", f"/v1/threads/{thread_id}"),
    ]
    for method, path in paths:
        other = await hub.request(
            method,
            path,
            json_body={"role": "user", "content": "x"} if method == "POST" else None,
            headers=bearer(KEY_B),
        )
        assert other.status == 404, (method, path, other.status)
        assert other.json()["error"]["message"] == f"No thread found with id '{thread_id}'."
    # The owner still sees everything, and the stream also takes ?token= (EventSource).
    mine = await hub.request("GET", f"/v1/threads/{thread_id}", headers=bearer(KEY_A))
    assert mine.status == 200
    async with (
        within(),
        hub.session.get(
            f"{hub.url}/api/v1/threads/{thread_id}/stream/{run_id}?token={KEY_A}"
        ) as resp,
    ):
        assert resp.status == 200
        check_run(parse_events(await resp.read()))
    async with hub.session.get(
        f"{hub.url}/api/v1/threads/{thread_id}/stream/{run_id}?token={KEY_B}"
    ) as resp:
        assert resp.status == 404
    # ?token= is for the stream route only.
    other_route = await hub.request("GET", f"/v1/threads/{thread_id}?token={KEY_A}")
    assert other_route.status == 401


@pytest.mark.filterwarnings("ignore:The Assistants API is deprecated:DeprecationWarning")
async def test_the_openai_sdk_sees_authentication_errors(start_hub: StartHub) -> None:
    hub = await start_hub(model=FAST_MODEL, api_keys=(KEY_A,))
    async with openai.AsyncOpenAI(base_url=f"{hub.url}/v1", api_key="sk-wrong") as client:
        with pytest.raises(openai.AuthenticationError, match="Incorrect API key"):
            await client.beta.threads.create()
    async with openai.AsyncOpenAI(base_url=f"{hub.url}/v1", api_key=KEY_A) as client:
        thread = await client.beta.threads.create()
        assert thread.id.startswith("thread_")


async def test_cors_is_off_by_default_and_configurable(start_hub: StartHub) -> None:
    closed = await start_hub(model=FAST_MODEL)
    origin = {"Origin": "https://app.example"}
    reply = await closed.request("GET", "/v1/agents", headers=origin)
    assert "Access-Control-Allow-Origin" not in reply.headers

    hub = await start_hub(model=FAST_MODEL, cors_origins=("https://app.example",))
    preflight = await hub.request(
        "OPTIONS",
        "/v1/threads",
        headers=origin | {"Access-Control-Request-Method": "POST"},
    )
    assert preflight.status == 204
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    assert "Authorization" in preflight.headers["Access-Control-Allow-Headers"]
    assert preflight.headers["Access-Control-Allow-Origin"] == "https://app.example"
    made = await hub.request("POST", "/v1/threads", json_body={}, headers=origin)
    assert made.headers["Access-Control-Allow-Origin"] == "https://app.example"
    stranger = await hub.request("GET", "/v1/agents", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in stranger.headers
    # A streaming answer carries the headers too (they are set before it starts).
    thread_id, run_id = await hub.start("streaming-example")
    async with (
        within(),
        hub.session.get(
            f"{hub.url}/v1/threads/{thread_id}/stream/{run_id}", headers=origin
        ) as resp,
    ):
        assert resp.headers["Access-Control-Allow-Origin"] == "https://app.example"
        await resp.read()


async def test_keys_on_the_command_line_and_in_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from agent_runtime.serve_flags import api_keys_from

    monkeypatch.setenv("AGENTSTREAM_API_KEYS", " k2, k3 ,,k1")
    assert api_keys_from(["k1"]) == ("k1", "k2", "k3")
    monkeypatch.delenv("AGENTSTREAM_API_KEYS")
    assert api_keys_from([]) == ()


async def test_no_key_leaks_into_storage(start_hub: StartHub) -> None:
    hub = await start_hub(model=FAST_MODEL, api_keys=(KEY_A,))
    made = await hub.request("POST", "/v1/threads", json_body={}, headers=bearer(KEY_A))
    thread = await hub.hub.store.get_thread(made.json()["id"])
    assert thread.owner is not None and KEY_A not in thread.owner
    assert "owner" not in made.json()


# -- threads made while keys were off ---------------------------------------------------


async def test_an_ownerless_thread_is_no_keys_once_keys_are_on(start_hub: StartHub) -> None:
    hub = await start_hub(model=FAST_MODEL, api_keys=(KEY_A, KEY_B))
    thread = Thread(id=new_id("thread"), created_at=now())  # made while keys were off
    await hub.hub.store.create_thread(thread)
    for key in (KEY_A, KEY_B):
        for method, path in (
            ("GET", f"/v1/threads/{thread.id}"),
            ("GET", f"/v1/threads/{thread.id}/messages"),
            ("POST", f"/v1/threads/{thread.id}/runs"),
            ("DELETE", f"/v1/threads/{thread.id}"),
        ):
            body = {"assistant_id": "streaming-example"} if method == "POST" else None
            reply = await hub.request(method, path, json_body=body, headers=bearer(key))
            assert reply.status == 404, (key, method, path, reply.status)
            assert reply.json()["error"]["message"] == f"No thread found with id '{thread.id}'."
    await hub.hub.store.get_thread(thread.id)  # still there: nobody could delete it


async def _serve(data_dir: Path, **settings: Any) -> Server:
    """A hub on a real socket, on the SQLite store in ``data_dir``."""
    config = HubConfig(
        port=0, force_model=FAST_MODEL, store="sqlite", data_dir=data_dir, **settings
    )
    server = Server(config)
    await server.start()
    return server


async def test_ownerless_threads_are_counted_at_start_and_adopted_on_request(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Keys off: a thread without owner. Keys on: one warning naming how many, and 404
    for every key. ``adopt_unowned_threads``: the thread is that key's, and no warning."""
    async with aiohttp.ClientSession() as session:
        open_hub = await _serve(tmp_path)
        try:
            made = await call(session, "POST", f"{open_hub.url}/v1/threads", {})
            await call(session, "POST", f"{open_hub.url}/v1/threads", {})
        finally:
            await open_hub.aclose()
        path = f"/v1/threads/{made['id']}"

        caplog.set_level(logging.INFO, logger="agent_runtime.hub")
        keyed = await _serve(tmp_path, api_keys=(KEY_A, KEY_B))
        try:
            warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
            assert len(warnings) == 1 and warnings[0].startswith("2 threads have no owner")
            assert "--adopt-unowned-threads" in warnings[0]
            for key in (KEY_A, KEY_B):
                async with session.get(keyed.url + path, headers=bearer(key)) as reply:
                    assert reply.status == 404
        finally:
            await keyed.aclose()

        caplog.clear()
        adopting = await _serve(tmp_path, api_keys=(KEY_A, KEY_B), adopt_unowned_threads=KEY_B)
        try:
            messages = [r.getMessage() for r in caplog.records]
            assert "adopted 2 threads without an owner for the given API key" in messages
            assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
            async with session.get(adopting.url + path, headers=bearer(KEY_B)) as reply:
                assert reply.status == 200
            async with session.get(adopting.url + path, headers=bearer(KEY_A)) as reply:
                assert reply.status == 404
        finally:
            await adopting.aclose()


def test_only_a_configured_key_can_adopt() -> None:
    with pytest.raises(ValueError, match="adopt_unowned_threads needs one of the API keys"):
        HubConfig(api_keys=(KEY_A,), adopt_unowned_threads=KEY_B)


async def test_serve_adopts_ownerless_threads_with_the_flag(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    store = await SQLiteStore.open(tmp_path / "agentstream.db")
    thread = Thread(id=new_id("thread"), created_at=now())
    await store.create_thread(thread)
    await store.aclose()
    args = ("--store", "sqlite", "--data-dir", str(tmp_path), "--api-key", KEY_A)
    serve = ServeProcess(*args, "--adopt-unowned-threads", KEY_A)
    try:
        url = await serve.start()
        async with session.get(f"{url}/v1/threads/{thread.id}", headers=bearer(KEY_A)) as reply:
            assert reply.status == 200
        assert "adopted 1 threads without an owner" in serve.output
    finally:
        await serve.aclose()


def test_serve_refuses_to_adopt_for_a_key_it_does_not_take(tmp_path: Path) -> None:
    refused = cli("serve", "--data-dir", str(tmp_path), "--adopt-unowned-threads", KEY_A)
    assert refused.returncode == 2
    assert "--adopt-unowned-threads needs one of the API keys" in refused.stderr


# -- malformed keys and where ?token= is taken ------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        b"Bearer \xc3\xa9t\xc3\xa9",
        b"Bearer \xff\xfe",
        b"Bearer sk-\x80",
        b"Bearer ",
        b"Bearer a b",
        b"\xe2\x9c\x93",
    ],
)
async def test_a_malformed_authorization_header_is_a_401(
    start_hub: StartHub, header: bytes
) -> None:
    hub = await start_hub(model=FAST_MODEL, api_keys=(KEY_A,))
    reader, writer = await asyncio.open_connection(hub.server.config.host, hub.server.port)
    try:
        writer.write(
            b"GET /v1/agents HTTP/1.1\r\nHost: hub\r\nConnection: close\r\n"
            b"Authorization: " + header + b"\r\n\r\n"
        )
        async with within():
            answer = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 401 "), answer[:300]
    error = json.loads(body)["error"]
    assert error["code"] == "invalid_api_key" and error["type"] == "invalid_request_error"


async def test_the_query_token_is_taken_on_the_stream_route_only(start_hub: StartHub) -> None:
    hub = await start_hub(model=FAST_MODEL, api_keys=(KEY_A,))
    made = await hub.request("POST", "/v1/threads", json_body={}, headers=bearer(KEY_A))
    thread_id = made.json()["id"]
    # Paths that spell '/stream/' without being the stream route: no key was presented.
    for path in (
        f"/v1/threads/{thread_id}%2Fstream%2Fx",
        f"/api/v1/threads/{thread_id}/messages/msg_1%2Fstream%2Fx",
        "/v1/agents/stream/x",
        f"/v1/threads/{thread_id}/stream/run_1/more",
    ):
        reply = await hub.request("GET", f"{path}?token={KEY_A}")
        assert reply.status == 401, (path, reply.status)
        assert reply.json()["error"]["message"].startswith("Missing API key")
    # The stream route itself, on both mirrors: the key is taken (the run is unknown).
    for prefix in ("/v1", "/api/v1"):
        reply = await hub.request("GET", f"{prefix}/threads/{thread_id}/stream/run_1?token={KEY_A}")
        assert reply.status == 404, reply.body
