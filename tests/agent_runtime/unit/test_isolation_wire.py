"""The hub ↔ worker wire format (pure): framing, partial frames, refusals."""

from __future__ import annotations

import asyncio
from dataclasses import asdict
from typing import Any, cast

import pytest

from agent_runtime.isolation.wire import MAX_FRAME, Decoder, WireError, encode, encode_many
from agent_runtime.isolation.worker import RemotePort
from agent_runtime.objects import Message


def test_messages_survive_any_split_of_their_bytes() -> None:
    messages = [{"op": "call", "id": i, "args": {"text": "é" * i}} for i in range(20)]
    data = encode_many(messages)
    for step in (1, 3, 7, len(data)):
        decoder = Decoder()
        out = []
        for start in range(0, len(data), step):
            out.extend(decoder.feed(data[start : start + step]))
        assert out == messages and decoder.pending == 0


def test_a_partial_frame_waits_for_the_rest() -> None:
    frame = encode({"op": "ready"})
    decoder = Decoder()
    assert decoder.feed(frame[:-1]) == [] and decoder.pending == len(frame) - 1
    assert decoder.feed(frame[-1:]) == [{"op": "ready"}]


@pytest.mark.parametrize(
    "data",
    [
        (MAX_FRAME + 1).to_bytes(4, "big"),
        (3).to_bytes(4, "big") + b"{x}",
        (2).to_bytes(4, "big") + b"[]",
    ],
    ids=["too-large", "not-json", "not-an-object"],
)
def test_a_broken_peer_is_refused(data: bytes) -> None:
    with pytest.raises(WireError):
        Decoder().feed(data)


# -- a worker's streams ---------------------------------------------------------------------


class _Sent:
    """A channel that keeps what the worker sends."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.sent = asyncio.Event()

    def send(self, message: dict[str, Any]) -> None:
        self.messages.append(message)
        self.sent.set()


async def test_a_stream_that_ends_before_its_call_resumes_is_not_lost() -> None:
    """The hub sends a stream's chunks and end right after its reply to ``start_stream``:
    a worker may read all three before the awaiting call resumes and registers the stream.
    Its handler still gets them (it used to drop them, and the agent waited for ever)."""
    channel = _Sent()
    port = RemotePort(channel, cast(Any, None), "agent")  # type: ignore[arg-type]
    started = asyncio.create_task(port.start_stream("go", None, {}))
    async with asyncio.timeout(5):
        await channel.sent.wait()
    [call] = channel.messages
    message = Message(id="msg_1", thread_id="thread_1", role="assistant", content="", created_at=0)
    chunk = {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "m",
        "choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": "stop"}],
    }
    # All three in one read: nothing runs in between.
    port.answer(
        {"op": "reply", "id": call["id"], "result": {"stream": "s1", "message": asdict(message)}}
    )
    port.chunks({"op": "chunks", "stream": "s1", "chunks": [chunk]})
    port.stream_end({"op": "stream_end", "stream": "s1", "error": None})
    handler = await started
    async with asyncio.timeout(5):
        assert await handler.await_text() == "hi"
