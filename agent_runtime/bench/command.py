"""The ``agentstream bench`` subcommand: its options and its main function."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT_MODEL", "add_bench_parser", "run_bench"]

DEFAULT_MODEL = "simulated:tokens=100,rate=50"

EXIT_SLO = 1
EXIT_SETUP = 2
EXIT_INCORRECT = 3

_EPILOG = """\
Without --url, a hub is started in a child process (pinned to core 0, this process to
core 1) serving the bundled examples, or --agents. Each run is started with
POST /v1/threads/runs and followed by its subscribers over raw SSE connections; every
subscriber's text is checked against the messages stored for the run.

Exit status: 0 all well; 1 --slo-p99-ms missed; 2 the bench could not run;
3 some subscriber did not receive exactly the published events and text.
"""


def _fraction(value: str) -> float:
    number = float(value)
    if not 0.0 <= number <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction between 0 and 1, got {value}")
    return number


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {value}")
    return number


def _seconds(value: str) -> float:
    number = float(value)
    if not number >= 0:
        raise argparse.ArgumentTypeError(f"expected seconds (0 or more), got {value}")
    return number


def add_bench_parser(commands: Any) -> argparse.ArgumentParser:
    """Add ``bench`` to the subcommands of ``agentstream`` (an argparse subparsers object)."""
    bench = commands.add_parser(
        "bench",
        help="load-test a hub: runs x subscribers, latency, throughput, exactness",
        description="Load-test an agentstream hub and check every subscriber got every event.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    bench.add_argument("--url", help="the hub, e.g. http://127.0.0.1:8080 (default: start one)")
    bench.add_argument("--agent", default="streaming-example", help="agent to run")
    bench.add_argument(
        "--agents",
        action="append",
        type=Path,
        default=[],
        metavar="DIR",
        help="agent folders for the hub started without --url (repeatable)",
    )
    bench.add_argument("--runs", type=_positive_int, default=10, help="concurrent runs (10)")
    bench.add_argument(
        "--subscribers", type=_positive_int, default=10, help="subscribers per run (10)"
    )
    bench.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"the runs' model field (default {DEFAULT_MODEL}; '' for the agent's own)",
    )
    bench.add_argument(
        "--duration", type=_seconds, default=10.0, help="seconds to keep starting runs (10)"
    )
    bench.add_argument("--ramp", type=_seconds, default=0.0, help="seconds to spread starts over")
    bench.add_argument(
        "--late-joiners",
        type=_fraction,
        default=0.0,
        metavar="P",
        help="fraction of subscribers that join part-way through their run",
    )
    bench.add_argument(
        "--reconnects",
        type=_fraction,
        default=0.0,
        metavar="P",
        help="fraction of subscribers that drop part-way and resume with Last-Event-ID",
    )
    bench.add_argument(
        "--drain",
        type=_seconds,
        default=30.0,
        help="seconds to await live runs after --duration before cancelling them (30)",
    )
    bench.add_argument(
        "--slo-p99-ms", type=float, default=None, metavar="X", help="exit 1 if p99 latency > X"
    )
    bench.add_argument("--json", action="store_true", help="print the summary as JSON")
    bench.add_argument(
        "--plot", type=Path, metavar="FILE.png", help="draw latency/throughput (needs matplotlib)"
    )
    bench.add_argument("--seed", type=int, default=1, help="seed of the random choices (1)")
    bench.add_argument(
        "--no-pin", action="store_true", help="do not pin the hub and the bench to cores"
    )
    bench.add_argument(
        "--hub-python",
        metavar="PATH",
        help="interpreter to start the hub with (default: this one), e.g. another "
        "checkout's venv, to compare two hubs under one bench",
    )
    return bench  # type: ignore[no-any-return]


def run_bench(args: argparse.Namespace) -> int:
    """Run ``agentstream bench`` with parsed ``args``; the exit status."""
    from .report import check_plotting
    from .runner import BenchError

    if args.plot is not None:
        problem = check_plotting()
        if problem is not None:
            print(f"agentstream bench: {problem}", file=sys.stderr)
            return EXIT_SETUP
    from .hubproc import HubStartError

    try:
        return asyncio.run(_bench(args))
    except (BenchError, HubStartError) as exc:
        print(f"agentstream bench: {exc}", file=sys.stderr)
        return EXIT_SETUP


async def _bench(args: argparse.Namespace) -> int:
    from .hubproc import HubProcess, pin, raise_nofile
    from .report import Progress, plot, text_report
    from .runner import Bench, BenchOptions

    raise_nofile()
    hub: HubProcess | None = None
    if args.url is None:
        hub = HubProcess(agents=args.agents, cpu=None if args.no_pin else 0, python=args.hub_python)
        url = await hub.start()
        pinned = hub.pinned and not args.no_pin and pin(1)
        where = "hub pinned to core 0, bench to core 1" if pinned else "not pinned"
        hub_text = f"started for this bench: pid {hub.pid} at {url} ({where})"
    else:
        url = args.url
        hub_text = f"{url} (external)"
    progress = Progress(sys.stdout)
    options = BenchOptions(
        url=url,
        agent=args.agent,
        runs=args.runs,
        subscribers=args.subscribers,
        model=args.model or None,
        duration=args.duration,
        ramp=args.ramp,
        late_joiners=args.late_joiners,
        reconnects=args.reconnects,
        drain=args.drain,
        seed=args.seed,
        hub_pid=None if hub is None else hub.pid,
        progress=progress,
    )
    try:
        summary = await Bench(options).run()
    finally:
        progress.clear()
        if hub is not None:
            await hub.aclose()
    summary["hub"] = hub_text
    slo_met = True
    if args.slo_p99_ms is not None:
        p99 = summary["latency_ms"]["p99"]
        slo_met = p99 is not None and p99 <= args.slo_p99_ms
        summary["slo"] = {"p99_ms_max": args.slo_p99_ms, "p99_ms": p99, "met": slo_met}
    summary["ok"] = bool(summary["correct"] and slo_met)
    if args.plot is not None:
        plot(summary, args.plot)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(text_report(summary, hub=hub_text, slo_p99_ms=args.slo_p99_ms))
        if args.plot is not None:
            print(f"plot            {args.plot}")
    if not summary["correct"]:
        return EXIT_INCORRECT
    return 0 if slo_met else EXIT_SLO
