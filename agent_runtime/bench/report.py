"""How ``agentstream bench`` shows its figures: the progress line, the report, the plot.

The progress line is written only to a terminal (one line, rewritten in place each
second). The report is plain text; ``--json`` prints the summary instead. ``--plot`` needs
matplotlib (the ``bench`` extra), imported only when asked for.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, TextIO

__all__ = ["Progress", "check_plotting", "plot", "text_report"]


class Progress:
    """One status line on a terminal, rewritten in place; does nothing elsewhere."""

    def __init__(self, out: TextIO = sys.stdout) -> None:
        self.out = out
        self.enabled = out.isatty()
        self._shown = False

    def __call__(self, state: dict[str, Any]) -> None:
        if not self.enabled:
            return
        p99 = state["p99_ms"]
        line = (
            f"[{state['t']:6.1f}s] runs {state['live_runs']} live, {state['runs_done']} done"
            f" | {state['connected']} subscribers | {state['events_per_s']:,.0f} events/s"
            f" | p99 {'-' if p99 is None else f'{p99:.2f} ms'}"
            f" | errors {state['errors']} | cpu {state['cpu']:.0%}"
            + (" | draining" if state["stopping"] else "")
        )
        self.out.write("\r" + line + "\x1b[K")
        self.out.flush()
        self._shown = True

    def clear(self) -> None:
        if self._shown:
            self.out.write("\r\x1b[K")
            self.out.flush()
            self._shown = False


def _ms(summary: dict[str, Any]) -> str:
    if not summary.get("n"):
        return "no samples"
    return (
        f"p50 {summary['p50']:.2f} ms  p95 {summary['p95']:.2f} ms  "
        f"p99 {summary['p99']:.2f} ms  max {summary['max']:.2f} ms  (n={summary['n']:,})"
    )


def _breakdown_lines(breakdown: dict[str, Any] | None) -> list[str]:
    """The time to first delta's phases: p50 and p99 of each, and where the slowest
    runs' time went (their mean per phase)."""
    if not breakdown or not breakdown.get("runs"):
        return []
    phases, tail = breakdown["phases_ms"], breakdown["slowest_runs"]
    lines = [
        f"  breakdown     {'phase':<12} {'p50 ms':>9} {'p99 ms':>9} "
        f"{'slowest ' + str(tail['runs']) + ' runs, mean ms':>28}"
    ]

    def cell(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    for name, figures in phases.items():
        lines.append(
            f"                {name:<12} {cell(figures['p50']):>9} {cell(figures['p99']):>9} "
            f"{cell(tail['mean_ms'].get(name)):>28}"
        )
    answered, connected = breakdown["post_answered_ms"], breakdown["first_subscriber_connected_ms"]
    if answered.get("n"):
        lines.append(f"                POST answered {_ms(answered)}")
    if connected.get("n"):
        lines.append(f"                1st connected {_ms(connected)}")
    if breakdown["hub_reported"] < breakdown["runs"]:
        lines.append(
            f"                (the hub reported its stamps for {breakdown['hub_reported']} of "
            f"{breakdown['runs']} runs: hub-side phases are merged into the next one known)"
        )
    return lines


def _requested_note(config: dict[str, Any]) -> str:
    """Says so when the hub ran another model than the one asked for (a forced model)."""
    requested = config.get("model_requested")
    if requested and config.get("model") and config["model"] != requested:
        return f" (asked for {requested}; the hub forces its own)"
    return ""


def text_report(summary: dict[str, Any], *, hub: str, slo_p99_ms: float | None) -> str:
    """The human-readable report of a bench summary."""
    config, runs, subs = summary["config"], summary["runs"], summary["subscribers"]
    events, errors = summary["events"], summary["errors"]
    gen, hub_cpu = summary["load_generator"], summary["hub_process"]
    statuses = ", ".join(f"{count} {status}" for status, count in runs["by_status"].items())
    lines = [
        f"agentstream bench: {config['runs']} concurrent runs x {config['subscribers']} "
        f"subscribers of {config['agent']} on {config['model'] or 'the agent model'}"
        + _requested_note(config),
        f"hub             {hub}",
        f"time            {config['duration_s']:g} s of load (ramp {config['ramp_s']:g} s), "
        f"{summary['elapsed_s']:.1f} s in all (runs live at the end were awaited)",
        f"runs            {runs['started']} started: {statuses or 'none'}"
        + (
            f" (the hub counted {runs['hub_runs_started']})"
            if runs["hub_runs_started"] is not None
            else ""
        ),
        f"subscribers     {subs['total']:,} ({subs['late_joiners']:,} joined late, "
        f"{subs['dropping']:,} dropped mid-run; {subs['reconnects']:,} reconnections)",
        f"events          {events['published']:,} published; {events['expected']:,} expected "
        f"deliveries, {events['delivered']:,} delivered"
        + (
            f" + {events['covered_by_snapshots']:,} covered by snapshots"
            if events["covered_by_snapshots"]
            else ""
        ),
        f"throughput      {events['per_s'] or 0:,.0f} events/s delivered over the whole bench"
        + (
            f"; {events['per_s_steady']:,.0f} events/s while all runs were live"
            if events["per_s_steady"] is not None
            else ""
        )
        + f"; {events['bytes'] / max(summary['elapsed_s'], 1e-9) / 1e6:.1f} MB/s",
        f"latency         {_ms(summary['latency_ms'])}",
        f"spread          {_ms(summary['spread_ms'])}",
        f"first delta     {_ms(summary['time_to_first_delta_ms'])}",
        *_breakdown_lines(summary["time_to_first_delta_ms"].get("breakdown")),
        f"errors          connection {errors['connection']}, run creation {errors['run_create']}"
        f", gaps {errors['gaps']}, duplicates {errors['duplicates']}, text mismatches "
        f"{errors['text_mismatches']}, unfinished {errors['unfinished_subscribers']}"
        f", corrupt frames {errors['corrupt_frames']}",
    ]
    if errors["protocol_gaps_recovered"]:
        lines.append(
            f"                {errors['protocol_gaps_recovered']} thread.stream.gap recovered "
            "by the protocol's snapshot"
        )
    lines.extend(f"  e.g. {example}" for example in errors["examples"][:5])
    lines.append(
        f"load generator  cpu {gen['cpu_avg']:.0%} of a core on average, {gen['cpu_max']:.0%} "
        "at most"
        + (
            "  SATURATED: the figures show the load generator's limit, not the hub's"
            if gen["saturated"]
            else ""
        )
    )
    lag = gen.get("loop_lag_ms") or {}
    if lag.get("n"):
        lines.append(f"  its loop lag  {_ms(lag)}")
    if gen.get("warning"):
        lines.append(f"  WARNING: {gen['warning']}")
    if hub_cpu is not None:
        lines.append(
            f"hub process     cpu {hub_cpu['cpu_avg']:.0%} of a core on average, "
            f"{hub_cpu['cpu_max']:.0%} at most"
        )
    others = summary["other_processes"]
    if others["cpu_avg"] is not None:
        lines.append(
            f"other processes {others['cpu_avg']:.2f} cores busy on average"
            + (
                f"; some task waited for a CPU {others['cpu_pressure']:.0%} of the time"
                if others.get("cpu_pressure") is not None
                else ""
            )
            + (
                ": the machine was shared, so the figures are disturbed"
                if others["disturbed"]
                else ""
            )
        )
    lines.append("")
    lines.append("latency: " + summary["latency_ms"]["definition"])
    lines.append("spread: " + summary["spread_ms"]["definition"])
    lines.append("first delta: " + summary["time_to_first_delta_ms"]["definition"])
    lines.append("")
    verdict = (
        "every subscriber received exactly the stored text"
        if summary["correct"]
        else ("FAILED: some subscribers did not receive exactly the published events and text")
    )
    lines.append(f"correctness     {verdict}")
    slo = summary.get("slo")
    if slo_p99_ms is not None and slo is not None:
        lines.append(
            f"SLO             p99 <= {slo_p99_ms:g} ms: "
            + ("met" if slo["met"] else f"MISSED (p99 {slo['p99_ms']} ms)")
        )
    return "\n".join(lines)


def check_plotting() -> str | None:
    """None if ``--plot`` can work, else the message to show."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return (
            "--plot needs matplotlib, which agentstream does not install by default: "
            "pip install matplotlib (or pip install 'agentstream[bench]')"
        )
    return None


def plot(summary: dict[str, Any], path: Path) -> None:
    """Latency percentiles, throughput and CPU over time, as a PNG at ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    timeline = summary["timeline"]
    t = [p["t"] for p in timeline]
    figure, (top, middle, bottom) = plt.subplots(3, 1, sharex=True, figsize=(9, 8))
    config = summary["config"]
    figure.suptitle(
        f"agentstream bench: {config['runs']} runs x {config['subscribers']} subscribers, "
        f"{config['model'] or config['agent']}"
    )
    for key, style in (("p50", "-"), ("p95", "--"), ("p99", ":")):
        values = [p["latency_ms"][key] for p in timeline]
        top.plot(t, [float("nan") if v is None else v for v in values], style, label=key)
    top.set_ylabel("latency (ms)")
    top.set_yscale("log")
    top.legend(loc="upper left")
    top.grid(True, alpha=0.3)
    middle.plot(t, [p["events_per_s"] for p in timeline], label="delivered events/s")
    middle.set_ylabel("events/s")
    middle.grid(True, alpha=0.3)
    bottom.plot(t, [100 * p["cpu"] for p in timeline], label="load generator")
    if any(p["hub_cpu"] is not None for p in timeline):
        bottom.plot(t, [100 * (p["hub_cpu"] or 0) for p in timeline], label="hub")
    if any(p["others_cpu"] is not None for p in timeline):
        others = [100 * (p["others_cpu"] or 0) for p in timeline]
        bottom.plot(t, others, ":", label="other processes")
    bottom.set_ylabel("cpu (% of a core)")
    bottom.set_xlabel("seconds")
    bottom.legend(loc="upper left")
    bottom.grid(True, alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
