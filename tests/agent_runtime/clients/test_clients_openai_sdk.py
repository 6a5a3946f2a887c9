"""The official ``openai`` SDK's Assistants streaming client against a real hub: its event
handlers (``AssistantEventHandler`` / ``AsyncAssistantEventHandler``) over ``runs.stream``,
``runs.create(stream=True)`` and ``create_and_run_stream``; joining a run and resuming it
from a cursor (``snapshot=1``) with the SDK's own stream classes over
``GET /threads/{thread_id}/stream/{run_id}``; and the rest of the surface an SDK user
touches (pagination, polling, ``/api/v1``).

``test_e2e_openai_sdk.py`` has the async raw-event and ``runs.stream`` basics; this file
adds the sync client, what the handlers see, live text, joins and resumes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from openai.lib.streaming import AssistantStreamManager

from ..clients_helpers import (
    ASSISTANTS_DEPRECATED,
    AsyncRecorder,
    Recorder,
    async_join,
    async_sdk,
    check_recording,
    join,
    live_model,
    platonic,
    socratic,
    sync_sdk,
    texts_of,
)
from ..conftest import (
    GAP,
    QUESTION,
    UNIT,
    HubClient,
    StartHub,
    check_run,
    with_examples,
    within,
)

pytestmark = ASSISTANTS_DEPRECATED

EXAMPLE = "streaming-example"
USER: Any = {"role": "user", "content": QUESTION}


def is_live(hub: HubClient) -> Callable[[str], bool]:
    """Whether a run is still live in the hub (read from the SDK's thread: a dict lookup)."""
    return lambda run_id: hub.hub.runs.live(run_id) is not None


async def wait_end(hub: HubClient, run_id: str) -> None:
    ctx = hub.hub.runs.live(run_id)
    if ctx is not None:
        async with within(5):
            await ctx.done.wait()


# -- creating runs that stream ----------------------------------------------------------------


async def test_sync_runs_stream_sees_both_personas_live(start_hub: StartHub) -> None:
    hub = await start_hub(model=live_model())
    handler = Recorder(is_live(hub))

    def scenario() -> tuple[str, list[str]]:
        with sync_sdk(hub) as (client, requests):
            thread = client.beta.threads.create()
            client.beta.threads.messages.create(thread.id, role="user", content=QUESTION)
            with client.beta.threads.runs.stream(
                thread_id=thread.id, assistant_id=EXAMPLE, event_handler=handler
            ) as stream:
                stream.until_done()
                final = stream.get_final_messages()
                run = stream.get_final_run()
            assert run.status == "completed" and run.thread_id == thread.id
            check_recording(handler.seen, final, min_deltas=10, live=True)
            assert requests.count("POST", "/runs") == 1
            return thread.id, texts_of(final)

    async with within(10):
        thread_id, texts = await asyncio.to_thread(scenario)
    assert texts == await hub.assistant_texts(thread_id)
    socrates, plato = texts
    assert socratic(socrates) and platonic(plato), texts


async def test_sync_runs_create_stream_true_through_an_event_handler(start_hub: StartHub) -> None:
    hub = await start_hub()

    def scenario() -> tuple[str, str, list[str], list[str]]:
        with sync_sdk(hub) as (client, _requests):
            thread = client.beta.threads.create(messages=[USER])
            stream = client.beta.threads.runs.create(
                thread_id=thread.id, assistant_id=EXAMPLE, stream=True
            )
            handler = Recorder()
            with AssistantStreamManager(lambda: stream, event_handler=handler) as events:
                events.until_done()
                final = events.get_final_messages()
                run = events.get_final_run()
            assert run.status == "completed"
            check_recording(handler.seen, final)
            return thread.id, run.id, texts_of(final), handler.seen.events

    async with within(10):
        thread_id, run_id, texts, names = await asyncio.to_thread(scenario)
    trace = check_run(await hub.events(thread_id, run_id))
    assert names == [e.name for e in trace.events]  # every event, named from `event:`
    assert texts == trace.texts == await hub.assistant_texts(thread_id)


async def test_sync_create_and_run_stream(start_hub: StartHub) -> None:
    hub = await start_hub()

    def scenario() -> tuple[str, list[str]]:
        handler = Recorder()
        with sync_sdk(hub) as (client, requests):
            with client.beta.threads.create_and_run_stream(
                assistant_id=EXAMPLE,
                thread={"messages": [USER]},
                event_handler=handler,
            ) as stream:
                stream.until_done()
                final = stream.get_final_messages()
                run = stream.get_final_run()
            assert run.status == "completed"
            check_recording(handler.seen, final)
            assert requests.seen == [("POST", "/v1/threads/runs")]
            return run.thread_id, texts_of(final)

    async with within(10):
        thread_id, texts = await asyncio.to_thread(scenario)
    assert texts == await hub.assistant_texts(thread_id)
    assert socratic(texts[0]) and platonic(texts[1])


async def test_async_create_and_run_stream_sees_text_live(start_hub: StartHub) -> None:
    hub = await start_hub(model=live_model())
    handler = AsyncRecorder(is_live(hub))
    async with async_sdk(hub) as (client, _requests), within(10):
        async with client.beta.threads.create_and_run_stream(
            assistant_id=EXAMPLE,
            thread={"messages": [USER]},
            event_handler=handler,
        ) as stream:
            await stream.until_done()
            final = await stream.get_final_messages()
            run = await stream.get_final_run()
    assert run.status == "completed"
    check_recording(handler.seen, final, min_deltas=10, live=True)
    assert texts_of(final) == await hub.assistant_texts(run.thread_id)


# -- joining a run and resuming it with the SDK's stream classes ----------------------------------


@pytest.mark.parametrize("framing", ["openai", "default"])
async def test_sync_join_a_live_run(start_hub: StartHub, framing: str) -> None:
    """``?format=openai`` names each event on its ``event:`` line, as the SDK expects. (The
    default framing's ``data:`` holds ``{"event", "data"}``, which the SDK would parse as
    the same events.)"""
    hub = await start_hub(model=live_model())
    handler = Recorder(is_live(hub))

    def scenario() -> tuple[str, str, list[str]]:
        with sync_sdk(hub) as (client, _requests):
            thread = client.beta.threads.create(messages=[USER])
            run = client.beta.threads.runs.create(thread_id=thread.id, assistant_id=EXAMPLE)
            assert run.status == "queued"
            with join(client, thread.id, run.id, handler, framing=framing) as stream:
                stream.until_done()
                final = stream.get_final_messages()
                assert stream.get_final_run().status == "completed"
            check_recording(handler.seen, final, min_deltas=10, live=True)
            return thread.id, run.id, texts_of(final)

    async with within(10):
        thread_id, run_id, texts = await asyncio.to_thread(scenario)
    trace = check_run(await hub.events(thread_id, run_id))
    assert handler.seen.events == [e.name for e in trace.events]
    assert texts == trace.texts == await hub.assistant_texts(thread_id)


async def test_async_join_a_live_run(start_hub: StartHub) -> None:
    hub = await start_hub(model=live_model())
    handler = AsyncRecorder(is_live(hub))
    async with async_sdk(hub) as (client, _requests), within(10):
        thread = await client.beta.threads.create(messages=[USER])
        run = await client.beta.threads.runs.create(thread_id=thread.id, assistant_id=EXAMPLE)
        async with async_join(client, thread.id, run.id, handler) as stream:
            await stream.until_done()
            final = await stream.get_final_messages()
            assert (await stream.get_final_run()).status == "completed"
    check_recording(handler.seen, final, min_deltas=10, live=True)
    assert texts_of(final) == await hub.assistant_texts(thread.id)


CURSOR = 12
"""A cursor inside the first message: run created, queued, in_progress; message created,
in_progress; then deltas from event 6 on."""


async def test_sync_resume_from_a_cursor_with_snapshot(start_hub: StartHub) -> None:
    """The SDK does not surface SSE ids; ids are 1, 2, 3… per run, so a client that read
    the run from its start knows its cursor by counting. A new handler (no state) resumes
    with ``Last-Event-ID`` and ``snapshot=1``: created, one delta with the text so far, the
    exact tail. Without ``snapshot=1`` the SDK refuses the first delta."""
    hub = await start_hub(model=live_model())

    def scenario() -> tuple[str, Recorder, Recorder, list[str]]:
        with sync_sdk(hub) as (client, _requests):
            thread = client.beta.threads.create(messages=[USER])
            run = client.beta.threads.runs.create(thread_id=thread.id, assistant_id=EXAMPLE)
            first = Recorder()
            with join(client, thread.id, run.id, first) as stream:
                for count, _event in enumerate(stream, 1):
                    if count == CURSOR:
                        break
            assert first.seen.events[-1] == "thread.message.delta"

            with pytest.raises(RuntimeError, match="delta with no previous snapshot"):
                with join(client, thread.id, run.id, Recorder(), cursor=CURSOR) as stream:
                    stream.until_done()

            resumed = Recorder()
            with join(client, thread.id, run.id, resumed, cursor=CURSOR, snapshot=True) as s:
                s.until_done()
                final = s.get_final_messages()
                assert s.get_final_run().status == "completed"
            return thread.id, first, resumed, texts_of(final)

    async with within(10):
        thread_id, first, resumed, texts = await asyncio.to_thread(scenario)
    assert texts == await hub.assistant_texts(thread_id)
    (seen_first,) = first.seen.deltas.values()
    head = resumed.seen.events[:3]
    assert head == ["thread.run.in_progress", "thread.message.created", "thread.message.delta"]
    first_message = next(iter(resumed.seen.deltas.values()))
    assert first_message[0] == "".join(seen_first)  # the text up to the cursor, in one delta
    assert len(resumed.seen.deltas) == 2  # and the second message, whole


async def test_async_resume_from_a_cursor_with_snapshot(start_hub: StartHub) -> None:
    hub = await start_hub(model=live_model())
    async with async_sdk(hub) as (client, _requests), within(10):
        thread = await client.beta.threads.create(messages=[USER])
        run = await client.beta.threads.runs.create(thread_id=thread.id, assistant_id=EXAMPLE)
        first = AsyncRecorder()
        async with async_join(client, thread.id, run.id, first) as stream:
            count = 0
            async for _event in stream:
                count += 1
                if count == CURSOR:
                    break
        resumed = AsyncRecorder()
        async with async_join(
            client, thread.id, run.id, resumed, cursor=CURSOR, snapshot=True
        ) as stream:
            await stream.until_done()
            final = await stream.get_final_messages()
    check_recording(resumed.seen, final, min_deltas=2)
    assert texts_of(final) == await hub.assistant_texts(thread.id)
    (seen_first,) = first.seen.deltas.values()
    assert next(iter(resumed.seen.deltas.values()))[0] == "".join(seen_first)


async def test_sdk_late_joiner_of_a_trimmed_stream(start_hub: StartHub) -> None:
    """A replay buffer too small for the run: the SDK gets ``thread.stream.gap`` (an event
    it does not know; its handler ignores it) and a snapshot, and ends with the exact
    texts."""
    hub = await start_hub(broker={"max_events_per_stream": 5})
    thread_id, run_id = await hub.start(EXAMPLE)
    await wait_end(hub, run_id)

    def scenario() -> tuple[list[str], list[str]]:
        handler = Recorder()
        with sync_sdk(hub) as (client, _requests):
            with join(client, thread_id, run_id, handler) as stream:
                stream.until_done()
                final = stream.get_final_messages()
                assert stream.get_final_run().status == "completed"
        return handler.seen.events, texts_of(final)

    async with within(5):
        names, texts = await asyncio.to_thread(scenario)
    assert names[0] == GAP
    assert names[1:] == [
        "thread.run.in_progress",
        *["thread.message.created", "thread.message.completed"] * 2,
        "thread.run.completed",
    ]
    assert texts == await hub.assistant_texts(thread_id)


async def test_cursor_at_the_end_gives_the_sdk_an_empty_stream(start_hub: StartHub) -> None:
    """``204 No Content`` for a cursor at the end of a finished run: the SDK's stream is
    empty (no event, no error), so a handler has no final run."""
    hub = await start_hub()
    thread_id, run_id = await hub.start(EXAMPLE)
    await wait_end(hub, run_id)
    last = check_run(await hub.events(thread_id, run_id)).last_id

    async with async_sdk(hub) as (client, requests), within(5):
        handler = AsyncRecorder()
        async with async_join(client, thread_id, run_id, handler, cursor=last) as stream:
            await stream.until_done()
            with pytest.raises(RuntimeError, match="No final run"):
                await stream.get_final_run()
    assert handler.seen.events == []
    assert requests.count("GET", "/stream/") == 1


# -- the rest of what an SDK user touches ---------------------------------------------------------


async def test_sync_sdk_surface_on_the_api_v1_mirror(start_hub: StartHub) -> None:
    """Threads, paginated messages, ``create_and_poll``, run listing and reading,
    ``models.list`` and thread deletion, all through ``/api/v1``."""
    hub = await start_hub()

    def scenario() -> None:
        with sync_sdk(hub, prefix="/api/v1") as (client, requests):
            thread = client.beta.threads.create(
                messages=[USER],
                metadata={"topic": "virtue"},
            )
            assert client.beta.threads.retrieve(thread.id).metadata == {"topic": "virtue"}
            client.beta.threads.messages.create(
                thread.id,
                role="user",
                content=[{"type": "text", "text": "And "}, {"type": "text", "text": "courage?"}],
            )
            run = client.beta.threads.runs.create_and_poll(
                thread_id=thread.id, assistant_id=EXAMPLE, poll_interval_ms=10
            )
            assert run.status == "completed"
            assert client.beta.threads.runs.retrieve(run.id, thread_id=thread.id).id == run.id
            assert [r.id for r in client.beta.threads.runs.list(thread_id=thread.id)] == [run.id]

            pages = client.beta.threads.messages.list(thread.id, order="asc", limit=1)
            messages = list(pages)  # auto-pagination: one request per message, then the end
            assert [m.role for m in messages] == ["user", "user", "assistant", "assistant"]
            assert texts_of(messages[:2]) == [QUESTION, "And courage?"]
            assert all(m.run_id == run.id for m in messages[2:])
            assert requests.count("GET", "/messages") == 4
            only_run = client.beta.threads.messages.list(thread.id, run_id=run.id)
            assert [m.id for m in only_run] == [m.id for m in reversed(messages[2:])]
            one = client.beta.threads.messages.retrieve(messages[2].id, thread_id=thread.id)
            assert one.content == messages[2].content and one.assistant_id == EXAMPLE
            assert all(path.startswith("/api/v1/") for _m, path in requests.seen)

            assert "simulated" in [m.id for m in client.models.list()]
            assert client.beta.threads.delete(thread.id).deleted is True

    async with within(10):
        await asyncio.to_thread(scenario)


async def test_async_runs_create_with_additional_messages_and_metadata(
    start_hub: StartHub,
) -> None:
    hub = await start_hub()
    async with async_sdk(hub) as (client, _requests), within(5):
        thread = await client.beta.threads.create()
        async with client.beta.threads.runs.stream(
            thread_id=thread.id,
            assistant_id=EXAMPLE,
            additional_messages=[USER],
            metadata={"origin": "sdk"},
            instructions="Be brief.",
        ) as stream:
            run = await stream.get_final_run()
            final = await stream.get_final_messages()
    assert run.metadata == {"origin": "sdk"} and run.instructions == "Be brief."
    stored = await hub.messages(thread.id)
    assert [m["role"] for m in stored] == ["user", "assistant", "assistant"]
    assert texts_of(final) == await hub.assistant_texts(thread.id)


async def test_sdk_reads_through_keepalives_while_the_run_is_quiet(start_hub: StartHub) -> None:
    """A model that is quiet for longer than the keepalive interval (a slow first token, a
    non-streamed completion, a tool): keepalives go out between events."""
    quiet = f"simulated:tokens=5,rate=0,delay={0.3 * UNIT:g}"
    hub = await start_hub(model=quiet, broker={"keepalive": 0.05 * UNIT})
    async with async_sdk(hub) as (client, _requests), within(5):
        thread = await client.beta.threads.create(messages=[USER])
        async with client.beta.threads.runs.stream(
            thread_id=thread.id, assistant_id=EXAMPLE
        ) as stream:
            run = await stream.get_final_run()
    assert run.status == "completed"


@pytest.mark.in_process_only(
    reason="relies on both messages being created before either streams: in a worker, "
    "the second completion starts a round trip after the first, whose deltas come first"
)
async def test_interleaved_messages_reach_the_sdk_whole_but_its_deltas_mix(
    start_hub: StartHub, agents_dir: Path
) -> None:
    """An agent streaming two completions at once interleaves their deltas, each naming its
    message. The SDK's handler keeps one "current message" and adds every delta to it, so
    ``on_text_delta`` attributes them wrongly; the completed messages (and
    ``get_final_messages()``) are exact. See docs/compatibility.md."""
    hub = await start_hub(agents=with_examples(agents_dir), model=live_model(20, 0.1))
    handler = AsyncRecorder()
    async with async_sdk(hub) as (client, _requests), within(5):
        thread = await client.beta.threads.create(messages=[USER])
        async with client.beta.threads.runs.stream(
            thread_id=thread.id, assistant_id="two-streams", event_handler=handler
        ) as stream:
            final = await stream.get_final_messages()
    texts = await hub.assistant_texts(thread.id)
    assert texts_of(final) == texts
    assert socratic(texts[0]) and platonic(texts[1])
    kinds = [kind for kind, _id in handler.seen.order]
    assert kinds[:2] == ["created", "created"]  # both stream at once
    received = handler.seen.texts()
    assert sum(map(len, received)) == sum(map(len, texts))  # every delta, once...
    assert received != texts  # ...but credited to the message created last
