"""Time to first delta under a burst of run starts: 100 runs starting together against 10.

Runs ``agentstream bench`` (its own hub pinned to core 0, the bench on core 1) with
``--runs 10`` and ``--runs 100``, alternating, ``--repeats`` times each, and prints the
medians side by side: time to first delta p50/p99, the ratio of the two p99s (the
target: 100 runs within 1.5x of 10), where the 100-run p99 goes (the bench's breakdown:
each phase's p99 and the slowest runs' mean per phase), the bench's own loop lag and
whether it called itself the bottleneck, and the CPU other processes used meanwhile.

``--python LABEL=PATH`` (repeatable) runs the same with another tree's hub (its
interpreter: ``agentstream bench --hub-python``), e.g. a checkout of an earlier commit,
alternating with this one: a before/after comparison in one run, on one machine, under
one bench client; ``--own-bench`` runs that tree's own bench client too. A measured
comparison, not a test: nothing asserts a timing.

    .venv/bin/python -m benchmarks.burst                          # 3 repeats, ~2 min
    .venv/bin/python -m benchmarks.burst --python before=../before/.venv/bin/python
    .venv/bin/python -m benchmarks.burst --repeats 5 --json burst.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from typing import Any

TARGET_RATIO = 1.5
"""100-run p99 over 10-run p99, at most (issue 18)."""


def run_bench(
    python: str, runs: int, args: argparse.Namespace, timeout: float = 300.0
) -> dict[str, Any]:
    """One ``agentstream bench --json``, its hub run by ``python``; its summary. The
    bench is this tree's, unless ``--own-bench``: then ``python``'s own (both run from a
    neutral folder, so that each interpreter imports its own checkout)."""
    own = args.own_bench and python != sys.executable
    command = [
        python if own else sys.executable,
        "-m",
        "agent_runtime.cli",
        "bench",
        "--runs",
        str(runs),
        "--subscribers",
        str(args.subscribers),
        "--model",
        args.model,
        "--duration",
        str(args.duration),
        "--json",
    ]
    if not own and python != sys.executable:
        command += ["--hub-python", python]
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=tempfile.gettempdir(),
    )
    if done.returncode not in (0, 1):
        raise RuntimeError(f"{' '.join(command)} exited {done.returncode}: {done.stderr[-2000:]}")
    summary: dict[str, Any] = json.loads(done.stdout)
    return summary


def figures(summary: dict[str, Any]) -> dict[str, Any]:
    """What the comparison keeps of one bench."""
    ttfd = summary["time_to_first_delta_ms"]
    generator = summary.get("load_generator", {})
    lag = generator.get("loop_lag_ms") or {}
    breakdown = ttfd.get("breakdown") or {}
    phases = {
        name: {"p99": values.get("p99"), "slowest": breakdown["slowest_runs"]["mean_ms"].get(name)}
        for name, values in (breakdown.get("phases_ms") or {}).items()
    }
    return {
        "p50": ttfd["p50"],
        "p99": ttfd["p99"],
        "n": ttfd["n"],
        "correct": summary["correct"],
        "bench_lag_p99": lag.get("p99"),
        "bench_bottleneck": generator.get("bottleneck"),
        "bench_cpu": generator.get("cpu_avg"),
        "hub_cpu": (summary.get("hub_process") or {}).get("cpu_avg"),
        "others_cpu": summary.get("other_processes", {}).get("cpu_avg"),
        "cpu_pressure": summary.get("other_processes", {}).get("cpu_pressure"),
        "phases": phases,
    }


def median(values: list[Any]) -> float | None:
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return round(statistics.median(numbers), 2) if numbers else None


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}"
    return str(value)


def report(results: dict[str, dict[int, list[dict[str, Any]]]], args: argparse.Namespace) -> str:
    small, large = args.small, args.large
    labels = list(results)
    rows: list[tuple[str, list[Any]]] = []
    medians: dict[str, dict[str, Any]] = {}
    for label in labels:
        mine = results[label]
        m: dict[str, Any] = {}
        for runs in (small, large):
            for key in (
                "p50",
                "p99",
                "bench_lag_p99",
                "bench_cpu",
                "hub_cpu",
                "others_cpu",
                "cpu_pressure",
            ):
                m[f"{key}@{runs}"] = median([f[key] for f in mine[runs]])
            m[f"bottleneck@{runs}"] = sum(bool(f["bench_bottleneck"]) for f in mine[runs])
            m[f"correct@{runs}"] = all(f["correct"] for f in mine[runs])
        ratios = [
            a["p99"] / b["p99"]
            for a, b in zip(mine[large], mine[small], strict=False)
            if a["p99"] and b["p99"]
        ]
        m["ratio"] = median(ratios)
        m["ratio_of_medians"] = (
            round(m[f"p99@{large}"] / m[f"p99@{small}"], 2)
            if m[f"p99@{large}"] and m[f"p99@{small}"]
            else None
        )
        phase_names = list(mine[large][0]["phases"]) if mine[large] else []
        for name in phase_names:
            m[f"phase_p99:{name}"] = median([f["phases"][name]["p99"] for f in mine[large]])
            m[f"phase_slowest:{name}"] = median([f["phases"][name]["slowest"] for f in mine[large]])
        medians[label] = m
    keys = [
        (f"ttfd p50 ms, {small} runs", f"p50@{small}"),
        (f"ttfd p99 ms, {small} runs", f"p99@{small}"),
        (f"ttfd p50 ms, {large} runs", f"p50@{large}"),
        (f"ttfd p99 ms, {large} runs", f"p99@{large}"),
        (f"p99 ratio {large}/{small} (median of pairs)", "ratio"),
        (f"p99 ratio {large}/{small} (of the medians)", "ratio_of_medians"),
        (f"bench loop lag p99 ms, {small}", f"bench_lag_p99@{small}"),
        (f"bench loop lag p99 ms, {large}", f"bench_lag_p99@{large}"),
        (f"bench called itself bottleneck, {large}", f"bottleneck@{large}"),
        (f"bench cpu, {large}", f"bench_cpu@{large}"),
        (f"hub cpu, {large}", f"hub_cpu@{large}"),
        (f"other processes' cores, {small}", f"others_cpu@{small}"),
        (f"other processes' cores, {large}", f"others_cpu@{large}"),
        (f"machine's CPU pressure, {small}", f"cpu_pressure@{small}"),
        (f"machine's CPU pressure, {large}", f"cpu_pressure@{large}"),
        ("every subscriber exact", f"correct@{large}"),
    ]
    phase_keys = sorted(
        {k for m in medians.values() for k in m if k.startswith("phase_")},
        key=lambda k: (k.split(":")[0], _phase_order(k.split(":")[1])),
    )
    for key in phase_keys:
        kind, name = key.split(":")
        title = "p99" if kind == "phase_p99" else "slowest runs' mean"
        keys.append((f"  {large} runs: {name} {title} ms", key))
    for title, key in keys:
        rows.append((title, [medians[label].get(key) for label in labels]))
    width = max(len(title) for title, _ in rows) + 2
    lines = [
        f"burst: {args.model}, {args.subscribers} subscribers per run, {args.duration:g} s, "
        f"medians of {args.repeats} repeats (alternating)",
        " " * width + "".join(f"{label:>14}" for label in labels),
    ]
    for title, values in rows:
        lines.append(f"{title:<{width}}" + "".join(f"{_cell(v):>14}" for v in values))
    lines.append("")
    for label in labels:
        ratio = medians[label]["ratio"]
        verdict = "MET" if ratio is not None and ratio <= TARGET_RATIO else "MISSED"
        lines.append(
            f"{label}: {large}-run p99 is {_cell(ratio)}x the {small}-run p99 "
            f"(target <= {TARGET_RATIO}x): {verdict}"
        )
    disturbed = [
        label
        for label in labels
        for runs in (small, large)
        if (medians[label][f"others_cpu@{runs}"] or 0) > 0.2
    ]
    if disturbed:
        lines.append(
            "other processes kept more than 0.2 core busy during "
            + ", ".join(sorted(set(disturbed)))
            + ": the figures are disturbed"
        )
    return "\n".join(lines)


def _phase_order(name: str) -> int:
    from agent_runtime.bench.breakdown import PHASES

    names = [phase[0] for phase in PHASES]
    return names.index(name) if name in names else len(names)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--small", type=int, default=10, help="runs of the small burst (10)")
    parser.add_argument("--large", type=int, default=100, help="runs of the large burst (100)")
    parser.add_argument("--subscribers", type=int, default=5)
    parser.add_argument("--model", default="simulated:tokens=100,rate=50")
    parser.add_argument("--duration", type=float, default=6.0)
    parser.add_argument(
        "--python",
        action="append",
        default=[],
        metavar="LABEL=PATH",
        help="also measure with this interpreter (another tree's venv), alternating",
    )
    parser.add_argument(
        "--own-bench",
        action="store_true",
        help="run each --python's own bench (client and hub) instead of this bench's "
        "client against its hub",
    )
    parser.add_argument("--json", metavar="FILE", help="write every bench's figures there")
    args = parser.parse_args(argv)
    pythons = [("this", sys.executable)]
    for item in args.python:
        label, _, path = item.partition("=")
        pythons.append((label, path))
    results: dict[str, dict[int, list[dict[str, Any]]]] = {
        label: {args.small: [], args.large: []} for label, _ in pythons
    }
    for repeat in range(args.repeats):
        for runs in (args.small, args.large):
            for label, python in pythons:
                summary = run_bench(python, runs, args)
                got = figures(summary)
                results[label][runs].append(got)
                print(
                    f"[{repeat + 1}/{args.repeats}] {label:>8} {runs:>4} runs: ttfd p50 "
                    f"{_cell(got['p50'])} ms, p99 {_cell(got['p99'])} ms, bench lag p99 "
                    f"{_cell(got['bench_lag_p99'])} ms, others {_cell(got['others_cpu'])} cores",
                    file=sys.stderr,
                    flush=True,
                )
    print(report(results, args))
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"settings": vars(args), "results": results}, out, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
