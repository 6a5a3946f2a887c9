"""End-to-end workload through the real HTTP API: runs started per second, delta latency,
and process memory per live run.

The hub runs in its own process pinned to core 0 (``agent_runtime.bench.hubproc``: the
bundled agents, in-memory store); this harness and the load run on core 1. Each repeat:

1. **start rate and memory** — start ``--runs`` runs of the bundled ``async-example``
   agent on ``simulated:tokens=2000,rate=50`` (so they stay live: 50 deltas/s each, 40 s) with
   ``--subscribers`` raw SSE subscribers each, ``--concurrency`` POSTs at a time. Runs/s
   started is runs over the wall time of the POSTs. Memory per live run is the hub's
   RSS with everything live and subscribed, minus its RSS after a warm-up run, over the
   number of runs (their subscribers' connections included). Then every run is cancelled.
2. **delta latency** — ``agentstream bench --url HUB`` (a separate process on core 1):
   ``--bench-runs`` concurrent runs × ``--bench-subscribers`` on ``simulated:rate=50``;
   its p50/p99 fan-out latency, time to first delta and exactness check.

Hub CPU and memory are the hub's whole process tree (with ``--isolation process``, its
agent worker processes too, pinned to the same core): CPU is user + system time of the
hub, its live children and the children it reaped; memory is the sum of their RSS (and
PSS, which shares pages between processes fairly) — per live run, over the hub's own
figures before the warm-up. "other cores" is the CPU that processes outside this
benchmark took meanwhile (the machine is shared).

Repeats, then medians. A measured comparison, not a test: nothing asserts a timing.
With several ``--backends`` or ``--isolation`` modes, every repeat runs each once, side by
side, and with two the last column is their ratio (second/first).

    python -m benchmarks.e2e                 # 3 repeats, about 3 minutes
    python -m benchmarks.e2e --quick         # 1 repeat, smaller
    python -m benchmarks.e2e --isolation none,process --runs 100
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

import aiohttp

from agent_runtime.bench.hubproc import HubProcess, MachineMeter, pin, raise_nofile
from agent_runtime.bench.redis_server import RedisServer

LIVE_MODEL = "simulated:tokens=2000,rate=50"
_TICKS = os.sysconf("SC_CLK_TCK")


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def pss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as rollup:
        for line in rollup:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    raise RuntimeError("no Pss")


def children(pid: int) -> list[int]:
    """The live children of ``pid`` (all its threads'), from ``/proc``."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError), open(f"/proc/{pid}/task/{tid}/children") as f:
                found.extend(int(child) for child in f.read().split())
    return found


def tree(pid: int) -> list[int]:
    """``pid`` and its live descendants."""
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        todo.extend(children(current))
    return pids


def _cpu_ticks(pid: int, *, reaped: bool) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    if reaped:
        ticks += int(fields[13]) + int(fields[14])  # cutime, cstime: children it reaped
    return ticks


def tree_cpu_s(pid: int) -> float:
    """CPU seconds of ``pid``'s tree: the processes alive now and those they reaped."""
    return sum(_cpu_ticks(p, reaped=True) for p in tree(pid)) / _TICKS


def tree_memory_kib(pid: int) -> dict[str, int]:
    """RSS and PSS (KiB) summed over ``pid``'s tree, and how many processes it has."""
    rss = pss = 0
    pids = tree(pid)
    for p in pids:
        with contextlib.suppress(OSError, RuntimeError):
            rss += rss_kib(p)
            pss += pss_kib(p)
    return {"rss": rss, "pss": pss, "processes": len(pids)}


def tree_affinity(pid: int) -> set[int]:
    """Every core some process of ``pid``'s tree may run on."""
    cores: set[int] = set()
    for p in tree(pid):
        with contextlib.suppress(OSError):
            cores |= os.sched_getaffinity(p)
    return cores


def self_cpu_s() -> float:
    """CPU seconds of this harness and the children it reaped (the bench, hubs)."""
    return _cpu_ticks(os.getpid(), reaped=True) / _TICKS


class _Counter(asyncio.Protocol):
    """A raw SSE subscriber that only counts bytes (the load must stay cheap)."""

    def __init__(self, request: bytes, connected: asyncio.Future[None]) -> None:
        self.request = request
        self.connected = connected
        self.received = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        if not self.connected.done():
            self.connected.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.connected.done():
            self.connected.set_exception(ConnectionError("closed before the first byte"))


async def subscribe(host: str, port: int, path: str) -> _Counter:
    loop = asyncio.get_running_loop()
    connected: asyncio.Future[None] = loop.create_future()
    request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n".encode()
    _transport, protocol = await loop.create_connection(
        lambda: _Counter(request, connected), host, port
    )
    await connected
    return protocol


async def start_rate_and_memory(
    hub: HubProcess, runs: int, subscribers: int, concurrency: int
) -> dict[str, float]:
    assert hub.pid is not None
    host, port = hub.url.removeprefix("http://").split(":")
    async with aiohttp.ClientSession() as session:
        # Warm-up: one run to the end, so imports, caches and the first allocations are done.
        body = {
            "assistant_id": "async-example",
            "model": "simulated:tokens=20,rate=0",
            "thread": {"messages": [{"role": "user", "content": "warm up"}]},
        }
        async with session.post(f"{hub.url}/v1/threads/runs", json=body) as response:
            warm = await response.json()
        path = f"/v1/threads/{warm['thread_id']}/stream/{warm['id']}"
        async with session.get(hub.url + path) as response:
            await response.read()
        base = tree_memory_kib(hub.pid)
        base_hub_rss = rss_kib(hub.pid)
        cpu0 = tree_cpu_s(hub.pid)

        gate = asyncio.Semaphore(concurrency)
        started: list[dict[str, Any]] = []

        async def start_one(i: int) -> None:
            async with gate:
                body = {
                    "assistant_id": "async-example",
                    "model": LIVE_MODEL,
                    "thread": {"messages": [{"role": "user", "content": f"question {i}"}]},
                }
                async with session.post(f"{hub.url}/v1/threads/runs", json=body) as response:
                    assert response.status == 200, await response.text()
                    started.append(await response.json())

        t0 = time.perf_counter()
        await asyncio.gather(*(start_one(i) for i in range(runs)))
        start_s = time.perf_counter() - t0
        start_cpu = tree_cpu_s(hub.pid) - cpu0

        counters = await asyncio.gather(
            *(
                subscribe(host, int(port), f"/v1/threads/{run['thread_id']}/stream/{run['id']}")
                for run in started
                for _ in range(subscribers)
            )
        )
        await asyncio.sleep(2.0)  # let every run stream for a while: steady state
        cpu1, wall1 = tree_cpu_s(hub.pid), time.perf_counter()
        await asyncio.sleep(3.0)  # steady state: CPU per live run
        steady_cores = (tree_cpu_s(hub.pid) - cpu1) / (time.perf_counter() - wall1)
        live = tree_memory_kib(hub.pid)
        hub_rss = rss_kib(hub.pid)
        cores = sorted(tree_affinity(hub.pid))
        received = sum(c.received for c in counters)

        async def cancel(run: dict[str, Any]) -> None:
            async with gate:
                url = f"{hub.url}/v1/threads/{run['thread_id']}/runs/{run['id']}/cancel"
                async with session.post(url) as response:
                    await response.read()

        await asyncio.gather(*(cancel(run) for run in started))
        for c in counters:
            if c.transport is not None:
                c.transport.close()
    return {
        "runs": runs,
        "subscribers_per_run": subscribers,
        "runs_started_per_s": runs / start_s,
        "hub_cpu_ms_per_run_started": 1000 * start_cpu / runs,
        "hub_cpu_cores_live": steady_cores,
        "hub_cpu_ms_per_s_per_live_run": 1000 * steady_cores / runs,
        "hub_processes_live": live["processes"],
        "hub_rss_base_mib": base["rss"] / 1024,
        "hub_rss_live_mib": live["rss"] / 1024,
        "hub_main_rss_live_mib": hub_rss / 1024,
        "kib_per_live_run": (live["rss"] - base["rss"]) / runs,
        "pss_kib_per_live_run": (live["pss"] - base["pss"]) / runs,
        # The same, counting every worker process (those started before the runs) as the
        # runs' memory: what a live run costs in process mode, its worker included.
        "kib_per_live_run_with_workers": (live["rss"] - base_hub_rss) / runs,
        "worker_rss_mib": (base["rss"] - base_hub_rss) / max(1, base["processes"] - 1) / 1024,
        "bytes_received": received,
        "hub_cores": cores,
    }


def bench_latency(url: str, runs: int, subscribers: int, duration: float) -> dict[str, Any]:
    command = [
        sys.executable,
        "-m",
        "agent_runtime.cli",
        "bench",
        "--url",
        url,
        "--runs",
        str(runs),
        "--subscribers",
        str(subscribers),
        "--model",
        "simulated:tokens=200,rate=50",
        "--duration",
        str(duration),
        "--agent",
        "async-example",
        "--json",
        "--no-pin",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=duration + 120)
    if done.returncode not in (0, 1):
        raise RuntimeError(f"bench failed ({done.returncode}): {done.stderr[-2000:]}")
    summary: dict[str, Any] = json.loads(done.stdout)
    return summary


def isolation_config(mode: str, args: argparse.Namespace) -> dict[str, Any]:
    """The hub's isolation section for ``--isolation`` entry ``mode``: ``none``, or
    ``process`` (``--workers`` kept ready: by default enough for every live run and the
    warm-up's, so no run waits for a Python start), or ``process:workers=N``."""
    if mode == "none":
        return {"mode": "none"}
    name, _, option = mode.partition(":")
    if name != "process" or (option and not option.startswith("workers=")):
        raise SystemExit(f"--isolation: unknown mode {mode!r} (none, process, process:workers=N)")
    live = max(args.runs, args.bench_runs) + 1
    workers = int(option.removeprefix("workers=")) if option else (args.workers or live)
    return {"mode": "process", "workers": workers, "max_workers": args.max_workers or live + 8}


async def one_repeat(
    args: argparse.Namespace, redis: tuple[str, str] | None, isolation: dict[str, Any]
) -> dict[str, Any]:
    machine, ours0, t0 = MachineMeter(), self_cpu_s(), time.perf_counter()
    hub = HubProcess(cpu=0, redis=redis, isolation=isolation, start_timeout=300.0)
    await hub.start()
    hub_start_s = time.perf_counter() - t0
    assert hub.pid is not None
    try:
        figures = await start_rate_and_memory(hub, args.runs, args.subscribers, args.concurrency)
        cpu0 = tree_cpu_s(hub.pid)
        bench_t0 = time.perf_counter()
        summary = await asyncio.to_thread(
            bench_latency, hub.url, args.bench_runs, args.bench_subscribers, args.duration
        )
        figures["bench_hub_cpu_cores"] = (tree_cpu_s(hub.pid) - cpu0) / (
            time.perf_counter() - bench_t0
        )
    finally:
        await hub.aclose()
    # Everything the machine did meanwhile, minus this harness, its bench and hub trees.
    busy = machine.sample()
    ours = (self_cpu_s() - ours0) / (time.perf_counter() - t0)
    figures["hub_start_s"] = hub_start_s
    figures["other_cores"] = None if busy is None else max(0.0, busy - ours)
    latency = summary["latency_ms"]
    first = summary["time_to_first_delta_ms"]
    errors = summary["errors"]
    figures.update(
        {
            "fanout_latency_p50_ms": latency["p50"],
            "fanout_latency_p99_ms": latency["p99"],
            "first_delta_p50_ms": first["p50"],
            "first_delta_p99_ms": first["p99"],
            "bench_events_per_s": summary["events"]["per_s_steady"],
            "bench_deliveries_per_s": summary["events"]["per_s_steady"] * args.bench_subscribers,
            "bench_errors": sum(v for k, v in errors.items() if isinstance(v, int)),
            "bench_exact": bool(summary["ok"]),
        }
    )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--runs", type=int, default=None)
    parser.add_argument("--subscribers", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--bench-runs", type=int, default=100)
    parser.add_argument("--bench-subscribers", type=int, default=5)
    parser.add_argument("--duration", type=float, default=None)
    parser.add_argument("--json", metavar="FILE")
    parser.add_argument(
        "--isolation",
        default="none",
        help="comma-separated: none (agents in the hub's process) and/or process (each run's "
        "agent in a worker process; process:workers=N for a pool of N kept ready); with two, "
        "the last column is second/first",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="with --isolation process: workers kept ready (default: one per live run + 1)",
    )
    parser.add_argument(
        "--max-workers",
        type=int,
        default=None,
        help="with --isolation process: workers at most (default: --workers' default + 8)",
    )
    parser.add_argument(
        "--backends",
        default="memory",
        help="comma-separated: memory (one hub, in-memory store) and/or redis (one hub as a "
        "node on a private redis-server on core 1); with both, the last column is redis/memory",
    )
    args = parser.parse_args()
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.runs = args.runs or (100 if args.quick else 500)
    args.duration = args.duration or (5.0 if args.quick else 10.0)
    raise_nofile()
    pin(1, os.getpid())
    backend_names = args.backends.split(",")
    modes = args.isolation.split(",")
    for mode in modes:
        isolation_config(mode, args)  # refuse a bad entry before starting anything
    # One column per (backend, isolation), named by what varies.
    columns = [(b, m) for b in backend_names for m in modes]
    backends = [
        b if len(modes) == 1 else m if len(backend_names) == 1 else f"{b}/{m}" for b, m in columns
    ]
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in backends}
    with contextlib.ExitStack() as stack:
        redis = stack.enter_context(RedisServer(cpu=1)) if "redis" in backend_names else None
        for repeat in range(args.repeats):
            # side by side: every repeat runs each column once
            for name, (backend, mode) in zip(backends, columns, strict=True):
                where = None
                if backend == "redis":
                    assert redis is not None
                    where = (redis.url, f"bench{repeat}{mode}:")
                isolation = isolation_config(mode, args)
                print(f"repeat {repeat + 1}/{args.repeats}: {name} {isolation}", file=sys.stderr)
                figures = asyncio.run(one_repeat(args, where, isolation))
                print(f"  {figures}", file=sys.stderr)
                results[name].append(figures)
    first = results[backends[0]][0]
    keys = [k for k in first if isinstance(first[k], (int, float))]
    medians = {
        name: {k: statistics.median(r[k] for r in runs if r.get(k) is not None) for k in keys}
        for name, runs in results.items()
    }
    print(
        f"end-to-end through the HTTP API ({args.repeats} repeats, medians; hub tree on core 0, "
        f"load on core 1)"
    )
    print(f"  {'':28}" + "".join(f"{name:>14}" for name in backends))
    for key in keys:
        row = "".join(f"{medians[name][key]:>14,.2f}" for name in backends)
        if len(backends) == 2 and medians[backends[0]][key]:
            row += f"   {medians[backends[1]][key] / medians[backends[0]][key]:.2f}x"
        print(f"  {key:28}{row}")
    for name in backends:
        for key in ("bench_errors", "bench_exact", "hub_cores", "other_cores"):
            values = [r.get(key) for r in results[name]]
            shown = [round(v, 3) if isinstance(v, float) else v for v in values]
            print(f"  {name} {key:22} {shown}")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"medians": medians, "runs": results, "settings": vars(args)}, out, indent=1)


if __name__ == "__main__":
    main()
