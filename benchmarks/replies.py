"""Replies of a synchronous agent at fan-out: stamp -> receipt, before vs after.

``python -m benchmarks.replies [--trees before=/path/python,after=/path/python]``

Each repeat of each configuration starts ``agentstream serve`` from a tree's Python (its
own code; the agents are this tree's ``benchmarks/agents``) pinned to core 0, creates a
thread whose message holds the ticker's settings, starts a run of a ticker agent, and
opens ``--subscribers`` SSE subscribers of that run in one process pinned to core 1
(:mod:`benchmarks.ticker_load`), all within the agent's warm-up. The agent then stamps
``rate`` times a second; the latency is receipt minus stamp, over every subscriber:

* ``sync-sqlite`` / ``sync-memory``: ``sync-ticker``, ``env.add_reply(str(time.time()))``
  in its thread, to the receipt of ``thread.message.completed``; SQLite store (serve's
  default) or ``--store memory``.
* ``async-emit``: ``async-ticker``, ``await env.aemit("tick", {"stamp": ...})`` on the
  loop (SQLite store): the reference.

Configurations and trees alternate within each repeat; the table shows medians over the
repeats, the last column after/before. ``other cpu`` is the CPU other processes took
during the runs (cores): figures of runs above 0.1 are disturbed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from .common import free_port
from .procs import OtherCpu, cpu_seconds, log, wait_quiet

ROOT = Path(__file__).resolve().parent.parent
AGENTS = ROOT / "benchmarks" / "agents"

CONFIGS: dict[str, tuple[str, str, dict[str, Any]]] = {
    "sync-sqlite": ("sync-ticker", "sqlite", {}),
    "sync-memory": ("sync-ticker", "memory", {}),
    "async-emit": ("async-ticker", "sqlite", {"mode": "emit"}),
    "async-reply": ("async-ticker", "sqlite", {"mode": "reply"}),
}


def _http(port: int, method: str, path: str, body: Any = None) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=data,
        method=method,
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as reply:
        return json.loads(reply.read() or b"null")


class Hub:
    """``agentstream serve`` of one tree, pinned to a core, on a fresh data directory."""

    def __init__(self, python: str, store: str, cpu: int) -> None:
        self.port = free_port()
        self.data = tempfile.mkdtemp(prefix="bench-replies-")
        # "PYTHON@TREE" runs TREE's code with PYTHON; else the tree that holds its venv.
        python, _, where = python.partition("@")
        tree = Path(where) if where else Path(python).resolve().parent.parent.parent
        cmd = [
            "taskset", "-c", str(cpu), python, "-m", "agent_runtime.cli",
            "--log-level", "WARNING",
            "serve", "--host", "127.0.0.1", "--port", str(self.port),
            "--agents", str(AGENTS), "--store", store, "--data-dir", self.data,
            "--no-access-log",
        ]  # fmt: skip
        self.proc = subprocess.Popen(cmd, cwd=tree, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while True:
            try:
                _http(self.port, "GET", "/healthz")
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.close()
                    raise RuntimeError(f"{cmd} did not start") from None
                time.sleep(0.1)

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        shutil.rmtree(self.data, ignore_errors=True)


def _writes(port: int) -> float:
    """The hub's count of writes to subscribers (``/metrics``)."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics")
    with urllib.request.urlopen(request, timeout=30) as reply:
        for line in reply.read().decode().splitlines():
            if line.startswith("agentstream_subscriber_writes_total "):
                return float(line.split()[1])
    return 0.0


def one_run(python: str, config: str, args: argparse.Namespace) -> dict[str, Any]:
    agent, store, extra = CONFIGS[config]
    hub = Hub(python, store, args.server_cpu)
    try:
        settings = {"ticks": int(args.rate * args.seconds), "rate": args.rate}
        settings |= {"warmup": args.warmup} | extra
        thread = _http(hub.port, "POST", "/v1/threads", {
            "messages": [{"role": "user", "content": json.dumps(settings)}]
        })  # fmt: skip
        run = _http(hub.port, "POST", f"/v1/threads/{thread['id']}/runs", {"assistant_id": agent})
        load = subprocess.Popen(
            [
                sys.executable, "-m", "benchmarks.ticker_load", "--port", str(hub.port),
                "--path", f"/v1/threads/{thread['id']}/stream/{run['id']}",
                "--subscribers", str(args.subscribers), "--cpu", str(args.load_cpu),
                "--timeout", str(args.warmup + args.seconds + 60),
            ],
            cwd=ROOT, stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert load.stdout is not None
        other = OtherCpu([os.getpid(), hub.proc.pid, load.pid])
        connected = json.loads(load.stdout.readline())
        writes0, cpu0 = _writes(hub.port), cpu_seconds([hub.proc.pid])
        result = json.loads(load.stdout.readline())
        load.wait()
        result["writes"] = _writes(hub.port) - writes0
        result["hub_cpu_s"] = cpu_seconds([hub.proc.pid]) - cpu0
        result["other_cpu"] = other.cores()
        result["connected_in_warmup"] = connected["connected"]
        return result
    finally:
        hub.close()


def _per_tick(run: dict[str, Any]) -> tuple[float, float]:
    """(writes per subscriber, hub CPU ms) per stamped event (reply or tick) of a run."""
    stamped = run["latency_ms"]["n"]  # over all subscribers
    per_sub = stamped / max(1, run["connected"])
    if "writes" not in run:  # a first version of this file: recover the raw figures
        divisor = max(1, run["replies_received"])
        run["writes"] = run["writes_per_reply"] * divisor
        run["hub_cpu_s"] = run["hub_cpu_ms_per_reply"] * max(1, divisor / run["connected"]) / 1000
    return run["writes"] / max(1, stamped), run["hub_cpu_s"] * 1000 / max(1, per_sub)


def _median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def _absolute(spec: str) -> str:
    """``python[@tree]`` with a relative Python path made absolute (the hub starts in a
    directory of its own)."""
    python, at, tree = spec.partition("@")
    if os.sep in python:
        python = os.path.abspath(python)
    return python + at + tree


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--trees",
        default=f"this={sys.executable}",
        help="label=python[@tree],... : each tree's Python and the tree whose code it runs "
        "(default: the tree holding the venv)",
    )
    ap.add_argument("--configs", default="sync-sqlite,sync-memory,async-emit")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--subscribers", type=int, default=1000)
    ap.add_argument("--rate", type=float, default=8.0)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--warmup", type=float, default=6.0)
    ap.add_argument("--server-cpu", type=int, default=0)
    ap.add_argument("--load-cpu", type=int, default=1)
    ap.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECS",
        help="before each run, wait up to SECS for other processes to leave the CPUs",
    )
    ap.add_argument("--json", help="write every run's figures here")
    ap.add_argument("--report", metavar="FILE", help="print the table of a --json FILE")
    args = ap.parse_args()
    if args.report:
        saved = json.loads(Path(args.report).read_text())
        report(saved["runs"], saved["settings"])
        return
    trees = {
        label: _absolute(spec)
        for label, spec in (item.split("=", 1) for item in args.trees.split(","))
    }
    configs = args.configs.split(",")
    runs: dict[str, dict[str, list[dict[str, Any]]]] = {c: {t: [] for t in trees} for c in configs}
    for repeat in range(args.repeats):
        for config in configs:
            for tree, python in trees.items():
                if args.wait_quiet:
                    wait_quiet(args.wait_quiet)
                got = one_run(python, config, args)
                runs[config][tree].append(got)
                lat = got["latency_ms"]
                log(
                    f"[{repeat + 1}/{args.repeats}] {config:12} {tree:7} p50 {lat['p50']:.2f} "
                    f"p99 {lat['p99']:.2f} ms n={lat['n']} one_read="
                    f"{got['one_read']}/{got['replies_received']} "
                    f"writes/tick={_per_tick(got)[0]:.2f} "
                    f"other_cpu={got['other_cpu']:.2f} errors={got['n_errors']}"
                )
    report(runs, vars(args))
    if args.json:
        Path(args.json).write_text(json.dumps({"settings": vars(args), "runs": runs}, indent=1))


def report(runs: dict[str, dict[str, list[dict[str, Any]]]], settings: dict[str, Any]) -> None:
    """Print the table: per configuration and tree, medians over the repeats."""
    configs = list(runs)
    trees = list(next(iter(runs.values())))
    rows: list[tuple[str, list[float | None]]] = []

    def row(label: str, figure: Any) -> None:
        rows.append((label, [_median([figure(r) for r in runs[config][t]]) for t in trees]))

    for config in configs:
        row(f"{config}: stamp->receipt p50 ms", lambda r: r["latency_ms"]["p50"])
        row(f"{config}: stamp->receipt p99 ms", lambda r: r["latency_ms"]["p99"])
        if config.startswith("sync") or config == "async-reply":
            row(
                f"{config}: replies whose created+completed came in one read",
                lambda r: r["one_read"] / max(1, r["replies_received"]),
            )
        row(f"{config}: writes per subscriber per reply (tick)", lambda r: _per_tick(r)[0])
        row(f"{config}: hub CPU ms per reply (tick)", lambda r: _per_tick(r)[1])
        row(f"{config}: other processes' CPU, cores", lambda r: r["other_cpu"])
    names = trees
    print(
        f"\nreplies at fan-out ({settings['subscribers']} subscribers, {settings['rate']:g}/s, "
        f"{settings['seconds']:g} s, {settings['repeats']} repeats, medians; hub core "
        f"{settings['server_cpu']}, subscribers core {settings['load_cpu']})"
    )
    header = f"{'figure':58}" + "".join(f"{n:>10}" for n in names)
    if len(names) == 2:
        header += f"{names[1] + '/' + names[0]:>16}"
    print(header)
    for label, values in rows:
        line = f"{label:58}" + "".join(f"{'-' if v is None else f'{v:.2f}':>10}" for v in values)
        if len(values) == 2 and values[0] and values[1] is not None and "CPU, cores" not in label:
            line += f"{values[1] / values[0]:>15.2f}x"
        print(line)


if __name__ == "__main__":
    main()
