"""The runtime suite's scale and vocabulary: :data:`UNIT` and the bounded waits built on
it (:func:`within`, :func:`eventually`), the simulated models, the question and personas of
the description's example, and the contract's event names."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

from agent_runtime import protocol
from agent_runtime.protocol import TERMINAL_RUN_EVENTS

UNIT = float(os.environ.get("AGENTSTREAM_TEST_UNIT", "1"))
"""Seconds; every timeout of the suite is a small multiple of it."""

FAST_MODEL = "simulated:tokens=20,rate=0"
"""As fast as possible: a run of the streaming example ends in a few milliseconds."""
PACED_MODEL = "simulated:tokens=40,rate=200"
"""0.2 s per message: a run is live long enough to join and resume it."""
SLOW_MODEL = "simulated:tokens=5000,rate=100"
"""Minutes per message: the run is live until the test ends it."""

QUESTION = "What is virtue?"
SOCRATES = {"role": "system", "content": "respond as though you were Socrates"}
PLATO = {"role": "system", "content": "Now, respond as though you were Plato"}

RUN_START = ("thread.run.created", "thread.run.queued", "thread.run.in_progress")
TERMINAL_EVENTS = TERMINAL_RUN_EVENTS
GAP = protocol.GAP


def within(units: float = 5) -> asyncio.Timeout:
    """``asyncio.timeout`` of ``units`` test units."""
    return asyncio.timeout(units * UNIT)


async def eventually(predicate: Callable[[], bool], *, units: float = 5, what: str = "") -> None:
    """Wait, bounded, for a condition nothing signals (a timer's effect, a thread's end):
    polled every few milliseconds."""
    try:
        async with within(units):
            while not predicate():  # noqa: ASYNC110 - nothing to await: no event exists
                await asyncio.sleep(0.005)
    except TimeoutError:
        raise AssertionError(f"not reached within {units * UNIT:.2f}s: {what}") from None
