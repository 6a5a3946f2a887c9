"""API keys, thread ownership and CORS, over a real socket and with the real openai SDK."""

from __future__ import annotations

import openai
import pytest

from .conftest import FAST_MODEL, StartHub, check_run, within
from .sse import parse_events

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
    from agent_runtime.cli import _api_keys

    monkeypatch.setenv("AGENTSTREAM_API_KEYS", " k2, k3 ,,k1")
    assert _api_keys(["k1"]) == ("k1", "k2", "k3")
    monkeypatch.delenv("AGENTSTREAM_API_KEYS")
    assert _api_keys([]) == ()


async def test_no_key_leaks_into_storage(start_hub: StartHub) -> None:
    hub = await start_hub(model=FAST_MODEL, api_keys=(KEY_A,))
    made = await hub.request("POST", "/v1/threads", json_body={}, headers=bearer(KEY_A))
    thread = await hub.hub.store.get_thread(made.json()["id"])
    assert thread.owner is not None and KEY_A not in thread.owner
    assert "owner" not in made.json()
