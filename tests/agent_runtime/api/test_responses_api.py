"""``/v1/responses`` at the HTTP edge: bad requests are OpenAI-style errors naming the
parameter, with ``x-should-retry: false``; a streamed response is ``text/event-stream``
with ``event:`` lines whose data carry ``type`` and ``sequence_number``."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ..conftest import FAST_MODEL, QUESTION, StartHub


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
