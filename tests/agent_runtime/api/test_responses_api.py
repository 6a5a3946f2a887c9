"""``/v1/responses`` at the HTTP edge: bad requests are OpenAI-style errors naming the
parameter, with ``x-should-retry: false``; a streamed response is ``text/event-stream``
with ``event:`` lines whose data carry ``type`` and ``sequence_number``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from ..conftest import FAST_MODEL, QUESTION, SLOW_MODEL, StartHub, within
from ..sse import SSEReader


def refused(reply: Any, status: int, param: str | None) -> None:
    assert reply.status == status, reply.body[:300]
    assert reply.headers["x-should-retry"] == "false"
    error = reply.json()["error"]
    assert error["param"] == param, error
    assert error["message"]


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"input": QUESTION}, 400, "model"),
        ({"model": "simulated", "input": 5}, 400, "input"),
        (
            {"model": "simulated", "input": [{"role": "robot", "content": "x"}]},
            400,
            "input[0].role",
        ),
        ({"model": "simulated", "input": [{"type": "input_image"}]}, 400, "input[0].type"),
        ({"model": "simulated", "temperature": 3}, 400, "temperature"),
        ({"model": "simulated", "metadata": {"k" * 65: "v"}}, 400, "metadata"),
        ({"model": "agent:nobody", "input": QUESTION}, 404, "model"),
        ({"model": "simulated", "previous_response_id": "resp_x"}, 404, "response_id"),
        ({"model": "simulated", "conversation": "thread_x"}, 404, "conversation"),
    ],
)
async def test_bad_requests(
    start_hub: StartHub, body: dict[str, Any], status: int, param: str
) -> None:
    hub = await start_hub(model=FAST_MODEL)
    reply = await hub.request("POST", "/v1/responses", json_body=body)
    refused(reply, status, param)


async def test_bad_json_and_bad_cursors(start_hub: StartHub) -> None:
    hub = await start_hub(model=FAST_MODEL)
    reply = await hub.request("POST", "/v1/responses", data=b"{nope")
    assert reply.status == 400 and reply.json()["error"]["type"] == "invalid_request_error"
    done = await hub.request(
        "POST", "/v1/responses", json_body={"model": "simulated", "input": "hi"}
    )
    rid = done.json()["id"]
    for query, param in (
        ("starting_after=-1", "starting_after"),
        ("starting_after=99999", "starting_after"),
    ):
        reply = await hub.request("GET", f"/v1/responses/{rid}?stream=true&{query}")
        assert reply.status == 400 and reply.json()["error"]["param"] == param
    reply = await hub.request("GET", f"/v1/responses/{rid}/input_items?limit=0")
    assert reply.status == 400


async def test_the_wire_format(start_hub: StartHub) -> None:
    hub = await start_hub(model=FAST_MODEL)
    reply = await hub.request(
        "POST", "/v1/responses", json_body={"model": "simulated", "input": "hi", "stream": True}
    )
    assert reply.status == 200
    assert reply.headers["Content-Type"].startswith("text/event-stream")
    blocks = [b for b in reply.body.decode().split("\n\n") if "data: {" in b]
    for number, block in enumerate(blocks):
        fields = dict(
            line.split(": ", 1) for line in block.splitlines() if not line.startswith("retry")
        )
        data = json.loads(fields["data"])
        assert fields["event"] == data["type"]
        assert data["sequence_number"] == number and fields["id"] == str(number + 1)
    assert reply.body.endswith(b"event: done\ndata: [DONE]\n\n")


async def test_a_response_live_at_shutdown_is_stored_ended(
    start_hub: StartHub, tmp_path: Path
) -> None:
    """The hub's shutdown ends the response's run, then writes the response's final
    record (its end and its head) before the store closes: after a restart its stream
    is served whole from the store, and a cursor at its end gets 204."""
    settings: dict[str, Any] = {"store": "sqlite", "data_dir": tmp_path, "model": SLOW_MODEL}
    hub = await start_hub(**settings)
    created = await hub.request(
        "POST",
        "/v1/responses",
        json_body={"model": "agent:streaming-example", "input": QUESTION, "background": True},
    )
    rid = created.json()["id"]
    url = f"{hub.url}/v1/responses/{rid}?stream=true"
    async with hub.session.get(url) as response, within(5):
        await SSEReader(response, "openai").until(lambda e: e.name == "response.output_text.delta")
    await hub.server.aclose()

    again = await start_hub(**settings)
    body = (await again.request("GET", f"/v1/responses/{rid}?stream=true")).body
    lines = body.decode().splitlines()
    events = [json.loads(line[6:]) for line in lines if line.startswith("data: {")]
    assert events[-1]["type"] == "response.failed", events[-1]
    assert events[-1]["response"]["status"] == "failed"  # ended by the shutdown
    last = events[-1]["sequence_number"]
    at_end = await again.request("GET", f"/v1/responses/{rid}?stream=true&starting_after={last}")
    assert at_end.status == 204, at_end.body[:300]
