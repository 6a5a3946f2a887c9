"""Cursor parsing: ``Last-Event-ID`` header and ``last_event_id`` query parameter."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from broker.cursor import MAX_CURSOR_DIGITS, parse_cursor
from broker.errors import BrokerError, InvalidCursor

HEADER = "Last-Event-ID"
QUERY = "last_event_id"


@pytest.mark.parametrize(
    ("header", "query"),
    [(None, None), ("", None), (None, ""), ("", ""), ("  ", None), (None, " \t")],
)
def test_absent_or_empty_means_from_the_start(header: str | None, query: str | None) -> None:
    assert parse_cursor(header, query) is None


@pytest.mark.parametrize(
    ("header", "query", "expected"),
    [
        ("5", None, 5),
        (None, "5", 5),
        ("0", None, 0),
        (None, "0", 0),
        ("007", None, 7),
        (" 12 ", None, 12),
        ("9" * MAX_CURSOR_DIGITS, None, int("9" * MAX_CURSOR_DIGITS)),
    ],
)
def test_valid_cursors(header: str | None, query: str | None, expected: int) -> None:
    assert parse_cursor(header, query) == expected


def test_header_wins_over_query() -> None:
    assert parse_cursor("5", "3") == 5
    assert parse_cursor("3", "5") == 3
    # The header wins even when the query would be invalid: it is not looked at.
    assert parse_cursor("4", "abc") == 4


def test_empty_header_is_absent_so_the_query_counts() -> None:
    assert parse_cursor("", "3") == 3
    assert parse_cursor("  ", "3") == 3


BAD = [
    "abc",
    "-1",
    "+1",
    "1.5",
    "1e3",
    "0x10",
    "12 34",
    "1_000",
    "\uff11\uff12",  # fullwidth digits
    "\u0663",  # arabic-indic three
    "²",
    "9" * (MAX_CURSOR_DIGITS + 1),
    "1" * 400,
]


@pytest.mark.parametrize("value", BAD)
def test_bad_header_names_the_header(value: str) -> None:
    with pytest.raises(InvalidCursor) as info:
        parse_cursor(value, None)
    assert info.value.param == HEADER
    assert HEADER in str(info.value)
    assert len(str(info.value)) < 200  # a huge value is not echoed back whole


@pytest.mark.parametrize("value", BAD)
def test_bad_query_names_the_query_parameter(value: str) -> None:
    with pytest.raises(InvalidCursor) as info:
        parse_cursor(None, value)
    assert info.value.param == QUERY


def test_bad_header_is_an_error_even_with_a_good_query() -> None:
    with pytest.raises(InvalidCursor) as info:
        parse_cursor("abc", "3")
    assert info.value.param == HEADER


def test_bad_query_behind_an_empty_header() -> None:
    with pytest.raises(InvalidCursor) as info:
        parse_cursor("", "-1")
    assert info.value.param == QUERY


def test_invalid_cursor_is_a_broker_error_with_a_default_param() -> None:
    assert issubclass(InvalidCursor, BrokerError)
    assert InvalidCursor("x").param == QUERY


@given(st.integers(0, 10**MAX_CURSOR_DIGITS - 1), st.booleans())
def test_every_non_negative_integer_round_trips(n: int, as_header: bool) -> None:
    text = str(n)
    assert parse_cursor(text if as_header else None, None if as_header else text) == n


@given(st.text(min_size=1, max_size=30))
def test_anything_else_is_rejected(value: str) -> None:
    stripped = value.strip()
    if stripped == "" or (stripped.isascii() and stripped.isdigit()):
        return
    with pytest.raises(InvalidCursor):
        parse_cursor(value, None)
    with pytest.raises(InvalidCursor):
        parse_cursor(None, value)
