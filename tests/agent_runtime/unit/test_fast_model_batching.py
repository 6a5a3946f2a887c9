"""A fast model's ready chunks reach each subscriber together: the simulated model at
``rate=0`` streams bursts of chunks per loop turn, the pump publishes a burst in one turn,
and the broker writes it to each subscriber in one write, every delta exactly once."""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import AsyncIterator
from typing import Any

import pytest
from openai.types.chat import ChatCompletionChunk
from openai.types.chat.chat_completion_chunk import Choice, ChoiceDelta

from agent_runtime import protocol
from agent_runtime.models.base import CompletionRequest
from agent_runtime.models.simulated import RATE0_BURST, SimulatedModel
from agent_runtime.runs import RunManager
from agent_runtime.runs.pump import start_stream

from ..conftest import within
from .managers import a_thread, run_manager

TOKENS = 300


class Sink:
    """A broker sink that keeps every write."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def wire(self, data: bytes) -> bytes:
        return data

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def writable(self) -> bool:
        return True

    def is_closing(self) -> bool:
        return False


_FRAME = re.compile(rb'id: (\d+)\ndata: \{"event":"([^"]+)"')


def frames(data: bytes) -> list[tuple[int, str]]:
    return [(int(i), name.decode()) for i, name in _FRAME.findall(data)]


def delta_writes(sink: Sink) -> list[bytes]:
    return [w for w in sink.writes if protocol.MESSAGE_DELTA.encode() in w]


async def turns_between_chunks(model: SimulatedModel, request: CompletionRequest) -> list[int]:
    """For each text chunk, the loop turns that passed since the previous one."""
    turns = 0
    running = True

    def tick() -> None:
        nonlocal turns
        turns += 1
        if running:
            asyncio.get_running_loop().call_soon(tick)

    asyncio.get_running_loop().call_soon(tick)
    seen: list[int] = []
    last = 0
    async for chunk in model.stream(request):
        if chunk.choices and chunk.choices[0].delta.content:
            seen.append(turns - last)
            last = turns
    running = False
    return seen


async def test_the_simulated_model_at_rate_0_streams_bursts_per_loop_turn() -> None:
    request = CompletionRequest(model="", messages=[{"role": "user", "content": "rivers"}])
    gaps = await turns_between_chunks(SimulatedModel(f"simulated:tokens={TOKENS},rate=0"), request)
    assert len(gaps) == TOKENS
    yielded = [i for i, gap in enumerate(gaps) if gap > 0]
    # It yields to the loop before each burst of RATE0_BURST tokens, and only then.
    assert yielded == list(range(0, TOKENS, RATE0_BURST))


async def test_a_paced_model_still_yields_before_every_token() -> None:
    request = CompletionRequest(model="", messages=[{"role": "user", "content": "rivers"}])
    gaps = await turns_between_chunks(SimulatedModel("simulated:tokens=20,rate=100000"), request)
    assert len(gaps) == 20 and all(gap > 0 for gap in gaps)


@pytest.fixture
async def manager() -> AsyncIterator[RunManager]:
    async with run_manager(f"simulated:tokens={TOKENS},rate=0") as runs:
        yield runs


async def test_a_fast_models_deltas_reach_a_subscriber_in_few_writes_exactly_once(
    manager: RunManager,
) -> None:
    ctx = await manager.create(await a_thread(manager), "async-example")
    sinks = [Sink() for _ in range(20)]
    for sink in sinks:
        ctx.stream.subscribe(sink)
    assert ctx.task is not None
    async with within(10):
        await ctx.task
        await ctx.done.wait()
    for sink in sinks:
        got = frames(b"".join(sink.writes))
        assert [i for i, _ in got] == list(range(1, ctx.stream.head + 1))  # once, in order
        assert sum(1 for _, name in got if name == protocol.MESSAGE_DELTA) == TOKENS
        # One write per burst (a burst may straddle two turns of the agent's iteration),
        # not one per delta.
        assert len(delta_writes(sink)) <= 2 * math.ceil(TOKENS / RATE0_BURST) + 2
    assert ctx.run.status == "completed"


class ReadyProvider:
    """A provider whose chunks are all ready at once (say, one network read)."""

    name = "ready"

    def __init__(self, texts: list[str]) -> None:
        self.texts = texts

    async def stream(self, request: CompletionRequest) -> AsyncIterator[ChatCompletionChunk]:
        for text in self.texts:
            choice = Choice(index=0, delta=ChoiceDelta(content=text), finish_reason=None)
            yield ChatCompletionChunk(
                id="c", choices=[choice], created=0, model="m", object="chat.completion.chunk"
            )

    async def complete(self, request: CompletionRequest) -> Any:
        raise NotImplementedError


async def test_the_pump_publishes_ready_chunks_in_one_turn_one_write(
    manager: RunManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow = "simulated:tokens=5000,rate=10"  # the agent's own completion: it is not watched
    ctx = await manager.create(await a_thread(manager), "async-example", model=slow)
    texts = [f" w{i}" for i in range(50)]
    provider = ReadyProvider(texts)
    monkeypatch.setattr(
        manager.models, "resolve", lambda model, name=None: (provider, "m"), raising=True
    )
    sink = Sink()
    handler = await start_stream(ctx, "hi", None, {})
    ctx.stream.subscribe(sink, cursor=ctx.stream.head)
    async with within(5):
        await handler.await_text()
    await asyncio.sleep(0)  # the flush scheduled by the last publish
    mine = handler.message.id.encode()
    # The run's own agent publishes too; the 50 deltas of this completion went out together.
    carrying = [w for w in sink.writes if mine in w]
    assert len(carrying) == 1
    assert carrying[0].count(b'"event":"thread.message.delta","data":{"id":"' + mine) == 50
    assert handler.text == "".join(texts)
    ctx.end("cancelled")
    async with within(5):
        await ctx.done.wait()
