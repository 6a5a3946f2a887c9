"""The event record and its two SSE framings: exact bytes, validation, caching."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.errors import BrokerError, InvalidEvent
from broker.events import DONE_FRAME, PING_FRAME, Event, Framing, encode_frame

from .sse_parse import parse_frames

DEFAULT = Framing.DEFAULT
OPENAI = Framing.OPENAI

# -- exact bytes ------------------------------------------------------------------------------


def test_default_framing_exact_bytes() -> None:
    event = Event(7, "thread.message.delta", b'{"a":1}')
    assert event.frame(DEFAULT) == (
        b'id: 7\ndata: {"event":"thread.message.delta","data":{"a":1}}\n\n'
    )


def test_openai_framing_exact_bytes() -> None:
    event = Event(7, "thread.message.delta", b'{"a":1}')
    assert event.frame(OPENAI) == b'id: 7\nevent: thread.message.delta\ndata: {"a":1}\n\n'


def test_no_id_line_without_an_id() -> None:
    event = Event(None, "thread.stream.gap", b'{"from":0,"to":3}')
    assert (
        event.frame(DEFAULT) == b'data: {"event":"thread.stream.gap","data":{"from":0,"to":3}}\n\n'
    )
    assert event.frame(OPENAI) == b'event: thread.stream.gap\ndata: {"from":0,"to":3}\n\n'


def test_encode_frame_matches_event_frames() -> None:
    assert (
        encode_frame(DEFAULT, 12, "x", b"[1,2]") == b'id: 12\ndata: {"event":"x","data":[1,2]}\n\n'
    )
    assert encode_frame(OPENAI, 12, "x", b"[1,2]") == b"id: 12\nevent: x\ndata: [1,2]\n\n"
    assert encode_frame(DEFAULT, None, "x", b"null") == b'data: {"event":"x","data":null}\n\n'
    assert encode_frame(OPENAI, None, "x", b"null") == b"event: x\ndata: null\n\n"


def test_large_ids_are_plain_decimal() -> None:
    assert Event(10**15, "e", b"1").frame(OPENAI).startswith(b"id: 1000000000000000\n")


def test_ping_and_done_frames() -> None:
    # A keepalive is one comment line that joins the next frame's block: never a block of
    # its own, which parsers that keep the last event id (the openai SDK's) would
    # dispatch as an empty event.
    assert PING_FRAME == b": ping\n"
    assert DONE_FRAME == b"event: done\ndata: [DONE]\n\n"
    frame = Event(3, "e", b"1").frame(Framing.DEFAULT)
    (joined,) = parse_frames(PING_FRAME + PING_FRAME + frame)
    assert joined.comments == ["ping", "ping"] and joined.id == "3" and joined.data
    (done,) = parse_frames(DONE_FRAME)
    assert (done.event, done.data, done.id) == ("done", "[DONE]", None)


def test_frames_are_encoded_once_and_cached() -> None:
    event = Event.create(3, "e", {"k": "v"})
    first = event.frame(DEFAULT)
    assert event.frame(DEFAULT) is first
    other = event.frame(OPENAI)
    assert event.frame(OPENAI) is other
    assert first != other


def test_size_is_fixed_before_and_after_encoding() -> None:
    event = Event.create(1, "name", {"text": "hello"})
    size = event.size
    assert size == 2 * (len(event.data) + len("name")) + 120
    event.frame(DEFAULT)
    event.frame(OPENAI)
    assert event.size == size


# -- payloads ---------------------------------------------------------------------------------


def test_create_encodes_with_orjson() -> None:
    event = Event.create(1, "e", {"b": [1, 2.5, None, True], "a": "é"})
    assert event.data == orjson.dumps({"b": [1, 2.5, None, True], "a": "é"})
    assert event.payload() == {"b": [1, 2.5, None, True], "a": "é"}


def test_newlines_inside_json_strings_stay_on_one_line() -> None:
    payload = {"text": "line one\nline two\r\nthree\rfour\n\ndata: injected\n\n"}
    event = Event.create(5, "thread.message.delta", payload)
    assert b"\n" not in event.data and b"\r" not in event.data
    for framing in Framing:
        frame = event.frame(framing)
        assert frame.endswith(b"\n\n")
        assert b"\r" not in frame
        assert frame[:-2].count(b"\n") == (1 if framing is DEFAULT else 2)
        (parsed,) = parse_frames(frame)
        assert parsed.id == "5"
        assert parsed.data is not None
        data = orjson.loads(parsed.data)
        assert (data["data"] if framing is DEFAULT else data) == payload


def test_unicode_line_separators_are_not_sse_line_breaks() -> None:
    payload = {"text": "a\u2028b\u2029c\x85d\x0be"}
    event = Event.create(1, "e", payload)
    (parsed,) = parse_frames(event.frame(OPENAI))
    assert parsed.data is not None
    assert orjson.loads(parsed.data) == payload


@pytest.mark.parametrize(
    "data",
    [b'{"a":\n1}', b'"x"\r', b"\n", b'{"a":1}\n\ndata: {"evil":1}', b"\r\n"],
)
def test_raw_line_breaks_in_data_are_rejected(data: bytes) -> None:
    with pytest.raises(InvalidEvent):
        Event(1, "e", data)


@pytest.mark.parametrize("payload", [object(), {1, 2}, {"x": b"bytes"}, {"\ud800": 1}, 2**70])
def test_payload_not_json_serialisable_is_rejected(payload: object) -> None:
    with pytest.raises(InvalidEvent):
        Event.create(1, "e", payload)


# -- names and ids ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "",
        "a\nb",
        "a\rb",
        "a\r\nb",
        "done\n",
        "\nid: 99",
        "x\n\ndata: evil",
        "x\ndata: {}",
        "a b",
        "event: x",
        'a"b',
        "a\\b",
        "a}b",
        "é",
        "a\x00b",
        "a\tb",
        "x" * 201,
    ],
)
def test_unsafe_names_are_rejected(name: str) -> None:
    with pytest.raises(InvalidEvent):
        Event(1, name, b"{}")
    with pytest.raises(InvalidEvent):
        Event.create(None, name, {})


@pytest.mark.parametrize(
    "name", ["e", "thread.run.created", "a:b", "x-y_z.1", "A:B:C", "thread.stream.gap", "x" * 200]
)
def test_safe_names_are_accepted(name: str) -> None:
    event = Event(1, name, b"{}")
    (parsed,) = parse_frames(event.frame(OPENAI))
    assert parsed.event == name
    (parsed,) = parse_frames(event.frame(DEFAULT))
    assert parsed.data is not None and orjson.loads(parsed.data)["event"] == name


@pytest.mark.parametrize("event_id", [0, -1, -(10**9)])
def test_ids_start_at_one(event_id: int) -> None:
    with pytest.raises(InvalidEvent):
        Event(event_id, "e", b"{}")


def test_invalid_event_is_a_broker_error() -> None:
    assert issubclass(InvalidEvent, BrokerError)


def test_with_id_copies_and_leaves_the_original() -> None:
    event = Event.create(None, "snap", {"k": 1})
    stamped = event.with_id(9)
    assert (stamped.id, stamped.name, stamped.data) == (9, "snap", event.data)
    assert event.id is None
    assert stamped.frame(OPENAI) == b'id: 9\nevent: snap\ndata: {"k":1}\n\n'
    assert event.frame(OPENAI) == b'event: snap\ndata: {"k":1}\n\n'


def test_equality_and_hash() -> None:
    a = Event.create(1, "e", {"x": 1})
    b = Event(1, "e", b'{"x":1}')
    assert a == b and hash(a) == hash(b)
    assert a != Event(2, "e", b'{"x":1}')
    assert a != Event(1, "f", b'{"x":1}')
    assert a != "not an event"


# -- framing parameter ------------------------------------------------------------------------


@pytest.mark.parametrize("value", [None, "", "default"])
def test_framing_parse_default(value: str | None) -> None:
    assert Framing.parse(value) is DEFAULT


def test_framing_parse_openai() -> None:
    assert Framing.parse("openai") is OPENAI


@pytest.mark.parametrize("value", ["OPENAI", "json", "openai ", "default\n"])
def test_framing_parse_unknown(value: str) -> None:
    with pytest.raises(InvalidEvent):
        Framing.parse(value)


# -- properties -------------------------------------------------------------------------------

NAMES = st.text(
    alphabet="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.:-",
    min_size=1,
    max_size=200,
)
TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30)
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | TEXT,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(TEXT, children, max_size=4),
    max_leaves=12,
)


@given(
    event_id=st.none() | st.integers(1, 2**62),
    name=NAMES,
    payload=JSON,
    framing=st.sampled_from(Framing),
)
def test_any_event_round_trips_through_an_sse_parser(
    event_id: int | None, name: str, payload: object, framing: Framing
) -> None:
    frame = Event.create(event_id, name, payload).frame(framing)
    (parsed,) = parse_frames(frame)
    assert parsed.id == (None if event_id is None else str(event_id))
    assert parsed.data is not None
    assert len([f for f, _ in parsed.fields if f == "data"]) == 1
    if framing is DEFAULT:
        assert parsed.event is None
        assert orjson.loads(parsed.data) == {
            "event": name,
            "data": orjson.loads(orjson.dumps(payload)),
        }
    else:
        assert parsed.event == name
        assert orjson.loads(parsed.data) == orjson.loads(orjson.dumps(payload))


@given(
    prefix=NAMES | st.just(""),
    bad=st.characters(
        blacklist_characters="abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.:-"
    ),
    suffix=NAMES | st.just(""),
)
def test_any_name_with_a_character_outside_the_alphabet_is_rejected(
    prefix: str, bad: str, suffix: str
) -> None:
    with pytest.raises(InvalidEvent):
        Event(1, prefix + bad + suffix, b"{}")


def test_an_events_data_is_an_exact_size_copy() -> None:
    # orjson's own result keeps its whole output buffer alive (4 KiB for a small payload);
    # a replay buffer of 10,000 deltas would hold 40 MiB instead of ~3.
    import tracemalloc

    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = [Event.create(i + 1, "e", {"text": "x" * 200}) for i in range(200)]
        held = (tracemalloc.get_traced_memory()[0] - before) / len(kept)
    finally:
        tracemalloc.stop()
    assert held < 1024, f"{held:.0f} bytes held per 200-byte event"
