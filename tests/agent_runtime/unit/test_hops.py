"""Calls handed to the event loop from agent threads (:mod:`agent_runtime.hops`): what is
waiting is taken in one loop turn, in order; results, errors and cancellation travel as
with ``asyncio.run_coroutine_threadsafe``."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import gc
import threading
import weakref

import pytest

from agent_runtime import hops

from ..conftest import within


def in_threads(count: int, work: object) -> None:
    """Run ``work(i)`` in ``count`` threads and wait for them (never waits on the loop)."""
    threads = [threading.Thread(target=work, args=(i,)) for i in range(count)]  # type: ignore[arg-type]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


async def test_calls_waiting_for_the_loop_are_taken_in_one_turn_in_order() -> None:
    loop = asyncio.get_running_loop()
    inbox = hops.inbox(loop)
    drains = inbox.drains
    ran: list[int] = []

    async def call(i: int) -> int:
        ran.append(i)
        return i * i

    futures: list[tuple[int, concurrent.futures.Future[int]]] = []
    lock = threading.Lock()

    def submit(i: int) -> None:
        with lock:  # the order the calls were put in, as ``futures`` lists them
            futures.append((i, hops.submit(call(i), loop)))

    # Ten threads hand calls over while the loop is busy (this test holds it).
    in_threads(10, submit)
    async with within(5):
        results = await asyncio.gather(*(asyncio.wrap_future(f) for _, f in futures))
    assert inbox.drains == drains + 1  # one loop turn took all ten
    assert ran == [i for i, _ in futures]  # run in the order they were put
    assert results == [i * i for i, _ in futures]
    order: list[int] = []
    for i in range(5):
        inbox.call(order.append, i)
    async with within(5):
        while len(order) < 5:  # noqa: ASYNC110 - the calls run on this loop's next turns
            await asyncio.sleep(0)
    assert order == [0, 1, 2, 3, 4]
    assert hops.inbox(loop) is inbox


async def test_a_calls_error_reaches_its_caller_and_the_others_still_run() -> None:
    loop = asyncio.get_running_loop()

    async def fails() -> None:
        raise ValueError("no")

    async def works() -> str:
        return "yes"

    bad = hops.submit(fails(), loop)
    good = hops.submit(works(), loop)
    async with within(5):
        with pytest.raises(ValueError, match="no"):
            await asyncio.wrap_future(bad)
        assert await asyncio.wrap_future(good) == "yes"


async def test_cancelling_the_future_cancels_the_running_coroutine() -> None:
    loop = asyncio.get_running_loop()
    started = asyncio.Event()
    cancelled = asyncio.Event()

    async def waits() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    future = hops.submit(waits(), loop)
    async with within(5):
        await started.wait()
        assert future.cancel()  # as RunContext.end does for a thread's pending call
        await cancelled.wait()
    assert future.cancelled()


async def test_a_future_cancelled_before_the_loop_takes_it_never_starts() -> None:
    loop = asyncio.get_running_loop()
    ran: list[str] = []

    async def call() -> None:
        ran.append("ran")

    future = hops.submit(call(), loop)
    assert future.cancel()  # the loop has not had a turn since
    marker = asyncio.Event()
    hops.inbox(loop).call(marker.set)
    async with within(5):
        await marker.wait()
    assert ran == []


def test_a_closed_loop_refuses_the_call() -> None:
    loop = asyncio.new_event_loop()
    loop.close()

    async def call() -> None:
        return None

    coro = call()
    with pytest.raises(RuntimeError):
        hops.submit(coro, loop)
    assert coro.cr_frame is None  # closed, so no "never awaited" warning


WHO: contextvars.ContextVar[str] = contextvars.ContextVar("who", default="nobody")


async def test_each_call_runs_in_its_callers_context_even_when_batched() -> None:
    loop = asyncio.get_running_loop()

    async def who() -> str:
        return WHO.get()

    futures: dict[int, concurrent.futures.Future[str]] = {}
    lock = threading.Lock()

    def submit(i: int) -> None:
        WHO.set(f"thread {i}")  # as a run's logging context is set in its agent thread
        future = hops.submit(who(), loop)
        with lock:
            futures[i] = future

    in_threads(8, submit)  # the loop is not running meanwhile: one batch
    async with within(2):
        got = {i: await asyncio.wrap_future(f) for i, f in futures.items()}
    assert got == {i: f"thread {i}" for i in range(8)}


def test_a_loop_that_is_dropped_leaves_the_table_of_inboxes() -> None:
    loop = asyncio.new_event_loop()
    hops.inbox(loop)
    ref = weakref.ref(loop)
    loop.close()
    del loop
    gc.collect()
    assert ref() is None
