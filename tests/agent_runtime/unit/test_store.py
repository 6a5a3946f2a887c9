"""The Store contract, checked on MemoryStore, SQLiteStore and RedisStore alike (the
``store`` fixture runs each test on each), run steps included, then SQLiteStore's own
guarantees: reopening keeps everything, interrupted runs (and their open steps), the
schema migrated from an older version, writes applied in call order, durability across
SIGKILL, an event loop never blocked by the database, and ``close``."""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
import sqlite3
import sys
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import MISSING, fields, replace
from pathlib import Path
from typing import Any

import pytest

from agent_runtime.api.errors import error_kind
from agent_runtime.errors import AgentRuntimeError, InvalidRequest, NotFound, StorageUnavailable
from agent_runtime.objects import Message, Run, RunStep, Thread, new_id, now
from agent_runtime.protocol import step_object
from agent_runtime.store import MemoryStore, RedisStore, SQLiteStore, Store
from agent_runtime.store.memory import paginate
from agent_runtime.store.sqlite import MIGRATIONS, SCHEMA_VERSION

from ..conftest import UNIT

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    made: Store
    if request.param == "memory":
        made = MemoryStore()
    elif request.param == "sqlite":
        made = await SQLiteStore.open(tmp_path / "data" / "store.db")
    else:
        made = await RedisStore.open(
            request.getfixturevalue("redis_url"), prefix=request.getfixturevalue("redis_prefix")
        )
    yield made
    await made.aclose()


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[SQLiteStore]:
    made = await SQLiteStore.open(tmp_path / "store.db")
    yield made
    await made.aclose()


def a_thread(**fields_: Any) -> Thread:
    return Thread(id=new_id("thread"), created_at=now(), **fields_)


def a_message(thread_id: str, content: str = "hello", **fields_: Any) -> Message:
    fields_.setdefault("created_at", now())
    return Message(id=new_id("msg"), thread_id=thread_id, role="user", content=content, **fields_)


def a_run(thread_id: str, **fields_: Any) -> Run:
    fields_.setdefault("created_at", now())
    return Run(
        id=new_id("run"),
        thread_id=thread_id,
        assistant_id="streaming-example",
        expires_at=now() + 600,
        model="simulated:tokens=3",
        **fields_,
    )


def full_message(thread_id: str) -> Message:
    """Every field set to something other than its default."""
    return Message(
        id=new_id("msg"),
        thread_id=thread_id,
        role="assistant",
        content='Virtue is knowledge — «ἀρετή» "quoted" \n\t 🦉',
        created_at=1_700_000_000,
        status="incomplete",
        run_id=new_id("run"),
        assistant_id="socrates",
        metadata={"k": "v", "ключ": "значение", "quote": '"', "empty": ""},
        completed_at=1_700_000_001,
        incomplete_at=1_700_000_002,
        incomplete_reason="run_cancelled",
    )


def full_run(thread_id: str) -> Run:
    return Run(
        id=new_id("run"),
        thread_id=thread_id,
        assistant_id="socrates",
        created_at=1_700_000_000,
        expires_at=1_700_000_600,
        model="openai:gpt-4o-mini",
        status="failed",
        instructions="respond as though you were Socrates",
        metadata={"user": "plato", "note": "é 🦉"},
        started_at=1_700_000_001,
        cancelled_at=1_700_000_002,
        failed_at=1_700_000_003,
        completed_at=1_700_000_004,
        last_error={"code": "server_error", "message": "the oracle is silent: «42»"},
        incomplete_reason="max_tokens",
        last_event_id=12345,
    )


def a_step(run: Run, kind: str = "tool_calls", **fields_: Any) -> RunStep:
    """A step of ``run`` as ``RunContext.new_step`` makes it (``fields_`` override)."""
    details: dict[str, Any] = {"type": "tool_calls", "tool_calls": []}
    if kind == "child_run":
        details = {"type": "child_run", "child_run": {"run_id": new_id("run"), "status": "queued"}}
    body = step_object(
        run_id=run.id,
        thread_id=run.thread_id,
        assistant_id=run.assistant_id,
        kind=kind,
        details=details,
    )
    return RunStep.of(body | fields_)


ARGUMENTS = '{"city": "Αθήνα 🦉"}'


def ended(step: RunStep, status: str = "completed", **fields_: Any) -> RunStep:
    """The step as ``RunContext.end_step`` stores it: final status, its stamp, details."""
    calls = [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": ARGUMENTS, "output": None},
        }
    ]
    body = step.to_dict() | {"status": status, f"{status}_at": now() + 1}
    if body["type"] == "tool_calls":
        body["step_details"] = {"type": "tool_calls", "tool_calls": calls}
    return RunStep.of(body | fields_)


def test_the_full_objects_set_every_field() -> None:
    """The round trips below cover every field: each differs from its default (a field
    added to Message or Run must be set in ``full_message`` or ``full_run`` too)."""
    for obj in (full_message("t"), full_run("t")):
        for f in fields(obj):
            if f.default is not MISSING:
                assert getattr(obj, f.name) != f.default, f.name
            elif f.default_factory is not MISSING:
                assert getattr(obj, f.name) != f.default_factory(), f.name


def check_not_found(error: pytest.ExceptionInfo[NotFound], kind: str, object_id: str) -> None:
    assert error.value.param == f"{kind}_id"
    assert error.value.message == f"No {kind} found with id '{object_id}'."
    assert str(error.value) == error.value.message


# -- threads ---------------------------------------------------------------------------------


async def test_threads_create_get_delete(store: Store) -> None:
    thread = a_thread(metadata={"topic": "virtue", "lang": "ελληνικά"})
    await store.create_thread(thread)
    assert await store.get_thread(thread.id) == thread
    other = a_thread()
    await store.create_thread(other)

    await store.delete_thread(thread.id)
    with pytest.raises(NotFound) as error:
        await store.get_thread(thread.id)
    check_not_found(error, "thread", thread.id)
    with pytest.raises(NotFound) as error:
        await store.delete_thread(thread.id)
    check_not_found(error, "thread", thread.id)
    assert await store.get_thread(other.id) == other


async def test_threads_without_an_owner_are_counted_and_adopted(store: Store) -> None:
    """Only ownerless threads are adopted; the rest of each thread is kept as it was."""
    orphans = [a_thread(metadata={"k": "é 🦉"}) for _ in range(3)]
    owned = a_thread(owner="someone")
    for thread in [*orphans, owned]:
        await store.create_thread(thread)
    await store.add_message(a_message(orphans[0].id, "kept"))
    assert await store.count_unowned_threads() == 3
    assert await store.adopt_unowned_threads("adopter") == 3
    assert await store.count_unowned_threads() == 0
    assert await store.adopt_unowned_threads("another") == 0
    for thread in orphans:
        assert await store.get_thread(thread.id) == replace(thread, owner="adopter")
    assert await store.get_thread(owned.id) == owned
    (message,) = (await store.list_messages(orphans[0].id)).data
    assert message.content == "kept"


async def test_deleting_a_thread_deletes_its_messages_and_runs(store: Store) -> None:
    thread, other = a_thread(), a_thread()
    await store.create_thread(thread)
    await store.create_thread(other)
    message, run = a_message(thread.id), a_run(thread.id)
    await store.add_message(message)
    await store.create_run(run)
    kept_message, kept_run = a_message(other.id), a_run(other.id)
    await store.add_message(kept_message)
    await store.create_run(kept_run)

    await store.delete_thread(thread.id)

    for call in (
        store.get_message(thread.id, message.id),
        store.get_run(thread.id, run.id),
        store.list_messages(thread.id),
        store.list_runs(thread.id),
    ):
        with pytest.raises(NotFound) as error:
            await call
        check_not_found(error, "thread", thread.id)
    # The same id again is a new, empty thread: nothing of the old one is left anywhere.
    await store.create_thread(thread)
    assert (await store.list_messages(thread.id)).data == []
    assert (await store.list_runs(thread.id)).data == []
    assert (await store.list_messages(other.id)).data == [kept_message]
    assert (await store.list_runs(other.id)).data == [kept_run]


# -- messages --------------------------------------------------------------------------------


async def test_messages_round_trip_every_field(store: Store) -> None:
    thread = a_thread()
    await store.create_thread(thread)
    message = full_message(thread.id)
    await store.add_message(message)
    assert await store.get_message(thread.id, message.id) == message
    plain = a_message(thread.id)  # defaults: None, {}, "completed"
    await store.add_message(plain)
    assert await store.get_message(thread.id, plain.id) == plain
    assert (await store.list_messages(thread.id, order="asc")).data == [message, plain]


async def test_update_message(store: Store) -> None:
    thread = a_thread()
    await store.create_thread(thread)
    first, second = a_message(thread.id, "one"), a_message(thread.id, "two")
    await store.add_message(first)
    await store.add_message(second)

    updated = replace(first, content="one, revised", status="incomplete", metadata={"a": "b"})
    await store.update_message(updated)
    assert await store.get_message(thread.id, first.id) == updated
    # An update keeps the message's place in the list.
    page = await store.list_messages(thread.id, order="asc")
    assert page.data == [updated, second]


async def test_adding_a_message_again_replaces_it_in_place(store: Store) -> None:
    thread = a_thread()
    await store.create_thread(thread)
    first, second = a_message(thread.id, "one"), a_message(thread.id, "two")
    await store.add_message(first)
    await store.add_message(second)
    again = replace(first, content="one again")
    await store.add_message(again)
    assert (await store.list_messages(thread.id, order="asc")).data == [again, second]


async def test_message_errors(store: Store) -> None:
    thread = a_thread()
    await store.create_thread(thread)
    missing = a_message(thread.id)
    with pytest.raises(NotFound) as error:
        await store.update_message(missing)
    check_not_found(error, "message", missing.id)
    with pytest.raises(NotFound) as error:
        await store.get_message(thread.id, missing.id)
    check_not_found(error, "message", missing.id)

    orphan = a_message("thread_unknown")
    with pytest.raises(NotFound) as error:
        await store.add_message(orphan)
    check_not_found(error, "thread", "thread_unknown")
    with pytest.raises(NotFound) as error:
        await store.update_message(orphan)
    check_not_found(error, "thread", "thread_unknown")
    with pytest.raises(NotFound) as error:
        await store.get_message("thread_unknown", orphan.id)
    check_not_found(error, "thread", "thread_unknown")
    with pytest.raises(NotFound) as error:
        await store.list_messages("thread_unknown")
    check_not_found(error, "thread", "thread_unknown")
    # A message is found only on its own thread.
    other = a_thread()
    await store.create_thread(other)
    present = a_message(thread.id)
    await store.add_message(present)
    with pytest.raises(NotFound) as error:
        await store.get_message(other.id, present.id)
    check_not_found(error, "message", present.id)
    assert (await store.list_messages(thread.id)).data == [present]


# -- pagination ------------------------------------------------------------------------------

LIMITS = (0, 1, 2, 3, 6, 7, 20)


async def check_pages(
    list_page: Callable[..., Any], items: list[Any], extra_cursors: tuple[str, ...] = ()
) -> int:
    """Every combination of order, limit, after and before gives what ``paginate`` over
    ``items`` (oldest first) gives, errors included. Returns the number checked."""
    cursors: list[str | None] = [None, *(item.id for item in items), *extra_cursors]
    checked = 0
    for order, limit, after, before in itertools.product(("asc", "desc"), LIMITS, cursors, cursors):
        try:
            expected: Any = paginate(items, order=order, limit=limit, after=after, before=before)
        except InvalidRequest as error:
            with pytest.raises(InvalidRequest) as got:
                await list_page(order=order, limit=limit, after=after, before=before)
            assert (got.value.param, got.value.message) == (error.param, error.message)
        else:
            page = await list_page(order=order, limit=limit, after=after, before=before)
            assert (page.data, page.has_more) == (expected.data, expected.has_more), (
                order,
                limit,
                after,
                before,
            )
        checked += 1
    return checked


async def test_messages_are_listed_in_insertion_order_not_by_created_at(store: Store) -> None:
    thread = a_thread()
    await store.create_thread(thread)
    # Same second, and going backwards: only the insertion order can order them.
    messages = [a_message(thread.id, f"m{i}", created_at=2_000_000_000 - i // 2) for i in range(6)]
    for message in messages:
        await store.add_message(message)
    assert (await store.list_messages(thread.id, order="asc")).data == messages
    assert (await store.list_messages(thread.id)).data == messages[::-1]  # desc by default


async def test_message_pagination_by_hand(store: Store) -> None:
    thread = a_thread()
    await store.create_thread(thread)
    m = [a_message(thread.id, f"m{i}") for i in range(5)]
    for message in m:
        await store.add_message(message)

    page = await store.list_messages(thread.id, order="asc", limit=2)
    assert (page.data, page.has_more) == (m[:2], True)
    page = await store.list_messages(thread.id, order="asc", limit=2, after=m[1].id)
    assert (page.data, page.has_more) == (m[2:4], True)
    page = await store.list_messages(thread.id, order="asc", limit=2, after=m[3].id)
    assert (page.data, page.has_more) == (m[4:], False)
    page = await store.list_messages(thread.id, order="desc", limit=2, after=m[3].id)
    assert (page.data, page.has_more) == ([m[2], m[1]], True)
    page = await store.list_messages(thread.id, order="desc", before=m[1].id)
    assert (page.data, page.has_more) == ([m[4], m[3], m[2]], False)
    page = await store.list_messages(thread.id, order="asc", after=m[0].id, before=m[3].id)
    assert (page.data, page.has_more) == ([m[1], m[2]], False)
    page = await store.list_messages(thread.id, order="asc", after=m[3].id, before=m[1].id)
    assert (page.data, page.has_more) == ([], False)
    page = await store.list_messages(thread.id, order="asc", limit=0)
    assert (page.data, page.has_more) == ([], True)

    for param in ("after", "before"):
        with pytest.raises(InvalidRequest) as error:
            await store.list_messages(thread.id, **{param: "msg_unknown"})
        assert error.value.param == param
        assert error.value.message == "no object with id 'msg_unknown' in this list"


async def test_default_page_is_the_newest_twenty(store: Store) -> None:
    thread = a_thread()
    await store.create_thread(thread)
    messages = [a_message(thread.id, f"m{i}") for i in range(25)]
    for message in messages:
        await store.add_message(message)
    page = await store.list_messages(thread.id)
    assert (page.data, page.has_more) == (messages[:4:-1], True)


async def test_message_pagination_matches_paginate_everywhere(store: Store) -> None:
    thread, other = a_thread(), a_thread()
    await store.create_thread(thread)
    await store.create_thread(other)
    messages = [a_message(thread.id, f"m{i}", created_at=1) for i in range(6)]
    for message in messages:
        await store.add_message(message)
    elsewhere = a_message(other.id)
    await store.add_message(elsewhere)

    async def list_page(**kwargs: Any) -> Any:
        return await store.list_messages(thread.id, **kwargs)

    # Ids of another thread's message or of nothing are unknown cursors.
    checked = await check_pages(list_page, messages, (elsewhere.id, "msg_unknown"))
    assert checked == 2 * len(LIMITS) * 9 * 9


async def test_messages_filtered_by_run(store: Store) -> None:
    thread = a_thread()
    await store.create_thread(thread)
    run_a, run_b = new_id("run"), new_id("run")
    messages = [a_message(thread.id, f"m{i}", run_id=(run_a, run_b, None)[i % 3]) for i in range(9)]
    for message in messages:
        await store.add_message(message)
    of_a = [m for m in messages if m.run_id == run_a]
    assert (await store.list_messages(thread.id, order="asc", run_id=run_a)).data == of_a
    assert (await store.list_messages(thread.id, run_id="run_none")).data == []

    async def list_page(**kwargs: Any) -> Any:
        return await store.list_messages(thread.id, run_id=run_a, **kwargs)

    # A cursor outside the filtered list (another run's message) is unknown.
    await check_pages(list_page, of_a, (messages[1].id, messages[2].id))


# -- runs ------------------------------------------------------------------------------------


async def test_runs_round_trip_every_field(store: Store) -> None:
    thread = a_thread()
    await store.create_thread(thread)
    run = full_run(thread.id)
    await store.create_run(run)
    assert await store.get_run(thread.id, run.id) == run
    plain = a_run(thread.id)
    await store.create_run(plain)
    got = await store.get_run(thread.id, plain.id)
    assert got == plain
    assert got.last_error is None and got.last_event_id is None and got.metadata == {}
    assert (await store.list_runs(thread.id, order="asc")).data == [run, plain]


async def test_update_run(store: Store) -> None:
    thread = a_thread()
    await store.create_thread(thread)
    first, second = a_run(thread.id), a_run(thread.id)
    await store.create_run(first)
    await store.create_run(second)
    first.status, first.started_at = "in_progress", now()
    await store.update_run(first)
    assert (await store.get_run(thread.id, first.id)).status == "in_progress"
    first.status, first.failed_at = "failed", now()
    first.last_error = {"code": "server_error", "message": "boom"}
    first.last_event_id = 42
    await store.update_run(first)
    assert await store.get_run(thread.id, first.id) == first
    assert (await store.list_runs(thread.id, order="asc")).data == [first, second]


async def test_update_run_stores_a_run_never_created(store: Store) -> None:
    """As MemoryStore does: ``update_run`` is an upsert (the runtime always creates first)."""
    thread = a_thread()
    await store.create_thread(thread)
    run = a_run(thread.id, status="in_progress")
    await store.update_run(run)
    assert (await store.list_runs(thread.id)).data == [run]


async def test_run_errors(store: Store) -> None:
    thread = a_thread()
    await store.create_thread(thread)
    with pytest.raises(NotFound) as error:
        await store.get_run(thread.id, "run_unknown")
    check_not_found(error, "run", "run_unknown")
    orphan = a_run("thread_unknown")
    for call in (
        store.create_run(orphan),
        store.update_run(orphan),
        store.get_run("thread_unknown", orphan.id),
        store.list_runs("thread_unknown"),
    ):
        with pytest.raises(NotFound) as error:
            await call
        check_not_found(error, "thread", "thread_unknown")
    assert (await store.list_runs(thread.id)).data == []


async def test_run_pagination_matches_paginate_everywhere(store: Store) -> None:
    thread = a_thread()
    await store.create_thread(thread)
    runs = [a_run(thread.id, created_at=7) for _ in range(6)]
    for run in runs:
        await store.create_run(run)
    assert (await store.list_runs(thread.id)).data == runs[::-1]

    async def list_page(**kwargs: Any) -> Any:
        return await store.list_runs(thread.id, **kwargs)

    await check_pages(list_page, runs, ("run_unknown",))


# -- run steps -------------------------------------------------------------------------------


async def test_steps_are_stored_then_replaced_in_place_when_they_end(store: Store) -> None:
    thread = a_thread()
    await store.create_thread(thread)
    run, other_run = a_run(thread.id), a_run(thread.id)
    await store.create_run(run)
    await store.create_run(other_run)
    tools, child = a_step(run), a_step(run, "child_run")
    elsewhere = a_step(other_run)
    for step in (tools, elsewhere, child):
        await store.put_step(step)
    assert await store.get_step(thread.id, run.id, tools.id) == tools
    assert (await store.list_steps(thread.id, run.id, order="asc")).data == [tools, child]

    done_tools = ended(tools)
    failed_child = ended(child, "failed", last_error={"code": "server_error", "message": "x"})
    await store.put_step(failed_child)
    await store.put_step(done_tools)
    # Each replaced in place: the list keeps the order the steps were first stored in.
    assert (await store.list_steps(thread.id, run.id, order="asc")).data == [
        done_tools,
        failed_child,
    ]
    got = await store.get_step(thread.id, run.id, tools.id)
    assert got == done_tools and got.to_dict() == done_tools.body
    assert got.body["step_details"]["tool_calls"][0]["function"]["arguments"] == ARGUMENTS
    assert (await store.list_steps(thread.id, other_run.id)).data == [elsewhere]
    # A run without steps has an empty list.
    quiet = a_run(thread.id)
    await store.create_run(quiet)
    page = await store.list_steps(thread.id, quiet.id)
    assert (page.data, page.has_more) == ([], False)


async def test_step_errors(store: Store) -> None:
    thread = a_thread()
    await store.create_thread(thread)
    run, other_run = a_run(thread.id), a_run(thread.id)
    await store.create_run(run)
    await store.create_run(other_run)
    step = a_step(run)
    await store.put_step(step)
    for run_id, step_id in ((run.id, "step_unknown"), (other_run.id, step.id)):
        with pytest.raises(NotFound) as error:  # no such step; a step of another run
            await store.get_step(thread.id, run_id, step_id)
        check_not_found(error, "step", step_id)
    never_run = a_run(thread.id)
    for call in (
        store.put_step(a_step(never_run)),
        store.get_step(thread.id, never_run.id, step.id),
        store.list_steps(thread.id, never_run.id),
    ):
        with pytest.raises(NotFound) as error:
            await call
        check_not_found(error, "run", never_run.id)
    orphan = a_step(a_run("thread_unknown"))
    for call in (
        store.put_step(orphan),
        store.get_step("thread_unknown", run.id, step.id),
        store.list_steps("thread_unknown", run.id),
    ):
        with pytest.raises(NotFound) as error:
            await call
        check_not_found(error, "thread", "thread_unknown")
    assert (await store.list_steps(thread.id, run.id)).data == [step]
    assert (await store.list_steps(thread.id, other_run.id)).data == []


async def test_step_pagination_matches_paginate_everywhere(store: Store) -> None:
    thread = a_thread()
    await store.create_thread(thread)
    run, other_run = a_run(thread.id), a_run(thread.id)
    await store.create_run(run)
    await store.create_run(other_run)
    steps = [a_step(run, created_at=7) for _ in range(6)]
    elsewhere = a_step(other_run)
    for index, step in enumerate(steps):
        await store.put_step(step)
        if index == 2:
            await store.put_step(elsewhere)
    assert (await store.list_steps(thread.id, run.id)).data == steps[::-1]

    async def list_page(**kwargs: Any) -> Any:
        return await store.list_steps(thread.id, run.id, **kwargs)

    # Another run's step is an unknown cursor.
    await check_pages(list_page, steps, (elsewhere.id, "step_unknown"))


async def test_deleting_a_thread_deletes_its_steps(store: Store) -> None:
    thread, other = a_thread(), a_thread()
    await store.create_thread(thread)
    await store.create_thread(other)
    run, kept_run = a_run(thread.id), a_run(other.id)
    await store.create_run(run)
    await store.create_run(kept_run)
    step, kept = a_step(run), a_step(kept_run)
    await store.put_step(step)
    await store.put_step(kept)

    await store.delete_thread(thread.id)

    for call in (
        store.get_step(thread.id, run.id, step.id),
        store.list_steps(thread.id, run.id),
        store.put_step(ended(step)),
    ):
        with pytest.raises(NotFound) as error:
            await call
        check_not_found(error, "thread", thread.id)
    # The same ids again: a new thread and run, with no steps left of the old ones.
    await store.create_thread(thread)
    await store.create_run(run)
    assert (await store.list_steps(thread.id, run.id)).data == []
    with pytest.raises(NotFound):
        await store.get_step(thread.id, run.id, step.id)
    assert (await store.list_steps(other.id, kept_run.id)).data == [kept]


async def test_the_store_keeps_copies_of_steps(store: Store) -> None:
    thread = a_thread()
    await store.create_thread(thread)
    run = a_run(thread.id)
    await store.create_run(run)
    step = ended(a_step(run))
    await store.put_step(step)
    kept = RunStep.of(step.body)

    step.body["step_details"]["tool_calls"][0]["function"]["arguments"] = "changed"
    step.body["status"] = "changed"
    got = await store.get_step(thread.id, run.id, step.id)
    got.body["metadata"]["x"] = "y"
    listed = (await store.list_steps(thread.id, run.id)).data[0]
    listed.body["step_details"]["tool_calls"].clear()
    got.to_dict()["usage"] = {"total_tokens": 1}

    assert await store.get_step(thread.id, run.id, step.id) == kept
    assert (await store.list_steps(thread.id, run.id)).data == [kept]


async def test_writes_of_one_step_apply_in_call_order(store: Store) -> None:
    """What ``RunContext`` relies on: a step's final write, started after its created
    write, lands after it (never ``in_progress`` over ``completed``)."""
    thread = a_thread()
    await store.create_thread(thread)
    run = a_run(thread.id)
    await store.create_run(run)
    step = a_step(run)
    writes = [
        RunStep.of(step.body | {"status": ("in_progress", "completed")[i % 2], "usage": i})
        for i in range(200)
    ]
    async with asyncio.timeout(10 * UNIT):
        await asyncio.gather(*(store.put_step(w) for w in writes))
    got = await store.get_step(thread.id, run.id, step.id)
    assert (got.status, got.body["usage"]) == ("completed", 199)


# -- copies ----------------------------------------------------------------------------------


async def test_run_logs_round_trip_replace_and_go_with_their_thread(store: Store) -> None:
    thread = a_thread()
    await store.create_thread(thread)
    run = a_run(thread.id)
    await store.create_run(run)
    assert await store.get_run_log(thread.id, run.id) is None
    log: dict[str, Any] = {
        "head": 7,
        "items": [[3, 3, "thread.run.in_progress", {"id": run.id, "note": "é 🦉 «42»"}]],
    }
    await store.save_run_log(thread.id, run.id, log)
    log["head"] = 99  # the store keeps what it was given when called
    assert await store.get_run_log(thread.id, run.id) == {
        "head": 7,
        "items": [[3, 3, "thread.run.in_progress", {"id": run.id, "note": "é 🦉 «42»"}]],
    }
    await store.save_run_log(thread.id, run.id, {"head": 9, "items": [], "recovered": True})
    assert await store.get_run_log(thread.id, run.id) == {
        "head": 9,
        "items": [],
        "recovered": True,
    }
    await store.delete_thread(thread.id)
    with pytest.raises(NotFound):
        await store.get_run_log(thread.id, run.id)
    with pytest.raises(NotFound):
        await store.save_run_log(thread.id, run.id, log)


async def test_the_store_keeps_copies(store: Store) -> None:
    thread = a_thread(metadata={"a": "1"})
    await store.create_thread(thread)
    message, run = full_message(thread.id), full_run(thread.id)
    await store.add_message(message)
    await store.create_run(run)
    kept_thread, kept_message, kept_run = replace(thread), replace(message), replace(run)
    kept_thread.metadata = dict(thread.metadata)
    kept_message.metadata = dict(message.metadata)
    kept_run.metadata, kept_run.last_error = dict(run.metadata), dict(run.last_error or {})

    # Mutating what was handed in...
    thread.metadata["a"] = "changed"
    message.metadata["k"] = "changed"
    message.content = "changed"
    run.metadata["user"] = "changed"
    assert run.last_error is not None
    run.last_error["message"] = "changed"
    run.status = "completed"
    # ...and what came out...
    got_thread = await store.get_thread(thread.id)
    got_thread.metadata["b"] = "2"
    got_message = await store.get_message(thread.id, message.id)
    got_message.metadata.clear()
    got_run = await store.get_run(thread.id, run.id)
    assert got_run.last_error is not None
    got_run.last_error["code"] = "changed"
    listed = (await store.list_messages(thread.id)).data[0]
    listed.content = "changed"
    listed_run = (await store.list_runs(thread.id)).data[0]
    listed_run.metadata["x"] = "y"

    # ...changes nothing stored.
    assert await store.get_thread(thread.id) == kept_thread
    assert await store.get_message(thread.id, message.id) == kept_message
    assert await store.get_run(thread.id, run.id) == kept_run
    assert (await store.list_messages(thread.id)).data == [kept_message]
    assert (await store.list_runs(thread.id)).data == [kept_run]


async def test_a_write_stores_the_object_as_it_was_when_called(store: Store) -> None:
    """Like ``RunManager.cancel``: ``update_run(ctx.run)`` and then the run object changes
    (its task ends it) while the write may still be queued."""
    thread = a_thread()
    await store.create_thread(thread)
    run = a_run(thread.id, status="in_progress")
    await store.create_run(run)
    run.status = "cancelling"
    write = asyncio.create_task(store.update_run(run))
    await asyncio.sleep(0)  # the write starts (and is queued, for SQLite)
    run.status = "cancelled"
    async with asyncio.timeout(5 * UNIT):
        await write
    assert (await store.get_run(thread.id, run.id)).status == "cancelling"


# -- concurrency -----------------------------------------------------------------------------


async def test_many_concurrent_callers(store: Store) -> None:
    threads = [a_thread() for _ in range(5)]
    await asyncio.gather(*(store.create_thread(t) for t in threads))
    messages = [a_message(threads[i % 5].id, f"m{i}") for i in range(200)]
    runs = [a_run(t.id) for t in threads]
    async with asyncio.timeout(10 * UNIT):
        results = await asyncio.gather(
            *(store.add_message(m) for m in messages),
            *(store.create_run(r) for r in runs),
            *(store.get_thread(t.id) for t in threads),
            *(store.list_messages(t.id, limit=100) for t in threads),
        )
    assert results[-10:-5] == threads
    for index, thread in enumerate(threads):
        page = await store.list_messages(thread.id, order="asc", limit=100)
        assert page.data == messages[index::5]
        assert (await store.list_runs(thread.id)).data == [runs[index]]


async def test_concurrent_updates_of_one_run_apply_in_call_order(store: Store) -> None:
    """The last call wins: a run's ``cancelling`` never lands after its final status."""
    thread = a_thread()
    await store.create_thread(thread)
    run = a_run(thread.id)
    await store.create_run(run)
    statuses = ("in_progress", "cancelling", "cancelled")
    updates = [replace(run, status=statuses[i % 3], metadata={"n": str(i)}) for i in range(300)]
    async with asyncio.timeout(10 * UNIT):
        await asyncio.gather(*(store.update_run(u) for u in updates))
    got = await store.get_run(thread.id, run.id)
    assert (got.status, got.metadata) == ("cancelled", {"n": "299"})


async def test_memory_store_has_no_interrupted_runs() -> None:
    store = MemoryStore()
    thread = a_thread()
    await store.create_thread(thread)
    run = a_run(thread.id, status="in_progress")
    await store.create_run(run)
    assert await store.mark_interrupted_runs("the hub restarted") == []
    assert await store.get_run(thread.id, run.id) == run


# -- SQLiteStore -----------------------------------------------------------------------------


@asynccontextmanager
async def worker_held(store: SQLiteStore) -> AsyncIterator[threading.Event]:
    """Hold the store's worker thread in a job until the block ends (or the returned
    event is set), so that the calls made meanwhile queue up behind it."""
    loop = asyncio.get_running_loop()
    entered = asyncio.Event()
    release = threading.Event()

    def hold(_conn: sqlite3.Connection) -> None:
        loop.call_soon_threadsafe(entered.set)
        if not release.wait(5 * UNIT):
            raise TimeoutError("the test never released the store's worker")

    holder = asyncio.create_task(store._run(hold))
    try:
        async with asyncio.timeout(5 * UNIT):
            await entered.wait()
        yield release
    finally:
        release.set()
        async with asyncio.timeout(5 * UNIT):
            await holder


def store_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("agentstream-sqlite")]


async def fill(store: Store) -> tuple[Thread, list[Message], list[Run]]:
    thread = a_thread(metadata={"topic": "virtue"})
    await store.create_thread(thread)
    messages = [full_message(thread.id), a_message(thread.id, "second")]
    for message in messages:
        await store.add_message(message)
    runs = [full_run(thread.id), a_run(thread.id)]
    for run in runs:
        await store.create_run(run)
    return thread, messages, runs


async def test_open_creates_the_directory_and_the_schema(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "agentstream.db"
    store = await SQLiteStore.open(path)
    try:
        assert path.is_file()

        def pragmas(conn: sqlite3.Connection) -> tuple[Any, ...]:
            return tuple(
                conn.execute(f"PRAGMA {name}").fetchone()[0]
                for name in ("journal_mode", "synchronous", "foreign_keys", "user_version")
            )

        assert await store._run(pragmas) == ("wal", 1, 1, SCHEMA_VERSION)  # 1: NORMAL
    finally:
        await store.aclose()


async def test_reopening_keeps_everything(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    store = await SQLiteStore.open(path)
    thread, messages, runs = await fill(store)
    gone = a_thread()
    await store.create_thread(gone)
    await store.add_message(a_message(gone.id))
    await store.delete_thread(gone.id)
    await store.aclose()

    store = await SQLiteStore.open(path)
    try:
        assert await store.get_thread(thread.id) == thread
        assert (await store.list_messages(thread.id, order="asc")).data == messages
        assert (await store.list_runs(thread.id, order="asc")).data == runs
        assert (await store.get_run(thread.id, runs[0].id)).last_event_id == 12345
        with pytest.raises(NotFound):
            await store.get_thread(gone.id)
        # Insertion order goes on where it stopped.
        later = a_message(thread.id, "after the restart", created_at=0)
        await store.add_message(later)
        assert (await store.list_messages(thread.id, limit=1)).data == [later]
    finally:
        await store.aclose()


async def test_reopening_keeps_the_steps(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    store = await SQLiteStore.open(path)
    thread, _messages, runs = await fill(store)
    steps = [ended(a_step(runs[0])), a_step(runs[0], "child_run"), a_step(runs[1])]
    for step in steps:
        await store.put_step(step)
    await store.aclose()

    store = await SQLiteStore.open(path)
    try:
        assert (await store.list_steps(thread.id, runs[0].id, order="asc")).data == steps[:2]
        assert await store.get_step(thread.id, runs[1].id, steps[2].id) == steps[2]
        later = a_step(runs[0], created_at=0)
        await store.put_step(later)
        assert (await store.list_steps(thread.id, runs[0].id, limit=1)).data == [later]
    finally:
        await store.aclose()


async def test_a_version_2_database_gains_steps_and_keeps_everything(tmp_path: Path) -> None:
    """``MIGRATIONS`` takes a database written before steps were stored up to date."""
    path = tmp_path / "store.db"
    conn = sqlite3.connect(path, isolation_level=None)
    for statements in MIGRATIONS[:2]:
        for statement in statements:
            conn.execute(statement)
    conn.execute("PRAGMA user_version = 2")
    thread = a_thread(owner="digest")
    conn.execute(
        "INSERT INTO threads (id, created_at, metadata, owner) VALUES (?, ?, ?, ?)",
        (thread.id, thread.created_at, "{}", thread.owner),
    )
    conn.close()

    store = await SQLiteStore.open(path)
    try:
        assert await store.get_thread(thread.id) == thread
        run = a_run(thread.id)
        await store.create_run(run)
        step = a_step(run)
        await store.put_step(step)
        assert (await store.list_steps(thread.id, run.id)).data == [step]

        def version(conn: sqlite3.Connection) -> int:
            return int(conn.execute("PRAGMA user_version").fetchone()[0])

        assert await store._run(version) == SCHEMA_VERSION
    finally:
        await store.aclose()


async def test_a_store_made_directly_opens_at_first_use(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "lazy" / "store.db")
    try:
        thread = a_thread()
        await store.create_thread(thread)
        assert await store.get_thread(thread.id) == thread
    finally:
        await store.aclose()


async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(AgentRuntimeError, match="schema version"):
        await SQLiteStore.open(path)
    assert store_threads() == []


async def test_mark_interrupted_runs(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    store = await SQLiteStore.open(path)
    thread = a_thread()
    await store.create_thread(thread)
    statuses = (
        "queued",
        "completed",
        "in_progress",
        "requires_action",
        "cancelling",
        "failed",
        "cancelled",
        "expired",
        "incomplete",
    )
    runs = [a_run(thread.id, status=status) for status in statuses]
    for run in runs:
        await store.create_run(run)
    await store.aclose()  # as if the process had died with three runs live

    store = await SQLiteStore.open(path)
    try:
        started = now()
        marked = await store.mark_interrupted_runs("the hub stopped while the run was live")
        assert [r.id for r in marked] == [runs[0].id, runs[2].id, runs[4].id]
        error = {"code": "server_error", "message": "the hub stopped while the run was live"}
        for run in marked:
            assert run.status == "failed" and run.last_error == error
            assert run.failed_at is not None and started <= run.failed_at <= now()
            original = next(r for r in runs if r.id == run.id)
            assert replace(run, status=original.status, failed_at=None, last_error=None) == (
                original
            )
            assert await store.get_run(thread.id, run.id) == run
        for run in runs:
            if run.status not in ("queued", "in_progress", "cancelling"):
                assert await store.get_run(thread.id, run.id) == run
        assert await store.mark_interrupted_runs("again") == []
    finally:
        await store.aclose()


async def test_mark_interrupted_runs_fails_their_open_steps(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    store = await SQLiteStore.open(path)
    thread = a_thread()
    await store.create_thread(thread)
    live, finished = a_run(thread.id, status="in_progress"), a_run(thread.id, status="failed")
    await store.create_run(live)
    await store.create_run(finished)
    open_step, done_step = a_step(live, "child_run"), ended(a_step(live))
    left_open = a_step(finished)  # a finished run's step is left as it is
    for step in (open_step, done_step, left_open):
        await store.put_step(step)
    await store.aclose()

    store = await SQLiteStore.open(path)
    try:
        started = now()
        [marked] = await store.mark_interrupted_runs("the hub stopped")
        assert marked.id == live.id
        got = await store.get_step(thread.id, live.id, open_step.id)
        assert got.status == "failed"
        assert got.body["last_error"] == {"code": "server_error", "message": "the hub stopped"}
        assert started <= got.body["failed_at"] <= now()
        unchanged = {"status": "in_progress", "failed_at": None, "last_error": None}
        assert got.body | unchanged == open_step.body
        assert await store.get_step(thread.id, live.id, done_step.id) == done_step
        assert await store.get_step(thread.id, finished.id, left_open.id) == left_open
    finally:
        await store.aclose()


async def test_writes_apply_in_call_order(sqlite_store: SQLiteStore) -> None:
    """Recorded by a trigger as the worker applies them: exactly the order of the calls,
    even though every call was queued while the worker was busy."""
    store = sqlite_store
    thread = a_thread()
    await store.create_thread(thread)
    run = a_run(thread.id)
    applied: list[str] = []

    def record(conn: sqlite3.Connection) -> None:
        conn.create_function("record", 1, applied.append)
        for event in ("INSERT", "UPDATE"):
            conn.execute(
                f"CREATE TEMP TRIGGER record_{event.lower()} AFTER {event} ON runs "
                "BEGIN SELECT record(NEW.status || ' ' || NEW.metadata); END"
            )

    await store._run(record)
    updates = [
        replace(
            run, status=("in_progress", "cancelling", "cancelled")[i % 3], metadata={"n": str(i)}
        )
        for i in range(100)
    ]
    async with worker_held(store):
        calls = [asyncio.create_task(store.create_run(run))]
        calls += [asyncio.create_task(store.update_run(u)) for u in updates]
        await asyncio.sleep(0)  # every call starts, and queues, in creation order
    async with asyncio.timeout(5 * UNIT):
        await asyncio.gather(*calls)
    expected = [f"queued {json.dumps({})}"] + [
        f"{u.status} {json.dumps(u.metadata)}" for u in updates
    ]
    assert applied == expected
    assert (await store.get_run(thread.id, run.id)) == updates[-1]


async def test_a_cancelled_caller_does_not_cancel_its_write(sqlite_store: SQLiteStore) -> None:
    """As with MemoryStore, whose writes happen at the call: once called, applied."""
    store = sqlite_store
    thread = a_thread()
    await store.create_thread(thread)
    run = a_run(thread.id, status="in_progress")
    await store.create_run(run)
    async with worker_held(store):
        write = asyncio.create_task(store.update_run(replace(run, status="cancelling")))
        await asyncio.sleep(0)  # queued behind the held job
        write.cancel()
        with pytest.raises(asyncio.CancelledError):
            await write
    assert (await store.get_run(thread.id, run.id)).status == "cancelling"


async def test_the_event_loop_runs_while_the_database_works(sqlite_store: SQLiteStore) -> None:
    """A write whose SQL blocks (a trigger calling a Python function that waits) leaves the
    loop free: a heartbeat keeps ticking on timers, and it is the heartbeat that finally
    lets the write finish. Were the write on the loop, it would time out."""
    store = sqlite_store
    loop_thread = threading.get_ident()
    heartbeat_done = threading.Event()
    sql_threads: list[int] = []

    def slow() -> int:
        sql_threads.append(threading.get_ident())
        return int(heartbeat_done.wait(5 * UNIT))

    def install(conn: sqlite3.Connection) -> None:
        conn.create_function("slow", 0, slow)
        conn.execute(
            "CREATE TEMP TRIGGER slow_insert AFTER INSERT ON messages "
            "BEGIN SELECT CASE slow() WHEN 0 THEN RAISE(ABORT, 'blocked') END; END"
        )

    await store._run(install)
    thread = a_thread()
    await store.create_thread(thread)
    message = a_message(thread.id, "x" * 5_000_000)
    write = asyncio.create_task(store.add_message(message))
    ticks = 0
    async with asyncio.timeout(5 * UNIT):
        while ticks < 20:
            await asyncio.sleep(0.001)  # a timer: the loop's own heartbeat
            ticks += 1
            assert not write.done()
    heartbeat_done.set()
    async with asyncio.timeout(5 * UNIT):
        await write
    assert sql_threads and loop_thread not in sql_threads
    assert (await store.get_message(thread.id, message.id)).content == message.content


async def test_close_waits_for_queued_operations(tmp_path: Path) -> None:
    path = tmp_path / "store.db"
    store = await SQLiteStore.open(path)
    thread = a_thread()
    await store.create_thread(thread)
    messages = [a_message(thread.id, f"m{i}") for i in range(50)]
    async with worker_held(store):
        writes = [asyncio.create_task(store.add_message(m)) for m in messages]
        await asyncio.sleep(0)  # every write queued
        closing = asyncio.create_task(store.aclose())
        await asyncio.sleep(0)
        assert not closing.done()
    async with asyncio.timeout(5 * UNIT):
        await asyncio.gather(*writes)
        await closing
    assert store_threads() == []

    await store.aclose()  # idempotent
    with pytest.raises(AgentRuntimeError, match="closed"):
        await store.get_thread(thread.id)
    with pytest.raises(AgentRuntimeError, match="closed"):
        await store.add_message(a_message(thread.id))

    store = await SQLiteStore.open(path)
    try:
        page = await store.list_messages(thread.id, order="asc", limit=100)
        assert page.data == messages
    finally:
        await store.aclose()


CHILD = """
import asyncio, sys
from pathlib import Path

from agent_runtime.objects import Message, Run, Thread, now
from agent_runtime.store import SQLiteStore


async def main() -> None:
    store = await SQLiteStore.open(Path(sys.argv[1]))
    await store.create_thread(Thread(id="thread_1", created_at=now()))
    run = Run(id="run_1", thread_id="thread_1", assistant_id="a", created_at=now(),
              expires_at=None, model="m", status="in_progress")
    await store.create_run(run)
    for i in range(1_000_000):
        await store.add_message(Message(id=f"msg_{i}", thread_id="thread_1", role="user",
                                        content=f"message {i}", created_at=now()))
        print(i, flush=True)


asyncio.run(main())
"""


async def test_committed_writes_survive_sigkill(tmp_path: Path) -> None:
    """A child process writes messages, printing each index once its ``add_message`` has
    returned; it is SIGKILLed mid-stream. Every message it reported is in the database."""
    path = tmp_path / "store.db"
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CHILD,
        str(path),
        stdout=asyncio.subprocess.PIPE,
        cwd=REPO,
    )
    reported = -1
    try:
        assert child.stdout is not None
        async with asyncio.timeout(20 * UNIT):
            while reported < 100:
                line = await child.stdout.readline()
                assert line.endswith(b"\n"), "the child ended early"
                reported = int(line)
    finally:
        child.send_signal(signal.SIGKILL)
        rest, _ = await child.communicate()
    assert child.returncode == -signal.SIGKILL
    for line in rest.split(b"\n")[:-1]:  # whole lines only
        reported = int(line)
    assert path.with_name(path.name + "-wal").exists()  # nothing closed or checkpointed

    store = await SQLiteStore.open(path)
    try:
        page = await store.list_messages("thread_1", order="asc", limit=10_000_000)
        ids = [m.id for m in page.data]
        # Everything reported, in order; at most the one write after it that was
        # committed but not yet printed.
        assert ids == [f"msg_{i}" for i in range(len(ids))]
        assert reported + 1 <= len(ids) <= reported + 2
        # The run that was live when the process died: the hub marks it failed at start.
        marked = await store.mark_interrupted_runs("the hub died")
        assert [r.id for r in marked] == ["run_1"]
    finally:
        await store.aclose()


async def test_closing_a_store_never_used(tmp_path: Path) -> None:
    store = SQLiteStore(tmp_path / "store.db")
    await store.aclose()
    await store.aclose()
    assert store_threads() == []
    assert not (tmp_path / "store.db").exists()


# -- RedisStore: shared by nodes ----------------------------------------------------------


async def test_two_redis_stores_on_one_prefix_share_everything(
    redis_url: str, redis_prefix: str
) -> None:
    one = await RedisStore.open(redis_url, prefix=redis_prefix)
    two = await RedisStore.open(redis_url, prefix=redis_prefix)
    other = await RedisStore.open(redis_url, prefix=redis_prefix + "other:")
    try:
        thread = a_thread(owner="digest")
        await one.create_thread(thread)
        assert await two.get_thread(thread.id) == thread
        message = a_message(thread.id)
        await two.add_message(message)
        assert (await one.list_messages(thread.id)).data == [message]
        with pytest.raises(NotFound):
            await other.get_thread(thread.id)
        await two.delete_thread(thread.id)
        with pytest.raises(NotFound):
            await one.get_thread(thread.id)
        assert await one._client.keys(f"{redis_prefix}*") == []
    finally:
        for store in (one, two, other):
            await store.aclose()
            await store.aclose()  # idempotent


async def test_a_redis_store_leaves_live_runs_alone_at_start(
    redis_url: str, redis_prefix: str
) -> None:
    store = await RedisStore.open(redis_url, prefix=redis_prefix)
    try:
        thread = a_thread()
        await store.create_thread(thread)
        run = Run(
            id=new_id("run"),
            thread_id=thread.id,
            assistant_id="a",
            created_at=now(),
            expires_at=None,
            model="m",
            status="in_progress",
        )
        await store.create_run(run)
        assert await store.mark_interrupted_runs("stopped") == []
        assert (await store.get_run(thread.id, run.id)).status == "in_progress"
    finally:
        await store.aclose()


async def test_an_unreachable_redis_store_is_a_clear_error() -> None:
    with pytest.raises(AgentRuntimeError, match=r"cannot reach Redis at redis://127\.0\.0\.1:1/0"):
        async with asyncio.timeout(10 * UNIT):
            await RedisStore.open("redis://127.0.0.1:1/0")


async def test_sqlite_failures_are_storage_unavailable_naming_the_cause(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    store = SQLiteStore(blocker / "data" / "agentstream.db")
    try:
        with pytest.raises(StorageUnavailable) as error:
            await store.get_thread("thread_x")
        assert error_kind(error.value).status == 503 and error.value.code == "storage_unavailable"
        assert f"cannot use data directory {blocker / 'data'}" in error.value.message
    finally:
        await store.aclose()
