"""The description's "Agent Usage" example, run by the hub: the nested loop over one
StreamHandler sees every provider chunk exactly once, and ``chunk.model_dump()`` works."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ..conftest import PACED_MODEL, StartHub, check_run, with_examples


@pytest.mark.parametrize("model", ["simulated:tokens=20,rate=0", PACED_MODEL])
async def test_nested_loop_yields_each_chunk_once(
    start_hub: StartHub, agents_dir: Path, model: str
) -> None:
    hub = await start_hub(agents=with_examples(agents_dir), model=model)
    thread_id, run_id = await hub.start("nested-loop")

    trace = check_run(await hub.events(thread_id, run_id))

    streamed, summary = trace.messages
    report = json.loads(summary.text)
    tokens = int(model.split("tokens=")[1].split(",")[0])
    # the provider sends a role chunk, one chunk per token, then a finish chunk
    provider_chunks = tokens + 2
    assert len(streamed.deltas) == tokens  # only chunks with text become deltas
    assert report["provider_chunks"] == provider_chunks
    assert report["outer"] == 1  # the inner loop drains the shared iterator
    assert report["outer"] + report["inner"] == provider_chunks
    assert report["distinct"] == provider_chunks
    assert report["text"] == streamed.text == streamed.delta_text
    dumps = report["dumps"]
    assert len(dumps) == report["inner"]
    assert all(d["object"] == "chat.completion.chunk" for d in dumps)
    assert dumps[-1]["choices"][0]["finish_reason"] == "stop"
    assert "".join(d["choices"][0]["delta"]["content"] or "" for d in dumps) == streamed.text
    assert await hub.assistant_texts(thread_id) == [streamed.text, summary.text]
