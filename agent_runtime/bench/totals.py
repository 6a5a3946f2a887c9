"""The counts ``agentstream bench`` keeps over a whole bench, and what the report makes
of them. Plain data; touched only from the bench's one event loop."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["Totals"]


@dataclass
class Totals:
    """What the bench counted over all its runs and subscribers."""

    runs_started: int = 0
    runs_verified: int = 0
    create_errors: int = 0
    by_status: dict[str, int] = field(default_factory=dict)
    published: int = 0
    expected: int = 0
    delivered: int = 0
    covered: int = 0
    duplicates: int = 0
    missing: int = 0
    protocol_gaps: int = 0
    corrupt: int = 0
    mismatches: int = 0
    unfinished: int = 0
    subscribers: int = 0
    late: int = 0
    dropping: int = 0
    reconnects: int = 0
    examples: list[str] = field(default_factory=list)

    def example(self, text: str) -> None:
        if len(self.examples) < 10:
            self.examples.append(text)

    def errors(self, connection: int, connection_examples: list[str]) -> dict[str, Any]:
        """The report's ``errors``: ``connection`` errors (and examples) from the
        subscribers' tally, the rest from here."""
        return {
            "connection": connection,
            "run_create": self.create_errors,
            "gaps": self.missing,
            "duplicates": self.duplicates,
            "text_mismatches": self.mismatches,
            "unfinished_subscribers": self.unfinished,
            "corrupt_frames": self.corrupt,
            "protocol_gaps_recovered": self.protocol_gaps,
            "examples": (self.examples + connection_examples)[:10],
        }

    @property
    def correct(self) -> bool:
        """Every event delivered (or covered by a snapshot) exactly once, every text as
        stored, every run created and finished."""
        return not (
            self.missing
            or self.duplicates
            or self.mismatches
            or self.unfinished
            or self.corrupt
            or self.create_errors
            or self.delivered + self.covered != self.expected
        )
