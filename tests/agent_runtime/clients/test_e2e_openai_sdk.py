"""The hub through the official ``openai`` SDK's Assistants streaming client, the client
the wire contract is written for: ``runs.create(stream=True)`` (event names from the
``event:`` line), ``runs.stream`` with its event handler (which refuses a delta of a
message it has not seen created), and no automatic retry of a refused run."""

from __future__ import annotations

from collections.abc import AsyncIterator

import openai
import pytest
from openai import AsyncAssistantEventHandler, AsyncOpenAI
from openai.types.beta.threads import Message, MessageDeltaEvent

try:  # the HTTP library the installed SDK is built on
    import httpx2 as httpx  # type: ignore[import-not-found,unused-ignore]
except ImportError:  # pragma: no cover
    import httpx  # type: ignore[no-redef,unused-ignore]

from ..conftest import QUESTION, SLOW_MODEL, UNIT, HubClient, StartHub, check_run, within

pytestmark = pytest.mark.filterwarnings(
    "ignore:The Assistants API is deprecated:DeprecationWarning"
)


class Counter:
    def __init__(self) -> None:
        self.posts: list[str] = []

    async def __call__(self, request: httpx.Request) -> None:
        if request.method == "POST":
            self.posts.append(request.url.path)


@pytest.fixture
async def sdk() -> AsyncIterator[tuple[Counter, list[AsyncOpenAI]]]:
    counter = Counter()
    clients: list[AsyncOpenAI] = []
    yield counter, clients
    for client in clients:
        await client.close()


def client_for(hub: HubClient, sdk: tuple[Counter, list[AsyncOpenAI]]) -> AsyncOpenAI:
    counter, clients = sdk
    http = httpx.AsyncClient(event_hooks={"request": [counter]}, timeout=10 * UNIT)
    client = AsyncOpenAI(base_url=hub.url + "/v1", api_key="unused", http_client=http)
    clients.append(client)
    return client


async def test_runs_create_stream_true(
    start_hub: StartHub, sdk: tuple[Counter, list[AsyncOpenAI]]
) -> None:
    hub = await start_hub()
    client = client_for(hub, sdk)
    thread = await client.beta.threads.create(messages=[{"role": "user", "content": QUESTION}])

    names: list[str] = []
    texts: dict[str, str] = {}
    async with within(5):
        stream = await client.beta.threads.runs.create(
            thread_id=thread.id, assistant_id="streaming-example", stream=True
        )
        async for event in stream:
            names.append(event.event)
            if isinstance(event.data, MessageDeltaEvent):
                for part in event.data.delta.content or []:
                    value = part.text.value if part.type == "text" and part.text else None
                    texts[event.data.id] = texts.get(event.data.id, "") + (value or "")
            elif isinstance(event.data, Message) and event.event == "thread.message.completed":
                assert texts[event.data.id] == event.data.content[0].text.value  # type: ignore[union-attr]
    (run_id,) = [r.id async for r in client.beta.threads.runs.list(thread_id=thread.id)]
    trace = check_run(await hub.events(thread.id, run_id))
    assert names == [e.name for e in trace.events]
    assert list(texts.values()) == trace.texts == await hub.assistant_texts(thread.id)


class Collector(AsyncAssistantEventHandler):
    def __init__(self) -> None:
        super().__init__()
        self.texts: dict[str, str] = {}

    async def on_text_delta(self, delta, snapshot) -> None:  # type: ignore[no-untyped-def]
        message = self.current_message_snapshot
        assert message is not None
        self.texts[message.id] = self.texts.get(message.id, "") + (delta.value or "")


async def test_runs_stream_with_an_event_handler(
    start_hub: StartHub, sdk: tuple[Counter, list[AsyncOpenAI]]
) -> None:
    hub = await start_hub()
    client = client_for(hub, sdk)
    thread = await client.beta.threads.create(messages=[{"role": "user", "content": QUESTION}])

    handler = Collector()
    async with within(5):
        async with client.beta.threads.runs.stream(
            thread_id=thread.id, assistant_id="streaming-example", event_handler=handler
        ) as stream:
            await stream.until_done()
            final = await stream.get_final_messages()
            run = await stream.get_final_run()

    assert run.status == "completed"
    assert [m.content[0].text.value for m in final] == list(handler.texts.values())  # type: ignore[union-attr]
    assert list(handler.texts.values()) == await hub.assistant_texts(thread.id)
    assert len(final) == 2


async def test_create_and_run_stream(
    start_hub: StartHub, sdk: tuple[Counter, list[AsyncOpenAI]]
) -> None:
    hub = await start_hub()
    client = client_for(hub, sdk)
    async with within(5):
        stream = await client.beta.threads.create_and_run(
            assistant_id="async-example",
            thread={"messages": [{"role": "user", "content": QUESTION}]},
            stream=True,
        )
        events = [event async for event in stream]
    assert events[0].event == "thread.run.created"
    assert events[-1].event == "thread.run.completed"
    thread_id = events[0].data.thread_id  # type: ignore[union-attr,unused-ignore]
    assert len(await hub.assistant_texts(thread_id)) == 1


async def test_a_refused_run_is_not_retried(
    start_hub: StartHub, sdk: tuple[Counter, list[AsyncOpenAI]]
) -> None:
    hub = await start_hub(model=SLOW_MODEL)
    client = client_for(hub, sdk)
    counter = sdk[0]
    thread = await client.beta.threads.create(messages=[{"role": "user", "content": QUESTION}])
    run = await client.beta.threads.runs.create(thread_id=thread.id, assistant_id="async-example")
    counter.posts.clear()

    with pytest.raises(openai.ConflictError):
        await client.beta.threads.runs.create(thread_id=thread.id, assistant_id="async-example")
    with pytest.raises(openai.NotFoundError):
        await client.beta.threads.runs.create(thread_id=thread.id, assistant_id="nobody")

    assert len(counter.posts) == 2  # one request each: the SDK did not retry
    runs = [r async for r in client.beta.threads.runs.list(thread_id=thread.id)]
    assert [r.id for r in runs] == [run.id]
    cancelled = await client.beta.threads.runs.cancel(run_id=run.id, thread_id=thread.id)
    assert cancelled.status == "cancelling"
    check_run(await hub.events(thread.id, run.id, units=1), "thread.run.cancelled")
