"""Errors as the official ``openai`` SDK sees them: its own exception types carrying the
hub's message, ``type`` and ``param``; and its automatic retries (by default it retries
408, 409, 429 and 5xx twice) never repeat a refused request, so they never start a
duplicate run. Every client here keeps the SDK's default retries and counts its requests."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import openai
import pytest

from ..clients_helpers import (
    ASSISTANTS_DEPRECATED,
    AsyncRecorder,
    async_join,
    async_sdk,
    check_recording,
    join,
    sync_sdk,
    texts_of,
)
from ..conftest import FAST_MODEL, QUESTION, SLOW_MODEL, StartHub, check_run, within

pytestmark = ASSISTANTS_DEPRECATED

USER: Any = {"role": "user", "content": QUESTION}


def server_message(exc: openai.APIStatusError) -> str:
    """The hub's ``error.message``, which the SDK's own message must quote."""
    assert isinstance(exc.body, dict), exc.body
    message: str = exc.body["message"]
    assert message in exc.message, (message, exc.message)
    assert exc.response.headers["x-should-retry"] == "false"
    return message


async def test_refused_runs_are_never_retried_into_duplicates(start_hub: StartHub) -> None:
    """409 (a live run on the thread) and 404 (an unknown agent) reach the sync client at
    once, one request each, however the run was asked for; the thread keeps its one run.
    Deleting the thread meanwhile is a 409; cancelling the run once it ended, a 400."""
    hub = await start_hub(model=SLOW_MODEL)

    def refused() -> tuple[str, str]:
        with sync_sdk(hub) as (client, requests):
            runs = client.beta.threads.runs
            thread = client.beta.threads.create(messages=[USER])
            run = runs.create(thread_id=thread.id, assistant_id="streaming-example")
            requests.seen.clear()

            with pytest.raises(openai.ConflictError) as conflict:
                runs.create(thread_id=thread.id, assistant_id="streaming-example")
            assert "already has an active run" in server_message(conflict.value)
            assert conflict.value.param == "thread_id"
            with pytest.raises(openai.ConflictError):
                runs.create(thread_id=thread.id, assistant_id="async-example", stream=True)
            with pytest.raises(openai.ConflictError):
                with runs.stream(thread_id=thread.id, assistant_id="async-example"):
                    pass
            with pytest.raises(openai.NotFoundError) as unknown:
                runs.create(thread_id=thread.id, assistant_id="nobody")
            assert server_message(unknown.value) == (
                "No agent named 'nobody'; agents: async-example, streaming-example"
            )
            assert (unknown.value.type, unknown.value.param) == ("not_found_error", "assistant_id")
            assert requests.count("POST", f"/threads/{thread.id}/runs") == 4  # no retry

            with pytest.raises(openai.NotFoundError):
                client.beta.threads.create_and_run(
                    assistant_id="nobody", thread={"messages": [USER]}
                )
            with pytest.raises(openai.ConflictError) as busy:
                client.beta.threads.delete(thread.id)
            assert "cancel it before deleting" in server_message(busy.value)
            assert len(requests.seen) == 6

            assert [r.id for r in runs.list(thread_id=thread.id)] == [run.id]
            assert runs.cancel(run.id, thread_id=thread.id).status == "cancelling"
            return thread.id, run.id

    async with within(10):
        thread_id, run_id = await asyncio.to_thread(refused)
    check_run(await hub.events(thread_id, run_id, units=2), "thread.run.cancelled")

    def cancel_again() -> None:
        with sync_sdk(hub) as (client, requests):
            with pytest.raises(openai.BadRequestError) as info:
                client.beta.threads.runs.cancel(run_id, thread_id=thread_id)
            assert server_message(info.value) == "Cannot cancel run with status 'cancelled'."
            assert len(requests.seen) == 1

    async with within(5):
        await asyncio.to_thread(cancel_again)


async def test_errors_reach_the_sdk_as_its_own_types(start_hub: StartHub) -> None:
    hub = await start_hub(model=None)  # models as requested
    async with async_sdk(hub) as (client, requests), within(5):
        threads = client.beta.threads
        thread = await threads.create(messages=[USER])
        run = await threads.runs.create(
            thread_id=thread.id, assistant_id="streaming-example", model=FAST_MODEL
        )
        requests.seen.clear()

        image: Any = [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]
        cases: list[tuple[type[openai.APIStatusError], str, Callable[[], Awaitable[Any]]]] = [
            (openai.NotFoundError, "thread_nope", lambda: threads.retrieve("thread_nope")),
            (
                openai.NotFoundError,
                "thread_nope",
                lambda: threads.messages.create("thread_nope", role="user", content="hi"),
            ),
            (
                openai.NotFoundError,
                "run_nope",
                lambda: threads.runs.retrieve("run_nope", thread_id=thread.id),
            ),
            (
                openai.BadRequestError,
                "'role'",
                lambda: threads.messages.create(thread.id, role="system", content="hi"),  # type: ignore[arg-type]
            ),
            (
                openai.BadRequestError,
                "content parts of type 'image_url' are not supported",
                lambda: threads.messages.create(thread.id, role="user", content=image),
            ),
            (
                openai.BadRequestError,
                "Unknown parameter: 'colour'",
                lambda: threads.runs.create(
                    thread_id=thread.id, assistant_id="async-example", extra_body={"colour": 1}
                ),
            ),
            (
                openai.BadRequestError,
                "unknown model provider 'nope'",
                lambda: client.chat.completions.create(model="nope::x", messages=[USER]),
            ),
        ]
        for kind, words, call in cases:
            with pytest.raises(kind) as info:
                await call()
            assert words in server_message(info.value), (kind, info.value)
        assert len(requests.seen) == len(cases)

        # the stream endpoint, through the SDK's stream classes
        requests.seen.clear()
        bad_cursors: list[tuple[int | str, str]] = [
            ("abc", "Last-Event-ID must be an event id"),
            (999_999, "cursor 999999 is ahead of the stream"),
        ]
        for cursor, words in bad_cursors:
            with pytest.raises(openai.BadRequestError) as info:
                async with async_join(client, thread.id, run.id, AsyncRecorder(), cursor=cursor):
                    pass
            assert words in server_message(info.value)
            assert info.value.param == "Last-Event-ID"
        with pytest.raises(openai.NotFoundError) as missing:
            async with async_join(client, thread.id, "run_nope", AsyncRecorder()):
                pass
        assert "run_nope" in server_message(missing.value)
        assert requests.count("GET", "/stream/") == 3


async def test_rate_limited_and_failing_answers_are_not_retried(
    start_hub: StartHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The SDK retries 429 and 5xx unless told not to: a stream refused for its subscriber
    limit (429) and a provider missing its key (400) each cost one request."""
    monkeypatch.delenv("FIREWORKS_API_KEY", raising=False)
    hub = await start_hub(model=None, broker={"max_subscribers_per_stream": 1})
    thread_id = await hub.create_thread(QUESTION)
    reply = await hub.request(
        "POST",
        f"/v1/threads/{thread_id}/runs",
        json_body={"assistant_id": "async-example", "model": SLOW_MODEL},
    )
    run_id = reply.json()["id"]  # live until the hub stops

    async with hub.reader(thread_id, run_id) as _holder:  # the one subscriber allowed

        def refused() -> None:
            with sync_sdk(hub) as (client, requests):
                with pytest.raises(openai.RateLimitError) as limited:
                    with join(client, thread_id, run_id, _Handler()):
                        pass
                assert limited.value.status_code == 429
                server_message(limited.value)
                with pytest.raises(openai.BadRequestError) as failed:
                    client.chat.completions.create(
                        model="fireworks::llama-v3p3-70b-instruct", messages=[USER]
                    )
                assert failed.value.status_code == 400
                assert "set FIREWORKS_API_KEY" in server_message(failed.value)
                with pytest.raises(openai.BadRequestError):
                    client.chat.completions.create(
                        model="fireworks::llama-v3p3-70b-instruct", messages=[USER], stream=True
                    )
                assert requests.count("GET", "/stream/") == 1
                assert requests.count("POST", "/chat/completions") == 2

        async with within(10):
            await asyncio.to_thread(refused)


class _Handler(openai.AssistantEventHandler):
    pass


@pytest.mark.filterwarnings("ignore:deprecated$:DeprecationWarning")  # beta.assistants
async def test_endpoints_agentstream_does_not_serve(start_hub: StartHub) -> None:
    """What docs/compatibility.md lists as not supported answers an OpenAI-shaped error the
    SDK raises as its own type, at once."""
    hub = await start_hub()
    async with async_sdk(hub) as (client, requests), within(5):
        thread = await client.beta.threads.create(messages=[USER])
        requests.seen.clear()
        not_found: list[Callable[[], Awaitable[Any]]] = [
            lambda: client.beta.assistants.create(model="simulated"),
            lambda: client.beta.assistants.list(),
            lambda: client.beta.threads.runs.steps.list("run_x", thread_id=thread.id),
            lambda: client.beta.threads.runs.submit_tool_outputs(
                "run_x", thread_id=thread.id, tool_outputs=[]
            ),
            lambda: client.models.retrieve("simulated"),
        ]
        for call in not_found:
            with pytest.raises(openai.NotFoundError):
                await call()
        not_allowed: list[Callable[[], Awaitable[Any]]] = [
            lambda: client.beta.threads.update(thread.id, metadata={"a": "b"}),
            lambda: client.beta.threads.messages.update("msg_x", thread_id=thread.id, metadata={}),
            lambda: client.beta.threads.messages.delete("msg_x", thread_id=thread.id),
            lambda: client.beta.threads.runs.update("run_x", thread_id=thread.id, metadata={}),
        ]
        for call in not_allowed:
            with pytest.raises(openai.APIStatusError) as info:
                await call()
            assert info.value.status_code == 405
            assert server_message(info.value) == "Method Not Allowed"
        assert len(requests.seen) == len(not_found) + len(not_allowed)


async def test_api_keys_through_the_sdk(start_hub: StartHub) -> None:
    """With keys configured the SDK's ``api_key`` is the hub's key (``client.get`` sends it
    too, so joining a stream needs nothing more): a wrong one is the SDK's
    ``AuthenticationError``; another key's thread is a ``NotFoundError``."""
    hub = await start_hub(api_keys=("key-one", "key-two"))
    async with (
        async_sdk(hub, api_key="key-one") as (one, _one),
        async_sdk(hub, api_key="key-two") as (two, _two),
        async_sdk(hub, api_key="wrong") as (wrong, _wrong),
        within(5),
    ):
        with pytest.raises(openai.AuthenticationError) as denied:
            await wrong.beta.threads.create()
        assert server_message(denied.value) == "Incorrect API key provided."
        assert denied.value.code == "invalid_api_key"

        thread = await one.beta.threads.create(messages=[USER])
        handler = AsyncRecorder()
        async with one.beta.threads.runs.stream(
            thread_id=thread.id, assistant_id="streaming-example", event_handler=handler
        ) as stream:
            final = await stream.get_final_messages()
            run = await stream.get_final_run()
        check_recording(handler.seen, final)
        async with async_join(one, thread.id, run.id, AsyncRecorder()) as joined:
            assert texts_of(await joined.get_final_messages()) == texts_of(final)

        with pytest.raises(openai.NotFoundError):
            await two.beta.threads.retrieve(thread.id)
        with pytest.raises(openai.NotFoundError):
            async with async_join(two, thread.id, run.id, AsyncRecorder()):
                pass
        completion = await one.chat.completions.create(model="simulated", messages=[USER])
        assert completion.choices[0].message.content
