"""Fan-out benchmark: the broker's SSE handler, a naive aiohttp-sse server and a raw limit.

``python -m benchmarks.fanout [--quick] [--only saturation,llm,...] [--repeats N] [--json FILE]``

Every workload runs against each server in turn, in fresh processes: the server pinned to
core 0, the load generator (``benchmarks.load``) pinned to core 1. Figures are medians over
the repeats; the table also gives the ratios broker/naive and broker/raw and whether the
broker meets its target. Measured comparisons only: nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from .common import SERVERS, pin, raise_nofile
from .procs import Pair, connect_subs, log, wait_quiet, with_procs
from .report import medians, render, verdicts

WORKLOADS = ("saturation", "llm", "wide", "idle", "slow", "resume")

# Durations in seconds. "quick" must stay well under two minutes for everything.
PROFILES: dict[str, dict[str, Any]] = {
    "quick": {
        "repeats": 1,
        "saturation": {"subs": 1000, "batch": 10, "size": 200, "warm": 0.5, "measure": 2.0},
        "llm": {
            "streams": 100,
            "subs": 10,
            "rate": 50,
            "size": 200,
            "warm": 0.5,
            "measure": 2.5,
            "deadline": 8.0,
        },
        "wide": {
            "subs": 10_000,
            "rate": 20,
            "size": 200,
            "warm": 0.5,
            "measure": 2.0,
            "deadline": 8.0,
        },
        "idle": {"warm_subs": 100, "settle": 0.5},
        "slow": {
            "streams": 100,
            "subs": 10,
            "rate": 50,
            "size": 200,
            "stall_every": 50,
            "sndbuf": 8 * 1024,
            "rcvbuf": 4096,
            "warm": 0.5,
            "measure": 2.0,
            "deadline": 8.0,
        },
        "resume": {
            "streams": 10,
            "subs": 20,
            "rate": 100,
            "size": 200,
            "duration": 2.0,
            "disconnects": 2,
            "delay": [0.01, 0.2],
            "deadline": 8.0,
        },
    },
    "full": {
        "repeats": 3,
        "saturation": {"subs": 1000, "batch": 10, "size": 200, "warm": 1.0, "measure": 4.0},
        "llm": {
            "streams": 100,
            "subs": 10,
            "rate": 50,
            "size": 200,
            "warm": 1.0,
            "measure": 6.0,
            "deadline": 20.0,
        },
        "wide": {
            "subs": 10_000,
            "rate": 20,
            "size": 200,
            "warm": 1.0,
            "measure": 5.0,
            "deadline": 20.0,
        },
        "idle": {"warm_subs": 100, "settle": 1.0},
        "slow": {
            "streams": 100,
            "subs": 10,
            "rate": 50,
            "size": 200,
            "stall_every": 50,
            "sndbuf": 8 * 1024,
            "rcvbuf": 4096,
            "warm": 1.0,
            "measure": 8.0,
            "deadline": 20.0,
        },
        "resume": {
            "streams": 10,
            "subs": 20,
            "rate": 100,
            "size": 200,
            "duration": 5.0,
            "disconnects": 3,
            "delay": [0.01, 0.2],
            "deadline": 20.0,
        },
    },
}
"""Workload shapes. ``slow`` is the LLM shape with every 50th subscriber (2%) not reading;
server send buffers are capped (``sndbuf``, all three servers, both runs of the pair) and the
stalled clients' receive buffers shrunk (``rcvbuf``) so that a stall reaches the server's own
buffers within seconds instead of filling ~4 MB of loopback kernel buffers first.
``deadline``: seconds allowed, once publishing stops, for every event to reach every reading
subscriber; what has not arrived by then counts as lost (late)."""


# --------------------------------------------------------------------------------------
# workloads: each returns flat metrics for one server and one repeat


def w_saturation(p: Pair, c: dict[str, Any]) -> dict[str, Any]:
    p.server.ctl.call(op="setup", keys=["s0"])
    con = connect_subs(p, [["s0", c["subs"]]], mode="count", sample_reads=64)
    p.server.ctl.send(
        op="saturate", key="s0", duration=c["warm"] + c["measure"], batch=c["batch"], size=c["size"]
    )
    time.sleep(c["warm"])
    p.load.call(op="mark")
    time.sleep(c["measure"])
    snap = p.load.call(op="snap")
    rss = p.server.rss_kib()
    pub = p.server.ctl.recv()
    fin = p.load.call(op="finish", expected={}, timeout=0)
    return {
        "delivered_per_s": snap["rate"],
        "published_per_s": pub["published"] / pub["secs"],
        "sampled_latency_p50_ms": fin["latency_ms"]["p50"],
        "server_rss_mib": rss / 1024,
        "connected": con["connected"],
    }


def _paced_run(
    p: Pair,
    c: dict[str, Any],
    *,
    stall_every: int = 0,
    sndbuf: int | None = None,
    rcvbuf: int = 0,
) -> dict[str, Any]:
    keys = [f"s{i}" for i in range(c.get("streams", 1))]
    p.server.ctl.call(op="setup", keys=keys, sndbuf=sndbuf)
    con = connect_subs(
        p,
        [[k, c["subs"]] for k in keys],
        mode="parse",
        sample_every=1,
        stall_every=stall_every,
        stall_rcvbuf=rcvbuf,
    )
    return _paced_publish(p, c, keys, con)


def _paced_publish(
    p: Pair, c: dict[str, Any], keys: list[str], con: dict[str, Any]
) -> dict[str, Any]:
    """Publish on ``keys`` at ``c["rate"]`` to the connected subscribers; collect figures."""
    rss0 = p.server.rss_kib()
    p.server.ctl.send(
        op="paced",
        keys=keys,
        rate=c["rate"],
        duration=c["warm"] + c["measure"],
        size=c["size"],
        close=False,
    )
    time.sleep(c["warm"])
    p.load.call(op="mark")
    pub = p.server.ctl.recv()
    rss1 = p.server.rss_kib()
    stats = p.server.ctl.call(op="stats")
    fin = p.load.call(op="finish", expected=pub["published"], timeout=c["deadline"])
    published = sum(pub["published"].values())
    return {
        "p50_ms": fin["latency_ms"]["p50"],
        "p99_ms": fin["latency_ms"]["p99"],
        "max_ms": fin["latency_ms"]["max"],
        "lost": fin["missing"],
        "dups": fin["dups"],
        "ok_subscribers": fin["ok_subscribers"],
        "subscribers": fin["subscribers"],
        "published": published,
        "publisher_late_ms": pub["late_ms"],
        "spread_p50_ms": fin["spread_ms"]["p50"],
        "spread_p99_ms": fin["spread_ms"]["p99"],
        "spread_max_ms": fin["spread_ms"]["max"],
        "connect_s": con["secs"],
        "rss_growth_mib": (rss1 - rss0) / 1024,
        "server_stats": stats,
        "stalled": con["stalled"],
    }


def w_llm(p: Pair, c: dict[str, Any]) -> dict[str, Any]:
    r = _paced_run(p, c)
    return {
        k: r[k]
        for k in (
            "p50_ms",
            "p99_ms",
            "max_ms",
            "lost",
            "dups",
            "ok_subscribers",
            "subscribers",
            "publisher_late_ms",
        )
    }


def w_wide_idle(p: Pair, c: dict[str, Any], idle: dict[str, Any], publish: bool) -> dict[str, Any]:
    """One stream, ``c["subs"]`` subscribers: the idle footprint of connecting them (after
    ``warm_subs`` of them, which absorb one-off costs), then, with ``publish``, the wide
    workload on the same connections."""
    p.server.ctl.call(op="setup", keys=["s0"])
    kw: dict[str, Any] = {"mode": "parse", "sample_every": 1, "spread": True}
    warm = idle["warm_subs"]
    connect_subs(p, [["s0", warm]], **kw)
    time.sleep(idle["settle"])
    before = p.server.rss_kib()
    con = connect_subs(p, [["s0", c["subs"] - warm]], **kw)
    time.sleep(idle["settle"])
    after = p.server.rss_kib()
    out: dict[str, Any] = {
        "idle": {
            "per_sub_kib": (after - before) / (c["subs"] - warm),
            "rss_before_mib": before / 1024,
            "rss_after_mib": after / 1024,
            "connect_s": con["secs"],
            "connected": con["connected"] + warm,
        }
    }
    if publish:
        r = _paced_publish(p, c, ["s0"], con)
        keep = (
            "lost",
            "dups",
            "ok_subscribers",
            "subscribers",
            "p50_ms",
            "p99_ms",
            "spread_p50_ms",
            "spread_p99_ms",
            "spread_max_ms",
            "publisher_late_ms",
        )
        out["wide"] = {k: r[k] for k in keep}
        out["wide"]["connect_s"] = con["secs"]
    return out


def run_slow(kind: str, c: dict[str, Any], cpus: tuple[int, int], rep: int) -> dict[str, Any]:
    """The same LLM-shaped run twice in fresh processes: without and with stalled readers.

    The order alternates with the repeat, so that a machine getting busier or quieter over
    a pair does not favour one side."""
    kw = {"sndbuf": c["sndbuf"], "rcvbuf": c["rcvbuf"]}

    def base() -> dict[str, Any]:
        return with_procs(kind, lambda p: _paced_run(p, c, **kw), cpus)

    def stalls() -> dict[str, Any]:
        return with_procs(
            kind, lambda p: _paced_run(p, c, stall_every=c["stall_every"], **kw), cpus
        )

    if rep % 2 == 0:
        base_r, stalled = base(), stalls()
    else:
        stalled, base_r = stalls(), base()
    ratio = None
    if base_r["p99_ms"] and stalled["p99_ms"]:
        ratio = stalled["p99_ms"] / base_r["p99_ms"]
    return {
        "p99_base_ms": base_r["p99_ms"],
        "p99_stalled_ms": stalled["p99_ms"],
        "p99_ratio": ratio,
        "lost_healthy": stalled["lost"] + stalled["dups"],
        "rss_growth_base_mib": base_r["rss_growth_mib"],
        "rss_growth_stalled_mib": stalled["rss_growth_mib"],
        "rss_extra_from_stalls_mib": stalled["rss_growth_mib"] - base_r["rss_growth_mib"],
        "stalled": stalled["stalled"],
        "held_in_server_kib": stalled["server_stats"].get("transport_bytes", 0) / 1024,
        "server_stats_stalled": stalled["server_stats"],
        "other_cpu": max(base_r["other_cpu"], stalled["other_cpu"]),
    }


def w_resume(p: Pair, c: dict[str, Any]) -> dict[str, Any]:
    keys = [f"s{i}" for i in range(c["streams"])]
    p.server.ctl.call(op="setup", keys=keys)
    connect_subs(p, [[k, c["subs"]] for k in keys], mode="parse")
    p.load.call(op="mark")
    p.load.call(op="chaos", disconnects=c["disconnects"], duration=c["duration"], delay=c["delay"])
    pub = p.server.ctl.call(
        op="paced", keys=keys, rate=c["rate"], duration=c["duration"], size=c["size"], close=True
    )
    fin = p.load.call(op="finish", expected=pub["published"], timeout=c["deadline"])
    return {
        "ok_subscribers": fin["ok_subscribers"],
        "subscribers": fin["subscribers"],
        "lost": fin["missing"],
        "dups": fin["dups"],
        "reconnects": fin["reconnects"],
        "published": sum(pub["published"].values()),
    }


def _job(p: Pair, name: str, c: dict[str, Any]) -> dict[str, Any]:
    return RUNNERS[name](p, c)


def _wide_idle_job(p: Pair, c: dict[str, Any], idle: dict[str, Any], pb: bool) -> dict[str, Any]:
    return w_wide_idle(p, c, idle, pb)


RUNNERS: dict[str, Callable[[Pair, dict[str, Any]], dict[str, Any]]] = {
    "saturation": w_saturation,
    "llm": w_llm,
    "resume": w_resume,
}


# --------------------------------------------------------------------------------------
# main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="short durations, one repeat (< 2 min)")
    ap.add_argument("--only", default="", help=f"comma-separated subset of {','.join(WORKLOADS)}")
    ap.add_argument(
        "--servers", default=",".join(SERVERS), help="comma-separated subset of servers"
    )
    ap.add_argument("--repeats", type=int, default=None, help="repeats per workload and server")
    ap.add_argument("--json", metavar="FILE", help="also write every figure to FILE as JSON")
    ap.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECS",
        help="before each run, wait up to SECS for other processes to leave the CPUs alone",
    )
    ap.add_argument("--server-cpu", type=int, default=0)
    ap.add_argument("--load-cpu", type=int, default=1)
    args = ap.parse_args(argv)

    profile_name = "quick" if args.quick else "full"
    profile = PROFILES[profile_name]
    repeats = args.repeats or profile["repeats"]
    only = [w.strip() for w in args.only.split(",") if w.strip()] or list(WORKLOADS)
    for w in only:
        if w not in WORKLOADS:
            ap.error(f"unknown workload {w!r}; choose from {', '.join(WORKLOADS)}")
    servers = tuple(s.strip() for s in args.servers.split(",") if s.strip())
    cpus = (args.server_cpu, args.load_cpu)
    raise_nofile()
    pin(args.load_cpu)  # the harness mostly sleeps; keep it off the server's core

    t_start = time.monotonic()
    raw: dict[str, dict[str, list[dict[str, Any]]]] = {}
    # "idle" and "wide" share one run per server: connect 10,000 idle subscribers, read the
    # footprint, then publish to them.
    for w in only:
        raw[w] = {s: [] for s in servers}
    for w in only:
        if w == "idle" and "wide" in only:
            continue  # measured in the same run as "wide"
        c = profile["wide" if w == "idle" else w]
        for rep in range(repeats):
            for s in servers:  # servers side by side within each repeat
                if args.wait_quiet:
                    wait_quiet(args.wait_quiet)
                t = time.monotonic()
                if w == "slow":
                    got = {w: run_slow(s, c, cpus, rep)}
                elif w in ("wide", "idle"):
                    idle, publish = profile["idle"], w == "wide"
                    got = with_procs(s, partial(_wide_idle_job, c=c, idle=idle, pb=publish), cpus)
                    other = got.pop("other_cpu")
                    got = {k: {**v, "other_cpu": other} for k, v in got.items() if k in only}
                else:
                    got = {w: with_procs(s, partial(_job, name=w, c=c), cpus)}
                for name, m in got.items():
                    raw[name][s].append(m)
                    brief = {
                        k: (round(v, 3) if isinstance(v, float) else v)
                        for k, v in m.items()
                        if not isinstance(v, dict)
                    }
                    log(f"  {name} [{rep + 1}/{repeats}] {s}: {brief}")
                log(f"    ({time.monotonic() - t:.1f}s)")

    med = {w: {s: medians(runs) for s, runs in by.items()} for w, by in raw.items()}
    header = (
        f"agentstream fan-out benchmark ({profile_name}, {repeats} repeat(s), medians; "
        f"server on core {cpus[0]}, load on core {cpus[1]}; "
        f"{time.monotonic() - t_start:.0f}s)"
    )
    print(header)
    print(render(med, servers))
    if args.json:
        doc = {
            "profile": profile_name,
            "repeats": repeats,
            "settings": {w: profile[w] for w in only},
            "machine": {
                "python": platform.python_version(),
                "cpus": os.cpu_count(),
                "platform": platform.platform(),
            },
            "medians": med,
            "runs": raw,
            "targets": [{"target": t, "measured": m, "verdict": v} for t, m, v in verdicts(med)],
        }
        Path(args.json).write_text(json.dumps(doc, indent=2, default=str))
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
