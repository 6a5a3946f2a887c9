"""The Responses API through the official openai SDK against a real hub: streamed
responses of an agent and of a plain model, every event parsed as the SDK's typed events,
the deltas adding up to the output text, ``responses.stream``'s final response,
background responses resumed with ``starting_after`` (exactly the rest, by several
readers at once), cancel, delete, input items, continuing a conversation, and errors."""

from __future__ import annotations

import asyncio
import typing
from pathlib import Path
from typing import Any

import openai
import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import BaseModel

from ..clients_helpers import async_sdk, platonic, socratic
from ..conftest import (
    FAST_MODEL,
    PACED_MODEL,
    QUESTION,
    SLOW_MODEL,
    StartHub,
    eventually,
    with_examples,
    within,
    write_agent,
)


def _event_classes() -> dict[str, type[BaseModel]]:
    union = typing.get_args(ResponseStreamEvent)[0]  # Annotated[Union[...], discriminator]
    return {
        typing.get_args(cls.model_fields["type"].annotation)[0]: cls
        for cls in typing.get_args(union)
    }


EVENT_CLASSES = _event_classes()


def check_events(events: list[Any], *, first: int = 0) -> None:
    """Consecutive sequence numbers from ``first``; every standard event validates as the
    SDK's typed union (strictly, not only constructed)."""
    assert [e.sequence_number for e in events] == list(range(first, first + len(events)))
    for event in events:
        if not event.type.startswith("response.agent."):
            EVENT_CLASSES[event.type].model_validate(event.to_dict(warnings=False))


def text_from_deltas(events: list[Any]) -> str:
    return "".join(e.delta for e in events if e.type == "response.output_text.delta")


async def test_agent_response_streams_with_typed_events(start_hub: StartHub) -> None:
    hub = await start_hub(model=FAST_MODEL)
    async with async_sdk(hub) as (client, _), within(10):
        stream = await client.responses.create(
            model="agent:streaming-example", input=QUESTION, stream=True
        )
        events = [event async for event in stream]
    check_events(events)
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    assert kinds.count("response.output_item.added") == 2  # Socrates, then Plato
    final = Response.model_validate(events[-1].response.to_dict())
    assert final.status == "completed"
    texts = [item.content[0].text for item in final.output if item.type == "message"]
    assert socratic(texts[0]) and platonic(texts[1])
    assert text_from_deltas(events) == final.output_text == "".join(texts)


async def test_plain_model_response_and_stream_helper(start_hub: StartHub) -> None:
    hub = await start_hub(model=None)
    async with async_sdk(hub) as (client, _), within(10):
        stream = await client.responses.create(model=FAST_MODEL, input=QUESTION, stream=True)
        events = [event async for event in stream]
        check_events(events)
        assert events[-1].type == "response.completed"
        assert text_from_deltas(events) == events[-1].response.output_text != ""
        async with client.responses.stream(
            model=FAST_MODEL, input=QUESTION, instructions="be brief"
        ) as helper:
            seen = [event async for event in helper]
            final = await helper.get_final_response()
        assert final.status == "completed"
        assert text_from_deltas(seen) == final.output_text != ""
        plain = await client.responses.create(model=FAST_MODEL, input=QUESTION)
        assert plain.status == "completed" and plain.output_text
        again = await client.responses.retrieve(plain.id)
        assert again.output_text == plain.output_text
    async with async_sdk(hub, "/api/v1") as (mirrored, _), within(10):  # the same routes
        assert (await mirrored.responses.retrieve(plain.id)).output_text == plain.output_text


async def test_background_resume_exactly_the_rest(start_hub: StartHub) -> None:
    hub = await start_hub(model=PACED_MODEL)
    async with async_sdk(hub) as (client, _), within(20):
        created = await client.responses.create(
            model="agent:streaming-example", input=QUESTION, background=True, stream=True
        )
        head: list[Any] = []
        async for event in created:
            head.append(event)
            if event.type == "response.output_text.delta" and len(head) > 6:
                break
        await created.close()
        response_id = head[0].response.id
        cut = head[-1].sequence_number

        async def resume() -> list[Any]:
            stream = await client.responses.retrieve(response_id, stream=True, starting_after=cut)
            return [event async for event in stream]

        tails = await asyncio.gather(resume(), resume(), resume())
        assert [e.to_dict() for e in tails[0]] == [e.to_dict() for e in tails[1]]
        assert [e.to_dict() for e in tails[0]] == [e.to_dict() for e in tails[2]]
        everything = head + tails[0]
        check_events(everything)
        final = everything[-1]
        assert final.type == "response.completed"
        assert text_from_deltas(everything) == final.response.output_text
        polled = await client.responses.retrieve(response_id)
        assert polled.status == "completed" and polled.output_text == final.response.output_text
        # The whole stream again, from the start, while it is retained.
        replay = await client.responses.retrieve(response_id, stream=True)
        assert [e.to_dict() for e in [event async for event in replay]] == [
            e.to_dict() for e in everything
        ]


async def test_cancel_a_background_response(start_hub: StartHub) -> None:
    hub = await start_hub(model=SLOW_MODEL)
    async with async_sdk(hub) as (client, _), within(10):
        created = await client.responses.create(
            model="agent:streaming-example", input=QUESTION, background=True
        )
        assert created.status in ("queued", "in_progress") and created.background
        stream = await client.responses.retrieve(created.id, stream=True)
        events = []
        async for event in stream:
            events.append(event)
            if event.type == "response.output_text.delta" and len(events) < 10:
                cancelled = await client.responses.cancel(created.id)
                assert cancelled.status == "cancelled"
                events.extend([event async for event in stream])
                break
        check_events(events)
        assert events[-1].type == "response.failed"
        assert events[-1].response.status == "cancelled"
        with pytest.raises(openai.BadRequestError):
            await client.responses.cancel(created.id)


async def test_continue_delete_and_input_items(start_hub: StartHub) -> None:
    hub = await start_hub(model=FAST_MODEL)
    async with async_sdk(hub) as (client, _), within(10):
        first = await client.responses.create(model="simulated", input=QUESTION)
        second = await client.responses.create(
            model="simulated", input="And courage?", previous_response_id=first.id
        )
        assert second.previous_response_id == first.id
        assert second.conversation is not None and first.conversation is not None
        assert second.conversation.id == first.conversation.id
        items = await client.responses.input_items.list(second.id)
        assert [item.content[0].text for item in items.data] == ["And courage?"]
        third = await client.responses.create(
            model="simulated",
            input=[{"role": "user", "content": "And justice?"}],
            conversation=first.conversation.id,
        )
        assert third.conversation.id == first.conversation.id
        deleted = await client.responses.delete(first.id)
        assert deleted is None
        with pytest.raises(openai.NotFoundError):
            await client.responses.retrieve(first.id)


async def test_errors_are_openai_style(start_hub: StartHub) -> None:
    hub = await start_hub(model=None)
    async with async_sdk(hub) as (client, _), within(10):
        with pytest.raises(openai.NotFoundError):
            await client.responses.create(model="agent:no-such-agent", input=QUESTION)
        with pytest.raises(openai.BadRequestError) as bad:
            await client.responses.create(model="nosuchprovider::x", input=QUESTION)
        assert bad.value.param == "model"
        with pytest.raises(openai.NotFoundError):
            await client.responses.retrieve("resp_" + "0" * 48)
        with pytest.raises(openai.NotFoundError):
            await client.responses.retrieve("resp_nonsense")
        models = await client.models.list()
        assert "agent:streaming-example" in [m.id async for m in models]


async def test_a_reader_behind_the_buffer_gets_a_gap_and_the_response(
    start_hub: StartHub,
) -> None:
    """A cursor older than the replay buffer: the gap event, then one lifecycle event
    holding the whole response so far, stamped with the head's sequence number; the
    stream goes on exactly from there."""
    hub = await start_hub(model=PACED_MODEL, broker={"max_events_per_stream": 16})
    async with async_sdk(hub) as (client, _), within(20):
        created = await client.responses.create(
            model="agent:streaming-example", input=QUESTION, background=True
        )
        live = hub.hub.registry.get(created.id)
        assert live is not None
        await eventually(lambda: live.head > 40, what="the response is well past the buffer")
        stream = await client.responses.retrieve(created.id, stream=True, starting_after=0)
        events = [event async for event in stream]
    gap, snapshot, *rest = events
    assert gap.to_dict()["data"]["from"] == 1  # the cursor: starting_after + 1
    assert snapshot.type in ("response.in_progress", "response.completed")
    check_events(rest, first=snapshot.sequence_number + 1)
    final = rest[-1] if rest else snapshot
    assert final.type == "response.completed"
    assert final.response.output_text.startswith(snapshot.response.output_text)


async def test_resume_from_the_store_after_retention(start_hub: StartHub) -> None:
    hub = await start_hub(model=FAST_MODEL, broker={"retention": 0.01})
    async with async_sdk(hub) as (client, _), within(10):
        done = await client.responses.create(model="agent:streaming-example", input=QUESTION)
        registry = hub.hub.registry
        await eventually(lambda: done.id not in registry, what="the stream's retention ended")
        stream = await client.responses.retrieve(done.id, stream=True, starting_after=3)
        gap, final = [event async for event in stream]
        assert gap.to_dict()["data"]["from"] == 4
        assert final.type == "response.completed"
        assert final.response.output_text == done.output_text
        everything = await client.responses.retrieve(done.id, stream=True)
        assert [event.type async for event in everything][-1] == "response.completed"
        last = final.sequence_number
        empty = await client.responses.retrieve(done.id, stream=True, starting_after=last)
        assert [event async for event in empty] == []
        with pytest.raises(openai.BadRequestError):
            await client.responses.retrieve(done.id, stream=True, starting_after=last + 5)


@pytest.mark.parametrize("backend", ["redis"], indirect=True)
async def test_redis_created_on_one_node_resumed_on_another(start_hub: StartHub) -> None:
    hub = await start_hub(model=PACED_MODEL)
    async with (
        async_sdk(hub) as (client, _),
        async_sdk(hub.stream_url) as (other, _),
        within(20),
    ):
        created = await client.responses.create(
            model="agent:streaming-example", input=QUESTION, stream=True
        )
        head = []
        async for event in created:
            head.append(event)
            if event.type == "response.output_text.delta":
                break
        await created.close()
        rid = head[0].response.id
        polled = await other.responses.retrieve(rid)
        assert polled.id == rid and polled.status in ("in_progress", "completed")

        async def resume() -> list[Any]:
            stream = await other.responses.retrieve(
                rid, stream=True, starting_after=head[-1].sequence_number
            )
            return [event async for event in stream]

        tails = await asyncio.gather(resume(), resume())
        assert [e.to_dict() for e in tails[0]] == [e.to_dict() for e in tails[1]]
        everything = head + tails[0]
        check_events(everything)
        assert everything[-1].type == "response.completed"
        assert text_from_deltas(everything) == everything[-1].response.output_text
        final = await other.responses.retrieve(rid)
        assert final.status == "completed"
        assert final.output_text == everything[-1].response.output_text


async def test_a_response_is_readable_only_by_its_key(start_hub: StartHub) -> None:
    hub = await start_hub(model=FAST_MODEL, api_keys=["key-one", "key-two"])
    async with (
        async_sdk(hub, api_key="key-one") as (owner, _),
        async_sdk(hub, api_key="key-two") as (other, _),
        within(10),
    ):
        mine = await owner.responses.create(model="simulated", input=QUESTION)
        assert (await owner.responses.retrieve(mine.id)).output_text == mine.output_text
        with pytest.raises(openai.NotFoundError):
            await other.responses.retrieve(mine.id)
        with pytest.raises(openai.NotFoundError):
            await other.responses.retrieve(mine.id, stream=True, starting_after=0)
        with pytest.raises(openai.NotFoundError):
            await other.responses.input_items.list(mine.id)
        with pytest.raises(openai.NotFoundError):
            await other.responses.delete(mine.id)
        with pytest.raises(openai.NotFoundError):
            await other.responses.create(
                model="simulated", input=QUESTION, previous_response_id=mine.id
            )
        with pytest.raises(openai.AuthenticationError):
            async with async_sdk(hub, api_key="wrong") as (stranger, _):
                await stranger.responses.retrieve(mine.id)
    metrics = await hub.request("GET", "/metrics", headers={"Authorization": "Bearer key-one"})
    assert b"agentstream_responses_created_total 1.0" in metrics.body


@pytest.mark.parametrize("isolation", ["process"], indirect=True)
async def test_agents_in_worker_processes_and_the_stream_helper_resume(
    start_hub: StartHub,
) -> None:
    hub = await start_hub(model=PACED_MODEL)
    async with async_sdk(hub) as (client, _), within(20):
        created = await client.responses.create(
            model="agent:streaming-example", input=QUESTION, background=True
        )
        plain = await client.responses.create(model="simulated", input=QUESTION)
        assert plain.status == "completed" and plain.output_text
        async with client.responses.stream(response_id=created.id) as stream:
            events = [event async for event in stream]
            final = await stream.get_final_response()
    check_events(events)
    assert final.status == "completed"
    assert text_from_deltas(events) == final.output_text


async def test_a_failing_agent_and_replies_added_whole(
    start_hub: StartHub, agents_dir: Path
) -> None:
    hub = await start_hub(model=FAST_MODEL, agents=with_examples(agents_dir))
    async with async_sdk(hub) as (client, _), within(10):
        stream = await client.responses.create(model="agent:raiser", input=QUESTION, stream=True)
        events = [event async for event in stream]
        check_events(events)
        assert events[-1].type == "response.failed"
        failed = events[-1].response
        assert failed.status == "failed" and failed.error is not None
        assert "the oracle is silent 42" in failed.error.message
        assert failed.output_text == "Let me think."  # the reply it added before failing
        polled = await client.responses.retrieve(failed.id)
        assert polled.status == "failed" and polled.error == failed.error
        stream = await client.responses.create(
            model="agent:plain-replies", input=QUESTION, stream=True
        )
        events = [event async for event in stream]
        check_events(events)
        final = events[-1].response
        texts = [item.content[0].text for item in final.output if item.type == "message"]
        assert texts[:2] == ["First, plainly.", ""] and len(texts) == 3
        assert text_from_deltas(events) == final.output_text


async def test_a_live_response_cannot_be_deleted(start_hub: StartHub) -> None:
    hub = await start_hub(model=SLOW_MODEL)
    async with async_sdk(hub) as (client, _), within(10):
        live = await client.responses.create(model="simulated", input=QUESTION, background=True)
        with pytest.raises(openai.BadRequestError):
            await client.responses.delete(live.id)
        with pytest.raises(openai.ConflictError):  # one live run per thread
            await client.responses.create(
                model="simulated", input=QUESTION, previous_response_id=live.id
            )
        await client.responses.cancel(live.id)
        await client.responses.delete(live.id)


ORCHESTRATOR = """
async def run(env):
    await env.astream_text("thinking")
    await env.aemit("score", {"x": 1})
    await env.arun_agent("streaming-example", "What is virtue?", relay=True)
    await env.aadd_reply("Done.")
"""


async def test_child_runs_progress_and_custom_events(start_hub: StartHub, agents_dir: Path) -> None:
    """The ``response.agent.*`` events come through every client untouched and never
    change the output; the SDK's stream helper passes them by."""
    write_agent(agents_dir, "orchestrator", ORCHESTRATOR)
    hub = await start_hub(model=FAST_MODEL, agents=with_examples(agents_dir))
    async with async_sdk(hub) as (client, _), within(10):
        async with client.responses.stream(model="agent:orchestrator", input=QUESTION) as stream:
            events = [event async for event in stream]
            final = await stream.get_final_response()
    check_events(events)
    kinds = [e.type for e in events]
    progress = events[kinds.index("response.agent.progress")]
    assert progress.to_dict()["text"] == "thinking"
    custom = events[kinds.index("response.agent.event")].to_dict()
    assert custom["name"] == "score" and custom["data"] == {"x": 1}
    assert kinds.count("response.agent.child_run") == 2  # the step created, then ended
    relayed = "".join(e.to_dict()["text"] for e in events if e.type == "response.agent.child_delta")
    assert socratic(relayed)
    assert final.status == "completed" and final.output_text == "Done."


async def test_run_limits_apply(start_hub: StartHub) -> None:
    hub = await start_hub(model=SLOW_MODEL, runs={"max_concurrent_runs": 1, "max_queued_runs": 1})
    async with async_sdk(hub) as (client, requests), within(10):
        first = await client.responses.create(model="simulated", input=QUESTION, background=True)
        queued = await client.responses.create(model="simulated", input=QUESTION, background=True)
        assert queued.status == "queued"
        with pytest.raises(openai.RateLimitError):
            await client.responses.create(model="simulated", input=QUESTION, background=True)
        assert requests.count("POST", "/responses") == 3  # the refusal is never retried
        for response in (queued, first):
            await client.responses.cancel(response.id)
