"""Fan-out through Redis Streams against in memory: one node, and two nodes sharing the
subscribers.

``python -m benchmarks.redis_fanout [--quick] [--only llm,saturation] [--repeats N] [--json FILE]``

Three configurations, side by side in every repeat, each run in fresh processes:

* ``memory``  — the in-memory broker (``benchmarks.servers broker``): the baseline.
* ``redis-1`` — one node on Redis (``benchmarks.servers redis``): it writes every event to
  Redis (its outbox, one pipeline per loop turn) and serves all subscribers from its own
  stream, as a single node with ``--redis`` does.
* ``redis-2`` — node A publishes and serves half of each stream's subscribers; node B
  (``--mirror``) serves the other half from its mirrors (one reader, one blocking ``XREAD``
  covering every stream):
  every event B delivers went publisher → Redis → B. Both nodes on core 0, so the hub side
  has the same one core as in the other configurations: the ratio is the cost of the path.
* ``redis-2-spread`` — the same, with node B on core 1 (beside the load generator and
  Redis): what a second core, as a second machine would give, buys. Its latencies share a
  core with the load generator, so read them with care.

Placement: nodes on core 0 (but ``redis-2-spread``'s node B); the load generator
(``benchmarks.load``) and ``redis-server`` on core 1. CPU time of each process is read
from ``/proc`` over the measured window: "hub cores" is the nodes' total, "redis cores"
the server's.

Workloads (the shapes of ``benchmarks.fanout``): ``llm`` — 100 streams x 10 subscribers at
50 events/s each (latency p50/p99, loss checked per subscriber, CPU); ``llm-20`` — the same
with 20 streams, light enough that no core saturates, so its latencies are those of the
path itself; ``saturation`` — 1
stream x 1,000 subscribers, published as fast as the publisher can (delivered events/s, hub
CPU per delivered event). Medians over the repeats; the ratio columns are redis/memory.
A measured comparison, not a test: nothing asserts a timing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent_runtime.bench.redis_server import RedisServer

from .common import pin, raise_nofile
from .procs import Load, OtherCpu, Server, cpu_seconds, log
from .report import medians

CONFIGS = ("memory", "redis-1", "redis-2", "redis-2-spread")
WORKLOADS = ("llm", "llm-20", "saturation")

PROFILES: dict[str, dict[str, Any]] = {
    "quick": {
        "repeats": 1,
        "llm": {"streams": 100, "subs": 10, "rate": 50, "size": 200, "warm": 0.5, "measure": 2.5,
                "deadline": 8.0},
        "saturation": {"subs": 1000, "batch": 10, "size": 200, "warm": 0.5, "measure": 2.0},
    },
    "full": {
        "repeats": 3,
        "llm": {"streams": 100, "subs": 10, "rate": 50, "size": 200, "warm": 1.0, "measure": 6.0,
                "deadline": 20.0},
        "saturation": {"subs": 1000, "batch": 10, "size": 200, "warm": 1.0, "measure": 4.0},
    },
}  # fmt: skip
for _profile in PROFILES.values():  # the llm shape, light enough that no core saturates
    _profile["llm-20"] = {**_profile["llm"], "streams": 20}

# (workload, metric, label, format, ratio wanted?)
ROWS: list[tuple[str, str, str, str, bool]] = [
    ("llm", "p50_ms", "llm: latency p50 ms (100x10 @50/s)", "{:.2f}", True),
    ("llm", "p99_ms", "llm: latency p99 ms", "{:.2f}", True),
    ("llm", "lost", "llm: events lost/late + dup", "{:.0f}", False),
    ("llm", "hub_cores", "llm: hub CPU, cores", "{:.3f}", True),
    ("llm", "redis_cores", "llm: redis-server CPU, cores", "{:.3f}", False),
    ("llm-20", "p50_ms", "llm-20: latency p50 ms (20x10 @50/s)", "{:.2f}", True),
    ("llm-20", "p99_ms", "llm-20: latency p99 ms", "{:.2f}", True),
    ("llm-20", "lost", "llm-20: events lost/late + dup", "{:.0f}", False),
    ("llm-20", "hub_cores", "llm-20: hub CPU, cores", "{:.3f}", True),
    ("saturation", "delivered_per_s", "saturation: delivered events/s (1x1000)", "{:,.0f}", True),
    ("saturation", "published_per_s", "saturation: published events/s", "{:,.0f}", True),
    ("saturation", "hub_us_per_1k", "saturation: hub CPU us per 1,000 delivered", "{:.0f}", True),
    ("saturation", "redis_cores", "saturation: redis-server CPU, cores", "{:.3f}", False),
    ("saturation", "server_rss_mib", "saturation: publisher RSS MiB at the end", "{:.0f}", True),
]


@dataclass
class Setup:
    """The processes of one run: nodes (the publisher first), the load, maybe Redis."""

    nodes: list[Server]
    load: Load
    redis: RedisServer | None = None
    other: OtherCpu = field(init=False)

    def __post_init__(self) -> None:
        self.other = OtherCpu([os.getpid(), self.load.proc.pid, *self.pids()])

    def pids(self) -> list[int]:
        return [node.proc.pid for node in self.nodes]

    def cpu(self) -> tuple[float, float, float]:
        """(monotonic time, the nodes' CPU seconds, redis-server's CPU seconds)."""
        redis = self.redis.cpu_seconds() if self.redis is not None else 0.0
        return time.monotonic(), cpu_seconds(self.pids()), redis

    def connect(self, key_subs: list[tuple[str, int]], **kw: Any) -> None:
        """Connect subscribers, each stream's shared out evenly over the nodes."""
        share = len(self.nodes)
        for i, node in enumerate(self.nodes):
            plan = [[k, n // share + (1 if i < n % share else 0)] for k, n in key_subs]
            got = self.load.call(op="connect", port=node.port, plan=plan, **kw)
            want = sum(n for _, n in plan)
            if got["connected"] != want:
                log(f"    ! node {i}: connected {got['connected']}/{want}: {got['errors']}")


@contextlib.contextmanager
def processes(config: str, cpus: tuple[int, int], tag: str) -> Iterator[Setup]:
    server_cpu, load_cpu = cpus
    with contextlib.ExitStack() as stack:
        redis = None
        nodes: list[Server] = []
        if config == "memory":
            nodes.append(Server("broker", server_cpu))
        else:
            redis = stack.enter_context(RedisServer(cpu=load_cpu))
            args = ["--redis-url", redis.url, "--redis-prefix", f"{tag}:"]
            nodes.append(Server("redis", server_cpu, args))
            if config.startswith("redis-2"):
                cpu_b = load_cpu if config == "redis-2-spread" else server_cpu
                nodes.append(Server("redis", cpu_b, [*args, "--mirror"]))
        for node in nodes:
            stack.callback(node.close)
        load = Load(load_cpu)
        stack.callback(load.close)
        yield Setup(nodes, load, redis)


def w_llm(s: Setup, c: dict[str, Any]) -> dict[str, Any]:
    keys = [f"s{i}" for i in range(c["streams"])]
    s.nodes[0].ctl.call(op="setup", keys=keys)
    s.connect([(k, c["subs"]) for k in keys], mode="parse", sample_every=1)
    s.nodes[0].ctl.send(
        op="paced", keys=keys, rate=c["rate"], duration=c["warm"] + c["measure"],
        size=c["size"], close=False,
    )  # fmt: skip
    time.sleep(c["warm"])
    s.load.call(op="mark")
    t0, hub0, redis0 = s.cpu()
    pub = s.nodes[0].ctl.recv()
    t1, hub1, redis1 = s.cpu()
    fin = s.load.call(op="finish", expected=pub["published"], timeout=c["deadline"])
    return {
        "p50_ms": fin["latency_ms"]["p50"],
        "p99_ms": fin["latency_ms"]["p99"],
        "max_ms": fin["latency_ms"]["max"],
        "lost": fin["missing"],
        "dups": fin["dups"],
        "ok_subscribers": fin["ok_subscribers"],
        "subscribers": fin["subscribers"],
        "publisher_late_ms": pub["late_ms"],
        "hub_cores": (hub1 - hub0) / (t1 - t0),
        "redis_cores": (redis1 - redis0) / (t1 - t0),
    }


def w_saturation(s: Setup, c: dict[str, Any]) -> dict[str, Any]:
    s.nodes[0].ctl.call(op="setup", keys=["s0"])
    s.connect([("s0", c["subs"])], mode="count", sample_reads=64)
    s.nodes[0].ctl.send(
        op="saturate", key="s0", duration=c["warm"] + c["measure"], batch=c["batch"],
        size=c["size"],
    )  # fmt: skip
    time.sleep(c["warm"])
    s.load.call(op="mark")
    t0, hub0, redis0 = s.cpu()
    time.sleep(c["measure"])
    snap = s.load.call(op="snap")
    t1, hub1, redis1 = s.cpu()
    rss = s.nodes[0].rss_kib()
    pub = s.nodes[0].ctl.recv()
    s.load.call(op="finish", expected={}, timeout=0)
    delivered = snap["rate"] * (t1 - t0)
    return {
        "delivered_per_s": snap["rate"],
        "published_per_s": pub["published"] / pub["secs"],
        "hub_us_per_1k": (hub1 - hub0) / delivered * 1e9 if delivered else None,
        "redis_cores": (redis1 - redis0) / (t1 - t0),
        "server_rss_mib": rss / 1024,
    }


RUNNERS: dict[str, Callable[[Setup, dict[str, Any]], dict[str, Any]]] = {
    "llm": w_llm,
    "llm-20": w_llm,
    "saturation": w_saturation,
}


def render(med: dict[str, dict[str, dict[str, Any]]], configs: tuple[str, ...]) -> str:
    ratios = [c for c in configs if c != "memory"] if "memory" in configs else []
    head = ["metric", *configs, *(f"{c}/memory" for c in ratios)]
    rows = []
    for w, key, label, fmt, ratio in ROWS:
        if w not in med:
            continue
        vals = {c: med[w].get(c, {}).get(key) for c in configs}
        cells = [label, *("-" if v is None else fmt.format(v) for v in vals.values())]
        base = vals.get("memory")
        for c in ratios:
            v = vals[c]
            cells.append(f"{v / base:.2f}x" if ratio and v is not None and base else "")
        rows.append(cells)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    lines = [
        "  ".join(c.ljust(widths[0]) if i == 0 else c.rjust(widths[i]) for i, c in enumerate(r))
        for r in [head, ["-" * w for w in widths], *rows]
    ]
    noisy = [
        f"{w} ({c}: {m['other_cpu_max']:.2f})"
        for w, by in med.items()
        for c, m in by.items()
        if (m.get("other_cpu_max") or 0) > 0.1
    ]
    if noisy:
        lines += ["", "! other processes used CPU (cores) during: " + ", ".join(noisy)]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="short runs, one repeat (about 1 min)")
    ap.add_argument("--only", default=",".join(WORKLOADS), help="comma-separated workloads")
    ap.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated configs")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--json", metavar="FILE", help="also write every figure to FILE")
    ap.add_argument("--server-cpu", type=int, default=0)
    ap.add_argument("--load-cpu", type=int, default=1)
    args = ap.parse_args(argv)
    profile_name = "quick" if args.quick else "full"
    profile = PROFILES[profile_name]
    repeats = args.repeats or profile["repeats"]
    only = [w for w in args.only.split(",") if w]
    configs = tuple(c for c in args.configs.split(",") if c)
    for name, known in ((only, WORKLOADS), (configs, CONFIGS)):
        for item in name:
            if item not in known:
                ap.error(f"unknown {item!r}; choose from {', '.join(known)}")
    cpus = (args.server_cpu, args.load_cpu)
    raise_nofile()
    pin(args.load_cpu)

    t_start = time.monotonic()
    raw: dict[str, dict[str, list[dict[str, Any]]]] = {w: {c: [] for c in configs} for w in only}
    for w in only:
        for rep in range(repeats):
            # side by side; the order rotates so a machine getting busier favours nobody
            order = configs[rep % len(configs) :] + configs[: rep % len(configs)]
            for config in order:
                t = time.monotonic()
                with processes(config, cpus, f"{w}{rep}") as setup:
                    m = RUNNERS[w](setup, profile[w])
                    m["other_cpu"] = setup.other.cores()
                raw[w][config].append(m)
                brief = {k: round(v, 3) if isinstance(v, float) else v for k, v in m.items()}
                log(f"  {w} [{rep + 1}/{repeats}] {config}: {brief} ({time.monotonic() - t:.1f}s)")
    med = {w: {c: medians(runs) for c, runs in by.items()} for w, by in raw.items()}
    print(
        f"fan-out through Redis vs in memory ({profile_name}, {repeats} repeat(s), medians; "
        f"nodes on core {cpus[0]}, load and redis-server on core {cpus[1]}; "
        f"{time.monotonic() - t_start:.0f}s)"
    )
    print(render(med, configs))
    if args.json:
        doc = {"profile": profile_name, "repeats": repeats, "medians": med, "runs": raw,
               "settings": {w: profile[w] for w in only}}  # fmt: skip
        Path(args.json).write_text(json.dumps(doc, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
