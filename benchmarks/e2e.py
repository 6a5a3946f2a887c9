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

Repeats, then medians. A measured comparison, not a test: nothing asserts a timing.

    python -m benchmarks.e2e                 # 3 repeats, about 3 minutes
    python -m benchmarks.e2e --quick         # 1 repeat, smaller
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

from agent_runtime.bench.hubproc import HubProcess, pin, raise_nofile
from agent_runtime.bench.redis_server import RedisServer

LIVE_MODEL = "simulated:tokens=2000,rate=50"


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


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
        base_rss = rss_kib(hub.pid)

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

        counters = await asyncio.gather(
            *(
                subscribe(host, int(port), f"/v1/threads/{run['thread_id']}/stream/{run['id']}")
                for run in started
                for _ in range(subscribers)
            )
        )
        await asyncio.sleep(2.0)  # let every run stream for a while: steady state
        live_rss = rss_kib(hub.pid)
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
        "hub_rss_base_mib": base_rss / 1024,
        "hub_rss_live_mib": live_rss / 1024,
        "kib_per_live_run": (live_rss - base_rss) / runs,
        "bytes_received": received,
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


async def one_repeat(args: argparse.Namespace, redis: tuple[str, str] | None) -> dict[str, Any]:
    hub = HubProcess(cpu=0, redis=redis)
    await hub.start()
    try:
        figures = await start_rate_and_memory(hub, args.runs, args.subscribers, args.concurrency)
        summary = await asyncio.to_thread(
            bench_latency, hub.url, args.bench_runs, args.bench_subscribers, args.duration
        )
    finally:
        await hub.aclose()
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
    backends = args.backends.split(",")
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in backends}
    with contextlib.ExitStack() as stack:
        redis = stack.enter_context(RedisServer(cpu=1)) if "redis" in backends else None
        for repeat in range(args.repeats):
            for name in backends:  # side by side: every repeat runs each backend once
                where = None
                if name == "redis":
                    assert redis is not None
                    where = (redis.url, f"bench{repeat}:")
                results[name].append(asyncio.run(one_repeat(args, where)))
    keys = [
        k for k in results[backends[0]][0] if isinstance(results[backends[0]][0][k], (int, float))
    ]
    medians = {
        name: {k: statistics.median(r[k] for r in runs if r.get(k) is not None) for k in keys}
        for name, runs in results.items()
    }
    print(f"end-to-end through the HTTP API ({args.repeats} repeats, medians)")
    print(f"  {'':28}" + "".join(f"{name:>14}" for name in backends))
    for key in keys:
        row = "".join(f"{medians[name][key]:>14,.2f}" for name in backends)
        if len(backends) == 2 and medians[backends[0]][key]:
            row += f"   {medians[backends[1]][key] / medians[backends[0]][key]:.2f}x"
        print(f"  {key:28}{row}")
    for name in backends:
        for key in ("bench_errors", "bench_exact"):
            print(f"  {name} {key:22} {[r.get(key) for r in results[name]]}")
    if args.json:
        with open(args.json, "w") as out:
            json.dump({"medians": medians, "runs": results, "settings": vars(args)}, out, indent=1)


if __name__ == "__main__":
    main()
