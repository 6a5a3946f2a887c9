"""Limits at the API edge: the size of ``metadata`` and ``instructions``, the queue of runs
waiting for a slot, the simulated model's parameters, and model names naming a provider
that is not configured. Each refusal is an OpenAI-style error naming what was refused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent_runtime.errors import InvalidRequest
from agent_runtime.models.openai_compat import PROVIDERS
from agent_runtime.models.router import ModelRouter
from agent_runtime.models.simulated import SimulatedConfig, parse_spec

from ..conftest import (
    FAST_MODEL,
    SLOW_MODEL,
    StartHub,
    eventually,
    with_examples,
    write_agent,
)
from ..provider_stub import closed_port_url

PAIRS = {f"k{i}": "v" for i in range(17)}
LONG_KEY = {"k" * 65: "v"}
LONG_VALUE = {"k": "v" * 513}
AT_THE_LIMITS = {f"{i:02d}" + "k" * 62: "v" * 512 for i in range(16)}


def refused(reply: Any, param: str, *words: str) -> None:
    assert reply.status == 400, reply.body[:300]
    error = reply.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param, error
    for word in words:
        assert word in error["message"], error["message"]


@pytest.mark.parametrize(
    ("metadata", "words"),
    [(PAIRS, ["16", "17"]), (LONG_KEY, ["64", "65"]), (LONG_VALUE, ["512", "513"])],
)
async def test_metadata_is_capped_everywhere(
    start_hub: StartHub, metadata: dict[str, str], words: list[str]
) -> None:
    hub = await start_hub(model=FAST_MODEL)
    thread_id = await hub.create_thread()
    message = {"role": "user", "content": "hi", "metadata": metadata}
    run = {"assistant_id": "streaming-example"}
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("/v1/threads", {"metadata": metadata}, "metadata"),
        ("/v1/threads", {"messages": [message]}, "messages[0].metadata"),
        (f"/v1/threads/{thread_id}/messages", message, "metadata"),
        (f"/v1/threads/{thread_id}/runs", run | {"metadata": metadata}, "metadata"),
        (
            f"/v1/threads/{thread_id}/runs",
            run | {"additional_messages": [message]},
            "additional_messages[0].metadata",
        ),
        ("/v1/threads/runs", run | {"metadata": metadata}, "metadata"),
        ("/v1/threads/runs", run | {"thread": {"metadata": metadata}}, "thread.metadata"),
    ]
    for path, body, param in cases:
        refused(await hub.request("POST", path, json_body=body), param, "metadata", *words)
    # Nothing was stored on the way: the thread holds no message and no run.
    assert await hub.messages(thread_id) == []
    runs = await hub.request("GET", f"/v1/threads/{thread_id}/runs")
    assert runs.json()["data"] == []


async def test_instructions_are_capped(start_hub: StartHub) -> None:
    hub = await start_hub(model=FAST_MODEL)
    thread_id = await hub.create_thread("hi")
    path = f"/v1/threads/{thread_id}/runs"
    run = {"assistant_id": "streaming-example"}
    too_long = "x" * 256_001
    refused(
        await hub.request("POST", path, json_body=run | {"instructions": too_long}),
        "instructions",
        "256000",
    )
    refused(
        await hub.request("POST", "/v1/threads/runs", json_body=run | {"instructions": too_long}),
        "instructions",
        "256000",
    )
    refused(
        await hub.request("POST", path, json_body=run | {"additional_instructions": too_long}),
        "additional_instructions",
        "256000",
    )
    both = run | {"instructions": "x" * 200_000, "additional_instructions": "y" * 100_000}
    refused(await hub.request("POST", path, json_body=both), "additional_instructions", "256000")


async def test_metadata_and_instructions_at_the_limits_are_taken(start_hub: StartHub) -> None:
    hub = await start_hub(model=FAST_MODEL)
    made = await hub.request("POST", "/v1/threads", json_body={"metadata": AT_THE_LIMITS})
    assert made.status == 200, made.body[:300]
    thread_id = made.json()["id"]
    body = {
        "assistant_id": "streaming-example",
        "metadata": AT_THE_LIMITS,
        "instructions": "x" * 256_000,
        "additional_messages": [{"role": "user", "content": "hi", "metadata": AT_THE_LIMITS}],
    }
    run = await hub.request("POST", f"/v1/threads/{thread_id}/runs", json_body=body)
    assert run.status == 200, run.body[:300]
    assert run.json()["metadata"] == AT_THE_LIMITS


# -- the queue of runs waiting for a slot ------------------------------------------------


async def test_runs_waiting_for_a_slot_are_bounded(start_hub: StartHub) -> None:
    hub = await start_hub(model=SLOW_MODEL, runs={"max_concurrent_runs": 1, "max_queued_runs": 2})
    _running, first, _second = [await hub.start() for _ in range(3)]
    assert (await hub.run(*first))["status"] == "queued"  # behind the running one
    thread_id = await hub.create_thread("one too many")
    body = {"assistant_id": "streaming-example"}
    full = await hub.request("POST", f"/v1/threads/{thread_id}/runs", json_body=body)
    assert full.status == 429, full.body
    assert full.headers["retry-after"] == "1"
    assert full.headers["x-should-retry"] == "false"
    error = full.json()["error"]
    assert error["type"] == "rate_limit_error" and error["param"] == "max_queued_runs"
    assert "2 runs are already waiting" in error["message"]
    assert "--max-queued-runs" in error["message"]
    also_full = await hub.request("POST", "/v1/threads/runs", json_body=body)
    assert also_full.status == 429
    # A waiting run that goes makes room for one more.
    cancel = await hub.request("POST", f"/v1/threads/{first[0]}/runs/{first[1]}/cancel")
    assert cancel.status == 200
    await eventually(lambda: hub.hub.runs.live(first[1]) is None, what="the run ended")
    taken = await hub.request("POST", f"/v1/threads/{thread_id}/runs", json_body=body)
    assert taken.status == 200, taken.body
    assert taken.json()["status"] == "queued"


async def test_without_a_slot_limit_nothing_waits_and_nothing_is_refused(
    start_hub: StartHub,
) -> None:
    hub = await start_hub(model=SLOW_MODEL, runs={"max_queued_runs": 0})
    for _ in range(3):
        thread_id, run_id = await hub.start()
        assert (await hub.run(thread_id, run_id))["status"] in ("queued", "in_progress")


# -- the simulated model's parameters --------------------------------------------------------

OUT_OF_RANGE = [
    ("simulated:delay=1e308", "delay", "0 to 60 seconds"),
    ("simulated:delay=61", "delay", "0 to 60 seconds"),
    ("simulated:rate=1e-300", "rate", "0.1 to 1000000"),
    ("simulated:rate=1e7", "rate", "0.1 to 1000000"),
    ("simulated:tokens=100001", "tokens", "0 to 100000"),
    ("simulated:seed=1e30", "seed", "0 to 4294967295"),
    ("simulated:tools=2", "tools", "0 or 1"),
    ("simulated::simulated:delay=99", "delay", "0 to 60 seconds"),
]


@pytest.mark.parametrize(("model", "key", "accepted"), OUT_OF_RANGE)
def test_simulated_parameters_out_of_range_name_the_key_and_the_range(
    model: str, key: str, accepted: str
) -> None:
    with pytest.raises(InvalidRequest) as info:
        ModelRouter().resolve(model)
    assert info.value.param == "model"
    assert f"{key} must" in info.value.message and accepted in info.value.message


def test_simulated_parameters_at_their_bounds_are_taken() -> None:
    spec = "simulated:tokens=100000,rate=0.1,delay=60,seed=4294967295,tools=1"
    assert parse_spec(spec) == SimulatedConfig(
        tokens=100_000, rate=0.1, delay=60.0, seed=2**32 - 1, tools=1
    )
    assert parse_spec("simulated:rate=1000000,delay=0").rate == 1_000_000


async def test_a_simulated_model_out_of_range_is_a_400_at_the_api(start_hub: StartHub) -> None:
    hub = await start_hub(model=None)
    thread_id = await hub.create_thread("hi")
    for model, key, accepted in OUT_OF_RANGE:
        body = {"assistant_id": "streaming-example", "model": model}
        for path in (f"/v1/threads/{thread_id}/runs", "/v1/threads/runs"):
            refused(await hub.request("POST", path, json_body=body), "model", key, accepted)
        chat = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
        for stream in (False, True):
            reply = await hub.request(
                "POST", "/v1/chat/completions", json_body=chat | {"stream": stream}
            )
            refused(reply, "model", key, accepted)
    runs = await hub.request("GET", f"/v1/threads/{thread_id}/runs")
    assert runs.json()["data"] == []


async def test_an_agents_own_simulated_model_out_of_range_fails_its_run(
    start_hub: StartHub, tmp_path: Path
) -> None:
    write_agent(
        tmp_path,
        "stalling",
        "async def run(env):\n    await env.aadd_reply(await env.acompletion('hi'))\n",
        defaults={"model": "simulated:delay=1e308"},
    )
    hub = await start_hub(model=None, agents=with_examples(tmp_path))
    thread_id, run_id = await hub.start("stalling")
    events = await hub.events(thread_id, run_id)
    assert events[-1].name == "thread.run.failed"
    message = events[-1].data["last_error"]["message"]
    assert "delay must be at most 60" in message and "0 to 60 seconds" in message


# -- providers that are not configured -------------------------------------------------------

NOT_CONFIGURED = [
    ("local::x", "AGENTSTREAM_LOCAL_BASE_URL"),
    ("fireworks::llama-v3p3-70b-instruct", "FIREWORKS_API_KEY"),
    ("openai::gpt-4o", "OPENAI_API_KEY"),
    ("gpt-4o", "FIREWORKS_API_KEY"),  # the default provider's
]


@pytest.fixture
def no_provider_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    for info in PROVIDERS.values():
        monkeypatch.delenv(info.key_env, raising=False)
        monkeypatch.delenv(info.base_url_env, raising=False)


@pytest.mark.usefixtures("no_provider_configured")
async def test_a_provider_that_is_not_configured_is_refused_at_the_api(
    start_hub: StartHub,
) -> None:
    hub = await start_hub(model=None)
    thread_id = await hub.create_thread("hi")
    for model, variable in NOT_CONFIGURED:
        body = {"assistant_id": "streaming-example", "model": model}
        for path in (f"/v1/threads/{thread_id}/runs", "/v1/threads/runs"):
            reply = await hub.request("POST", path, json_body=body)
            refused(reply, "model", "not configured", variable)
        chat = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
        for stream in (False, True):
            reply = await hub.request(
                "POST", "/v1/chat/completions", json_body=chat | {"stream": stream}
            )
            refused(reply, "model", "not configured", variable)
    runs = await hub.request("GET", f"/v1/threads/{thread_id}/runs")
    assert runs.json()["data"] == []


@pytest.mark.usefixtures("no_provider_configured")
async def test_configured_and_forced_models_are_taken(
    start_hub: StartHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A forced model replaces whatever the client names: nothing to refuse.
    forced = await start_hub(model=FAST_MODEL)
    thread_id = await forced.create_thread("hi")
    body = {"assistant_id": "streaming-example", "model": "local::x"}
    reply = await forced.request("POST", f"/v1/threads/{thread_id}/runs", json_body=body)
    assert reply.status == 200, reply.body
    # A provider configured in the environment is taken (here, where nothing listens).
    monkeypatch.setenv("AGENTSTREAM_LOCAL_BASE_URL", closed_port_url())
    hub = await start_hub(model=None)
    thread_id = await hub.create_thread("hi")
    reply = await hub.request("POST", f"/v1/threads/{thread_id}/runs", json_body=body)
    assert reply.status == 200, reply.body
    events = await hub.events(thread_id, reply.json()["id"])
    assert events[-1].name == "thread.run.failed"  # nothing listens there


@pytest.mark.usefixtures("no_provider_configured")
async def test_an_agents_own_default_model_without_its_key_still_fails_the_run(
    start_hub: StartHub,
) -> None:
    hub = await start_hub(model=None)  # streaming-example's own model is on Fireworks
    thread_id, run_id = await hub.start()
    events = await hub.events(thread_id, run_id)
    assert events[-1].name == "thread.run.failed"
    assert "set FIREWORKS_API_KEY" in events[-1].data["last_error"]["message"]
