"""``agentstream bench``: a load generator and exactness check for any agentstream hub.

Modules: :mod:`.command` (options, main), :mod:`.runner` (runs, subscribers,
verification, the summary), :mod:`.sse_client` (raw asyncio SSE subscribers),
:mod:`.stats` (histograms), :mod:`.hubproc` (a hub in a pinned child process, CPU
meters), :mod:`.report` (progress line, text report, plot). Importing this package is
cheap: the CLI imports it for every command.
"""

from __future__ import annotations

from .command import add_bench_parser, run_bench

__all__ = ["add_bench_parser", "run_bench"]
