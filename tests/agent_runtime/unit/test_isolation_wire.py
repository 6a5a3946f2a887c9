"""The hub ↔ worker wire format (pure): framing, partial frames, refusals."""

from __future__ import annotations

import pytest

from agent_runtime.isolation.wire import MAX_FRAME, Decoder, WireError, encode, encode_many


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
