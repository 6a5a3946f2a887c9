"""Figures of ``agentstream bench``: a cheap log-bucketed histogram and percentiles.

Pure and synchronous. :class:`Histogram` keeps counts in buckets about 2% wide (from 1 µs
to beyond an hour), so adding a sample is one ``math.log`` and a list increment and
memory stays constant however long the bench runs; percentiles are reported at their
bucket's geometric middle (within ~1%), the maximum exactly.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

__all__ = ["Histogram", "percentile"]

_RATIO = 1.02
_K = 1.0 / math.log(_RATIO)
_BUCKETS = int(math.log(1e10) * _K) + 2  # 1 µs .. ~3 hours


class Histogram:
    """Durations in seconds; see the module docstring."""

    __slots__ = ("counts", "n", "max", "total")

    def __init__(self) -> None:
        self.counts = [0] * _BUCKETS
        self.n = 0
        self.max = 0.0
        self.total = 0.0

    def add(self, seconds: float) -> None:
        micros = seconds * 1e6
        index = int(math.log(micros) * _K) + 1 if micros >= 1.0 else 0
        self.counts[index if index < _BUCKETS else _BUCKETS - 1] += 1
        self.n += 1
        self.total += seconds
        if seconds > self.max:
            self.max = seconds

    def merge(self, other: Histogram) -> None:
        counts = self.counts
        for index, count in enumerate(other.counts):
            if count:
                counts[index] += count
        self.n += other.n
        self.total += other.total
        self.max = max(self.max, other.max)

    def percentile(self, q: float) -> float | None:
        """The ``q``-quantile (0..1) in seconds, or None without samples."""
        if self.n == 0:
            return None
        rank = max(1, math.ceil(q * self.n))
        seen = 0
        for index, count in enumerate(self.counts):
            seen += count
            if seen >= rank:
                if index == 0:
                    return min(0.5e-6, self.max)
                return min(math.exp((index - 0.5) / _K) * 1e-6, self.max)
        return self.max

    def summary_ms(self) -> dict[str, float | int | None]:
        """``n``, ``p50``, ``p95``, ``p99`` and ``max`` in milliseconds."""
        return _summary(self.n, [self.percentile(q) for q in (0.5, 0.95, 0.99)], self.max)


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """The ``q``-quantile (0..1) of already sorted values, nearest rank."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


def summary_ms(values: Iterable[float]) -> dict[str, float | int | None]:
    """The :meth:`Histogram.summary_ms` figures of exact samples (seconds)."""
    ordered = sorted(values)
    top = ordered[-1] if ordered else 0.0
    return _summary(len(ordered), [percentile(ordered, q) for q in (0.5, 0.95, 0.99)], top)


def _summary(n: int, quantiles: list[float | None], top: float) -> dict[str, float | int | None]:
    def ms(value: float | None) -> float | None:
        return None if value is None else round(value * 1e3, 3)

    p50, p95, p99 = quantiles
    return {"n": n, "p50": ms(p50), "p95": ms(p95), "p99": ms(p99), "max": ms(top if n else None)}
