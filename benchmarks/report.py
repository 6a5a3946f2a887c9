"""The table: medians over repeats, ratios, and the issue's targets."""

from __future__ import annotations

import statistics
from typing import Any

from .common import SERVERS
from .procs import OTHER_CPU_WARN_DEFAULT

# (workload, metric, label, format, ratio wanted?)
ROWS: list[tuple[str, str, str, str, bool]] = [
    ("saturation", "delivered_per_s", "saturation: delivered events/s (1x1000)", "{:,.0f}", True),
    ("saturation", "published_per_s", "saturation: published events/s", "{:,.0f}", True),
    ("saturation", "sampled_latency_p50_ms", "saturation: sampled latency p50 ms", "{:.1f}", False),
    ("llm", "p50_ms", "llm: latency p50 ms (100x10 @50/s)", "{:.2f}", True),
    ("llm", "p99_ms", "llm: latency p99 ms", "{:.2f}", True),
    ("llm", "lost", "llm: events lost/late + dup", "{:.0f}", False),
    ("llm", "publisher_late_ms", "llm: publisher's worst lateness ms", "{:.1f}", False),
    ("wide", "lost", "wide: events lost/late + dup (1x10000 @20/s)", "{:.0f}", False),
    ("wide", "spread_p50_ms", "wide: first-to-last receipt p50 ms", "{:.1f}", True),
    ("wide", "spread_p99_ms", "wide: first-to-last receipt p99 ms", "{:.1f}", True),
    ("wide", "p99_ms", "wide: latency p99 ms", "{:.1f}", True),
    ("wide", "publisher_late_ms", "wide: publisher's worst lateness ms", "{:.0f}", False),
    ("idle", "per_sub_kib", "idle: RSS per subscriber KiB (10000)", "{:.2f}", True),
    ("slow", "p99_base_ms", "slow: healthy p99 ms, no stalls", "{:.2f}", True),
    ("slow", "p99_stalled_ms", "slow: healthy p99 ms, 2% stalled", "{:.2f}", True),
    ("slow", "p99_ratio", "slow: p99 stalled / no stalls", "{:.2f}", False),
    ("slow", "lost_healthy", "slow: healthy events lost/late + dup", "{:.0f}", False),
    ("slow", "rss_growth_base_mib", "slow: server RSS growth MiB, no stalls", "{:.1f}", False),
    ("slow", "rss_growth_stalled_mib", "slow: server RSS growth MiB, 2% stalled", "{:.1f}", False),
    ("slow", "rss_extra_from_stalls_mib", "slow: extra RSS due to stalls MiB", "{:.1f}", False),
    ("slow", "held_in_server_kib", "slow: bytes held in transports at end KiB", "{:.0f}", False),
    ("resume", "ok_subscribers", "resume: subscribers with exact sequence", "{:.0f}", False),
    ("resume", "reconnects", "resume: reconnections", "{:.0f}", False),
]
OTHER_CPU_WARN = OTHER_CPU_WARN_DEFAULT  # cores used by foreign processes during a run


def _lost(m: dict[str, Any]) -> float | None:
    if m.get("lost") is None:
        return None
    return float(m["lost"]) + float(m.get("dups") or 0)


def medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    keys = {
        k
        for r in runs
        for k, v in r.items()
        if isinstance(v, int | float) and not isinstance(v, bool)
    }
    for k in sorted(keys):
        vals = [r[k] for r in runs if isinstance(r.get(k), int | float)]
        out[k] = statistics.median(vals) if vals else None
    if "lost" in out:
        out["lost"] = statistics.median(_lost(r) or 0.0 for r in runs)
    out["other_cpu_max"] = max((r.get("other_cpu") or 0.0 for r in runs), default=0.0)
    return out


def verdicts(med: dict[str, dict[str, dict[str, Any]]]) -> list[tuple[str, str, str]]:
    """(target, measured, verdict) for each target of the issue that has figures."""
    out: list[tuple[str, str, str]] = []

    def get(w: str, s: str, k: str) -> Any:
        return med.get(w, {}).get(s, {}).get(k)

    def yes(ok: bool) -> str:
        return "MET" if ok else "MISSED"

    b, n, r = (get("saturation", s, "delivered_per_s") for s in SERVERS)
    if b and n:
        out.append(("saturation >= 10x naive", f"{b / n:.1f}x", yes(b / n >= 10)))
    if b and r:
        out.append(("saturation >= 0.7x raw", f"{b / r:.2f}x", yes(b / r >= 0.7)))
    p99, lost = get("llm", "broker", "p99_ms"), get("llm", "broker", "lost")
    if p99 is not None:
        out.append(("llm p99 < 10 ms", f"{p99:.2f} ms", yes(p99 < 10)))
    if lost is not None:
        out.append(("llm no event lost", f"{lost:.0f} lost/dup", yes(lost == 0)))
    lost = get("wide", "broker", "lost")
    if lost is not None:
        out.append(("wide holds (no loss)", f"{lost:.0f} lost/dup", yes(lost == 0)))
    kib = get("idle", "broker", "per_sub_kib")
    if kib is not None:
        out.append(("idle < 8 KiB per subscriber", f"{kib:.2f} KiB", yes(kib < 8)))
    ratio = get("slow", "broker", "p99_ratio")
    if ratio is not None:
        out.append(("slow: healthy p99 within 1.2x", f"{ratio:.2f}x", yes(ratio <= 1.2)))
    ok, subs = get("resume", "broker", "ok_subscribers"), get("resume", "broker", "subscribers")
    if ok is not None and subs:
        out.append(("resume: exact sequence", f"{ok:.0f}/{subs:.0f}", yes(ok == subs)))
    return out


def _fmt(v: Any, fmt: str) -> str:
    if v is None:
        return "-"
    try:
        return fmt.format(v)
    except (ValueError, TypeError):
        return str(v)


def render(med: dict[str, dict[str, dict[str, Any]]], servers: tuple[str, ...]) -> str:
    head = ["metric", *servers, "broker/naive", "broker/raw"]
    rows: list[list[str]] = []
    for w, key, label, fmt, ratio in ROWS:
        if w not in med:
            continue
        vals = [med[w].get(s, {}).get(key) for s in servers]
        by = dict(zip(servers, vals, strict=True))
        cells = [label, *(_fmt(v, fmt) for v in vals)]
        for other in ("naive", "raw"):
            b, o = by.get("broker"), by.get(other)
            cells.append(f"{b / o:.2f}x" if ratio and b is not None and o else "")
        rows.append(cells)
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)
    ]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.ljust(widths[0]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(cells)
        )

    out = [line(head), line(["-" * w for w in widths])]
    out += [line(r) for r in rows]
    noisy = sorted(
        {
            f"{w} ({s}: {m['other_cpu_max']:.2f})"
            for w, by in med.items()
            for s, m in by.items()
            if (m.get("other_cpu_max") or 0) > OTHER_CPU_WARN
        }
    )
    if noisy:
        out.append("")
        out.append("! other processes used CPU (cores) during: " + ", ".join(noisy))
        out.append("  figures of those runs are disturbed; rerun on a quiet machine")
    ver = verdicts(med)
    if ver:
        out.append("")
        tw = max(len(t) for t, _, _ in ver)
        mw = max(len(m) for _, m, _ in ver)
        out.append("targets (broker)")
        out += [f"  {t.ljust(tw)}  {m.rjust(mw)}  {v}" for t, m, v in ver]
    return "\n".join(out)
