"""StreamHandler: one streamed completion as the agent sees it. Chunks pushed on the loop
are read once each, from a worker thread (``for``) or on the loop (``async for``), however
the loops are nested; ``wait``/``await_text`` give the whole text; failures and
cancellation reach the reader."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest
from openai.types.chat import ChatCompletionChunk
from openai.types.chat.chat_completion_chunk import Choice, ChoiceDelta

from agent_runtime.errors import AgentRuntimeError, ProviderError, RunCancelled
from agent_runtime.objects import Message
from agent_runtime.stream_handler import StreamHandler

from ..conftest import eventually, within

WORDS = ["Ah", ",", " my", " friend", "."]


def chunk(
    content: str | None = None, *, role: str | None = None, finish: str | None = None
) -> ChatCompletionChunk:
    delta = ChoiceDelta(content=content, role=role)  # type: ignore[arg-type,unused-ignore]
    choice = Choice(index=0, delta=delta, finish_reason=finish, logprobs=None)  # type: ignore[arg-type,unused-ignore]
    return ChatCompletionChunk(
        id="chatcmpl-1", choices=[choice], created=0, model="m", object="chat.completion.chunk"
    )


def provider_chunks() -> list[ChatCompletionChunk]:
    return [chunk("", role="assistant"), *(chunk(w) for w in WORDS), chunk(finish="stop")]


def handler() -> StreamHandler:
    message = Message(id="msg_1", thread_id="thread_1", role="assistant", content="", created_at=0)
    return StreamHandler(message, asyncio.get_running_loop(), threading.get_ident())


async def feed(
    h: StreamHandler, chunks: list[ChatCompletionChunk], error: Exception | None = None
) -> None:
    """Push ``chunks`` one loop step apart, as the run's pump does, then end."""
    for c in chunks:
        h.push(c)
        await asyncio.sleep(0)
    h.end(error)


async def test_push_reports_the_text_of_each_chunk() -> None:
    h = handler()
    texts = [h.push(c) for c in provider_chunks()]
    assert texts == ["", *WORDS, ""]
    assert h.text == "Ah, my friend."
    assert not h.done
    assert h.finish_reason == "stop"
    assert len(h.chunks) == len(WORDS) + 2
    assert h.id == "msg_1"
    h.end()
    h.end()  # idempotent
    assert h.done and h.error is None


async def test_worker_thread_reads_every_chunk_once_while_they_arrive() -> None:
    h = handler()
    chunks = provider_chunks()

    def consume() -> list[ChatCompletionChunk]:
        return list(h)

    async with within(2):
        reader = asyncio.create_task(asyncio.to_thread(consume))
        await feed(h, chunks)
        seen = await reader
    assert seen == chunks
    assert await asyncio.to_thread(consume) == []  # one shared position: read once


async def test_description_nested_loop_yields_each_chunk_exactly_once() -> None:
    h = handler()
    chunks = provider_chunks()

    def agent_usage() -> tuple[int, list[ChatCompletionChunk], list[str]]:
        outer, seen, dumped = 0, [], []
        for event in h:
            outer += 1
            seen.append(event)
            for _idx, c in enumerate(h):
                dumped.append(json.dumps(c.model_dump()))
                seen.append(c)
        return outer, seen, dumped

    async with within(2):
        reader = asyncio.create_task(asyncio.to_thread(agent_usage))
        await feed(h, chunks)
        outer, seen, dumped = await reader
    assert outer == 1
    assert seen == chunks and len({id(c) for c in seen}) == len(chunks)
    assert len(dumped) == len(chunks) - 1
    assert json.loads(dumped[0])["choices"][0]["delta"]["content"] == "Ah"


async def test_async_iteration_on_the_loop() -> None:
    h = handler()
    chunks = provider_chunks()
    async with within(2):
        feeder = asyncio.create_task(feed(h, chunks))
        seen = [c async for c in h]
        await feeder
    assert seen == chunks
    assert await h.await_text() == "Ah, my friend."


async def test_for_on_the_loop_thread_is_refused() -> None:
    h = handler()
    h.push(chunk("x"))
    with pytest.raises(AgentRuntimeError, match="async for"):
        next(iter(h))
    with pytest.raises(AgentRuntimeError, match="async for"):
        h.wait()


async def test_wait_blocks_until_the_end_and_returns_the_text() -> None:
    h = handler()
    async with within(2):
        waiter = asyncio.create_task(asyncio.to_thread(h.wait))
        text_on_loop = asyncio.create_task(h.await_text())
        await feed(h, provider_chunks())
        assert await waiter == "Ah, my friend."
        assert await text_on_loop == "Ah, my friend."


async def test_a_failed_stream_raises_after_its_chunks() -> None:
    h = handler()
    chunks = provider_chunks()[:3]
    await feed(h, chunks, ProviderError("upstream said 503"))
    assert h.error is not None

    def consume() -> list[ChatCompletionChunk]:
        out = []
        with pytest.raises(ProviderError, match="upstream said 503"):
            for c in h:
                out.append(c)
        return out

    assert await asyncio.to_thread(consume) == chunks
    with pytest.raises(ProviderError):
        await asyncio.to_thread(h.wait)
    with pytest.raises(ProviderError):
        await h.await_text()


async def test_a_foreign_error_is_wrapped() -> None:
    h = handler()
    h.end(ValueError("socket closed"))
    with pytest.raises(AgentRuntimeError, match="socket closed"):
        await h.await_text()


async def test_interrupt_wakes_every_reader_with_run_cancelled() -> None:
    h = handler()
    h.push(chunk("partial"))

    def blocked_iteration() -> None:
        for _ in h:
            pass

    async def blocked_async() -> None:
        async for _ in h:
            pass

    async with within(2):
        readers = [
            asyncio.create_task(asyncio.to_thread(blocked_iteration)),
            asyncio.create_task(asyncio.to_thread(h.wait)),
            asyncio.create_task(blocked_async()),
            asyncio.create_task(h.await_text()),
        ]
        await asyncio.sleep(0)
        h.interrupt()
        results = await asyncio.gather(*readers, return_exceptions=True)
    assert all(isinstance(r, RunCancelled) for r in results), results
    assert h.text == "partial"


class CountingCondition(threading.Condition):
    """A condition that counts the wake-ups it sends while a thread waits on it."""

    def __init__(self) -> None:
        super().__init__()
        self.wakeups = 0

    def notify(self, n: int = 1) -> None:
        if self._waiters:  # type: ignore[attr-defined]
            self.wakeups += 1
        super().notify(n)


async def test_a_thread_waiting_for_the_end_is_not_woken_by_each_chunk() -> None:
    """``add_reply`` waits in the agent's thread for the completion's end: the chunks
    must not wake it (a thread switch and two GIL hand-overs each, taken from the loop);
    the end does, once."""
    h = handler()
    cond = CountingCondition()
    h._cond = cond
    result: list[str] = []
    waiter = threading.Thread(target=lambda: result.append(h.wait()), daemon=True)
    waiter.start()
    try:
        await eventually(lambda: bool(cond._waiters), what="the thread waits")  # type: ignore[attr-defined]
        for c in provider_chunks():
            h.push(c)
        assert cond.wakeups == 0
    finally:
        h.end()
    assert cond.wakeups == 1
    async with within():
        await asyncio.to_thread(waiter.join)
    assert result == ["Ah, my friend."]


async def test_a_thread_reading_chunks_is_woken_for_each() -> None:
    h = handler()
    got: list[str] = []

    def read() -> None:
        got.extend(c.choices[0].delta.content or "" for c in h if c.choices)

    reader = threading.Thread(target=read)
    reader.start()
    await feed(h, provider_chunks())
    await asyncio.to_thread(reader.join)
    assert "".join(got) == "Ah, my friend."
