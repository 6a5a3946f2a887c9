"""The suite's own SSE parser (``sse.py``), checked against the WHATWG rules it relies on,
so that what the end-to-end tests conclude from the wire is trustworthy."""

from __future__ import annotations

import pytest

from ..sse import DONE, SSEParser, decode, parse_events, parse_frames

BODY = (
    b": ping\n\n"
    b'id: 1\ndata: {"event":"thread.run.created","data":{"id":"run_1"}}\n\n'
    b"id:2\r\nevent: custom\r\ndata: line one\r\ndata:line two\r\ndata\r\n\r\n"
    b"retry: 1500\rdata: cr only\r\r"
)


def test_frames_fields_comments_and_multiline_data() -> None:
    frames = parse_frames(BODY)
    assert len(frames) == 4
    ping, first, second, third = frames
    assert ping.is_comment and ping.comments == ["ping"]
    assert first.id == "1" and first.event is None
    assert first.data == '{"event":"thread.run.created","data":{"id":"run_1"}}'
    assert second.id == "2" and second.event == "custom"
    assert second.data == "line one\nline two\n"  # a bare "data" line adds an empty line
    assert third.retry == 1500 and third.data == "cr only"


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64])
def test_any_split_of_the_bytes_gives_the_same_frames(size: int) -> None:
    parser = SSEParser()
    frames = []
    for start in range(0, len(BODY), size):
        frames.extend(parser.feed(BODY[start : start + size]))
    assert parser.at_boundary()
    assert frames == parse_frames(BODY)


def test_utf8_split_inside_a_character_and_bom() -> None:
    body = "\ufeffdata: Ἀρετή\n\n".encode()
    parser = SSEParser()
    frames = [f for i in range(len(body)) for f in parser.feed(body[i : i + 1])]
    assert [f.data for f in frames] == ["Ἀρετή"]


def test_unterminated_body_is_detected() -> None:
    with pytest.raises(AssertionError, match="inside a frame"):
        parse_frames(b"id: 1\ndata: {}\n")
    assert parse_frames(b"id: 1\ndata: {}\n", complete=False) == []


def test_decode_default_and_openai_framings() -> None:
    (event,) = parse_events(b'id: 3\ndata: {"event":"thread.message.delta","data":{"id":"m"}}\n\n')
    assert (event.id, event.name, event.data) == (3, "thread.message.delta", {"id": "m"})

    body = (
        b'id: 4\nevent: thread.run.completed\ndata: {"id":"run_1"}\n\nevent: done\ndata: [DONE]\n\n'
    )
    completed, done = parse_events(body, "openai")
    assert (completed.id, completed.name, completed.data) == (
        4,
        "thread.run.completed",
        {"id": "run_1"},
    )
    assert (done.id, done.name, done.data) == (None, DONE, "[DONE]")

    with pytest.raises(AssertionError):  # an event: line is not the default framing
        decode(parse_frames(body))
    with pytest.raises(AssertionError):  # the OpenAI framing names every event
        parse_events(b'data: {"event":"x","data":{}}\n\n', "openai")
