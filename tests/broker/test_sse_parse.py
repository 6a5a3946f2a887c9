"""The suite's SSE parser is itself tested: every other check relies on it."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from .sse_parse import SSEParser, parse_frames


def test_basic_frame() -> None:
    (f,) = parse_frames(b"id: 3\nevent: x\ndata: {}\n\n")
    assert (f.id, f.event, f.data, f.comments) == ("3", "x", "{}", [])
    assert f.fields == [("id", "3"), ("event", "x"), ("data", "{}")]


def test_multiple_data_lines_are_joined_with_newlines() -> None:
    (f,) = parse_frames(b"data: a\ndata:b\ndata\ndata:  c\n\n")
    assert f.data == "a\nb\n\n c"


def test_comments_and_keepalives() -> None:
    frames = parse_frames(b": ping\n\n:no space\ndata: x\n\n")
    assert frames[0].is_comment and frames[0].comments == ["ping"]
    assert not frames[1].is_comment
    assert frames[1].comments == ["no space"] and frames[1].data == "x"


@pytest.mark.parametrize("sep", [b"\n", b"\r\n", b"\r"])
def test_every_line_ending(sep: bytes) -> None:
    body = sep.join([b"id: 1", b"data: a", b"", b": ping", b"", b"data: b", b"", b""])
    frames = parse_frames(body)
    assert [(f.id, f.data, f.is_comment) for f in frames] == [
        ("1", "a", False),
        (None, None, True),
        (None, "b", False),
    ]


def test_mixed_line_endings_in_one_stream() -> None:
    frames = parse_frames(b"data: a\n\n: ping\r\n\r\ndata: b\r\rdata: c\n\n")
    assert [f.data for f in frames] == ["a", None, "b", "c"]


def test_blank_lines_between_frames_are_ignored() -> None:
    frames = parse_frames(b"\n\n\ndata: a\n\n\n\ndata: b\n\n")
    assert [f.data for f in frames] == ["a", "b"]


def test_bom_is_stripped_once() -> None:
    (f,) = parse_frames("\ufeffdata: a\n\n".encode())
    assert f.fields == [("data", "a")]


def test_unterminated_frame() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\n\ndata: b\n") != []
    assert not parser.at_boundary()
    with pytest.raises(AssertionError):
        parse_frames(b"data: a\n\ndata: b\n")
    assert [f.data for f in parse_frames(b"data: a\n\ndata: b", complete=False)] == ["a"]


def test_value_colons_and_id_with_nul() -> None:
    (f,) = parse_frames(b"event: a:b: c\nid: 1\x002\ndata: x\n\n")
    assert f.event == "a:b: c"
    assert f.id is None  # an id containing NUL is ignored


@given(
    st.lists(
        st.tuples(
            st.none() | st.integers(0, 10**6).map(str),
            st.none() | st.from_regex(r"[a-z.]{1,10}", fullmatch=True),
            st.lists(
                st.text(
                    alphabet=st.characters(
                        blacklist_characters="\r\n", blacklist_categories=("Cs",)
                    ),
                    max_size=8,
                ),
                min_size=1,
                max_size=3,
            ),
        ),
        max_size=6,
    ),
    st.sampled_from(["\n", "\r\n", "\r"]),
    st.lists(st.integers(0, 200), max_size=8),
)
def test_any_split_of_the_input_gives_the_same_frames(
    frames: list[tuple[str | None, str | None, list[str]]], sep: str, cuts: list[int]
) -> None:
    text = ""
    for fid, event, data in frames:
        if fid is not None:
            text += f"id: {fid}{sep}"
        if event is not None:
            text += f"event: {event}{sep}"
        for line in data:
            text += f"data: {line}{sep}"
        text += sep
    body = text.encode()
    parser = SSEParser()
    got = []
    last = 0
    for cut in sorted({min(c, len(body)) for c in cuts}):
        got += parser.feed(body[last:cut])
        last = cut
    got += parser.feed(body[last:])
    assert parser.at_boundary()
    assert [(f.id, f.event, f.data) for f in got] == [
        (fid, event, "\n".join(data)) for fid, event, data in frames
    ]
