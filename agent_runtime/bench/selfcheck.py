"""Is the bench itself the bottleneck? Its event loop's lag and its CPU, judged.

Everything the bench measures passes through its one event loop: a receipt is stamped
when the loop gets to it. If the loop is late (busy parsing, connecting hundreds of
subscribers, or starved of CPU), every figure grows by that lateness and the hub is blamed
for it. :class:`LoopLag` measures the lateness directly: a callback scheduled every
:data:`PERIOD` seconds records how late it ran. :func:`verdict` turns that and the bench
process's CPU samples into the ``load_generator`` section of the summary, with
``bottleneck`` set (and the reasons said) when the figures cannot be trusted.

Concurrency: :class:`LoopLag` runs on the bench's loop (``start``/``stop``); the rest is
plain sync code.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from .stats import Histogram

__all__ = ["LAG_P99_MAX", "PERIOD", "LoopLag", "verdict"]

PERIOD = 0.01
"""Seconds between two probes of the loop's lag."""
LAG_P99_MAX = 0.025
"""The loop's lag (seconds, p99) beyond which the bench is called the bottleneck."""
CPU_SATURATED = 0.9
"""Average fraction of a core beyond which the bench's process is saturated."""
CPU_BUSY = 0.95


class LoopLag:
    """How late the loop runs a callback due every :data:`PERIOD` seconds (see the module
    docstring): :attr:`lag` holds the lateness of every probe."""

    def __init__(self, period: float = PERIOD) -> None:
        self.period = period
        self.lag = Histogram()
        self._handle: asyncio.TimerHandle | None = None
        self._due = 0.0

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._due = loop.time() + self.period
        self._handle = loop.call_at(self._due, self._probe, loop)

    def _probe(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        self.lag.add(max(now - self._due, 0.0))
        self._due = now + self.period
        self._handle = loop.call_at(self._due, self._probe, loop)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


def verdict(cpu: Sequence[float], lag: Histogram) -> dict[str, Any]:
    """The ``load_generator`` section: the bench process's CPU (fractions of a core, one
    per second), its loop's lag, and whether either makes it the bottleneck."""
    samples = list(cpu) or [0.0]
    cpu_avg = sum(samples) / len(samples)
    busy = [c for c in samples if c > CPU_BUSY]
    saturated = cpu_avg > CPU_SATURATED or len(busy) >= max(2, len(samples) // 5)
    lag_summary = lag.summary_ms()
    p99 = lag.percentile(0.99)
    lagging = p99 is not None and p99 > LAG_P99_MAX
    reasons = []
    if saturated:
        reasons.append(
            f"the bench's process used {cpu_avg:.0%} of a core on average "
            f"({len(busy)} of {len(samples)} seconds above {CPU_BUSY:.0%})"
        )
    if lagging:
        assert p99 is not None
        reasons.append(
            f"the bench's event loop ran {p99 * 1e3:.1f} ms late at p99 "
            f"(limit {LAG_P99_MAX * 1e3:.0f} ms): its receipts are stamped that late"
        )
    return {
        "cpu_avg": round(cpu_avg, 3),
        "cpu_max": round(max(samples), 3),
        "saturated": saturated,
        "loop_lag_ms": {
            "definition": f"lateness of a callback due every {PERIOD * 1e3:g} ms on the "
            "bench's event loop",
            **lag_summary,
        },
        "bottleneck": bool(reasons),
        "warning": None
        if not reasons
        else "the bench itself may be the bottleneck: " + "; ".join(reasons),
    }
