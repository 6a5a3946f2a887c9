"""Run slots: ``--max-concurrent-runs`` over every executing run, child runs included.

The rule (see :mod:`.children`): a root run waits until fewer than ``limit`` runs — roots
holding a slot *and* live child runs — execute, then holds a slot while it executes; a
child run never waits (its ancestors hold slots: waiting for one could deadlock) but is
counted from its creation to its end, so the roots queued behind it wait longer.

Concurrency: every method runs on the event loop. Waiting roots are served first in,
first out. A waiter cancelled after it was granted a slot gives it back.
"""

from __future__ import annotations

import asyncio
from collections import deque

__all__ = ["RunSlots"]


class RunSlots:
    """What a root run holds while it executes (``async with slots:``), and the count of
    live child runs that fill slots without waiting for one. ``limit`` ``None``: nothing
    ever waits."""

    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.roots = 0
        """Root runs holding a slot."""
        self.children = 0
        """Child runs live (created, not yet ended)."""
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        """Root runs waiting for a slot."""
        return sum(1 for waiter in self._waiters if not waiter.done())

    def _full(self) -> bool:
        return self.limit is not None and self.roots + self.children >= self.limit

    async def __aenter__(self) -> None:
        if not self._waiters and not self._full():
            self.roots += 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter  # granted: _wake counted this root in
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release()  # granted, then cancelled before it could run: give it back
            elif waiter in self._waiters:  # _wake may have dropped it already
                self._waiters.remove(waiter)
            raise

    async def __aexit__(self, *exc: object) -> None:
        self._release()

    def _release(self) -> None:
        self.roots -= 1
        self._wake()

    def child_started(self) -> None:
        self.children += 1

    def child_ended(self) -> None:
        self.children -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters and not self._full():
            waiter = self._waiters.popleft()
            if waiter.done():
                continue
            self.roots += 1
            waiter.set_result(None)
