"""Fast model, end to end: one run of ``simulated:tokens=2000,rate=0`` to 1,000 subscribers.

``python -m benchmarks.fast_model [--hubs NAME=PYTHON ...] [--repeats 3] [--json FILE]``

Each repeat measures, side by side and in fresh processes (order alternating per repeat):

* ``hub:NAME`` — ``agentstream serve`` from the virtualenv of ``PYTHON`` (default: this
  one; e.g. ``before=/path/to/before/.venv/bin/python``), pinned to core 0, default
  SQLite store in a temporary folder, agents from ``benchmarks/agents``. The harness
  starts one warm-up run, then one run of the ``fast-model`` agent on
  ``simulated:tokens=2000,rate=0,delay=D`` (``D``: time for the subscribers to attach
  before the first token); 1,000 raw subscribers (``benchmarks.load``, count mode, core 1)
  follow its stream from its start. Delivered events/s: frames counted by the
  subscribers from the first to the last frame after they attached. Also: the hub's
  events per subscriber write (``/metrics``) and its CPU.
* ``naive`` and ``broker`` — the fan-out benchmark's ``saturation`` workload
  (:mod:`benchmarks.fanout`: 1 stream x 1,000 subscribers, batches of 10 events per loop
  turn, ~200-byte payloads) on the naive aiohttp-sse server and on the broker alone.

Targets (issue 18): each hub's events/s >= 15x naive and >= 0.7x broker, medians.
Measured comparisons only: nothing here asserts a timing.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from .common import free_port, raise_nofile
from .fanout import PROFILES
from .procs import (
    ROOT,
    Load,
    OtherCpu,
    Pair,
    connect_subs,
    cpu_seconds,
    log,
    wait_quiet,
    with_procs,
)

AGENTS = ROOT / "benchmarks" / "agents"
SUBSCRIBERS = 1000
TOKENS = 2000
_METRIC = re.compile(
    rb"^(agentstream_events_delivered|agentstream_subscriber_writes)\S* (\S+)$", re.M
)


def _get(url: str, timeout: float = 10.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return bytes(resp.read())


def _post(url: str, body: dict[str, Any]) -> dict[str, Any]:
    req = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return dict(json.loads(resp.read()))


def _counters(base: str) -> dict[str, float]:
    found: dict[str, float] = {}
    for name, value in _METRIC.findall(_get(base + "/metrics")):
        found[name.decode()] = found.get(name.decode(), 0.0) + float(value)
    return found


class Hub:
    """``agentstream serve`` from ``python``'s virtualenv, pinned to ``cpu``."""

    def __init__(self, python: str, cpu: int) -> None:
        python, _, source = python.partition(",")
        env = dict(os.environ)
        if source:  # a variant of the code, run with that virtualenv's packages
            env["PYTHONPATH"] = os.path.abspath(source)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.tmp = tempfile.TemporaryDirectory(prefix="fast-model-")
        exe = str(Path(python).parent / "agentstream")
        cmd = ["taskset", "-c", str(cpu), exe, "serve", "--port", str(self.port)]
        cmd += ["--agents", str(AGENTS), "--data-dir", self.tmp.name, "--no-access-log"]
        cmd += ["--log-level", "WARNING", "--max-connections", "4000"]
        self.proc = subprocess.Popen(cmd, cwd=self.tmp.name, env=env)
        deadline = time.monotonic() + 30
        while True:
            try:
                _get(self.base + "/healthz", timeout=1)
                return
            except OSError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.close()
                    raise RuntimeError(f"hub {python} did not start") from None
                time.sleep(0.1)

    def start_run(self, model: str) -> tuple[str, str]:
        run = _post(
            self.base + "/v1/threads/runs",
            {
                "assistant_id": "fast-model",
                "model": model,
                "thread": {"messages": [{"role": "user", "content": "Tell me about rivers."}]},
            },
        )
        return str(run["thread_id"]), str(run["id"])

    def wait_run(self, thread_id: str, run_id: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            run = json.loads(_get(f"{self.base}/v1/threads/{thread_id}/runs/{run_id}"))
            if run["status"] not in ("queued", "in_progress"):
                return str(run["status"])
            time.sleep(0.05)
        return "timeout"

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.tmp.cleanup()


def hub_once(python: str, delay: float, cpus: tuple[int, int]) -> dict[str, Any]:
    hub = Hub(python, cpus[0])
    load = Load(cpus[1])
    other = OtherCpu([os.getpid(), hub.proc.pid, load.proc.pid])
    try:
        warm = hub.start_run("simulated:tokens=50,rate=0")
        status = hub.wait_run(*warm)
        if status != "completed":
            raise RuntimeError(f"warm-up run ended {status}")
        before = _counters(hub.base)
        t0 = time.monotonic()
        thread_id, run_id = hub.start_run(f"simulated:tokens={TOKENS},rate=0,delay={delay:g}")
        path = f"/v1/threads/{thread_id}/stream/{run_id}"
        con = load.call(op="connect", port=hub.port, plan=[[path, SUBSCRIBERS]], mode="count")
        load.call(op="mark")
        attached = time.monotonic() - t0
        if attached > delay:
            log(f"    ! subscribers took {attached:.2f}s to attach (delay {delay:g}s)")
        cpu0 = cpu_seconds([hub.proc.pid])
        got = load.call(op="drain", timeout=120.0)
        cpu = cpu_seconds([hub.proc.pid]) - cpu0
        status = hub.wait_run(thread_id, run_id)
        after = _counters(hub.base)
    finally:
        other_cores = other.cores()
        load.close()
        hub.close()
    if con["connected"] != SUBSCRIBERS or got["ended"] != SUBSCRIBERS or status != "completed":
        log(f"    ! connected {con['connected']}, ended {got['ended']}, run {status}")
    delivered = after["agentstream_events_delivered"] - before["agentstream_events_delivered"]
    writes = after["agentstream_subscriber_writes"] - before["agentstream_subscriber_writes"]
    secs = got["secs"] or float("nan")
    return {
        "delivered_per_s": got["frames"] / secs,
        "frames": got["frames"],
        "secs": got["secs"],
        "events_per_write": delivered / writes if writes else 0.0,
        "hub_cpu_us_per_1000": 1e6 * cpu / got["frames"] * 1000 if got["frames"] else 0.0,
        "connected": con["connected"],
        "ended": got["ended"],
        "status": status,
        "attach_s": attached,
        "other_cpu": other_cores,
    }


def saturation_once(kind: str, cpus: tuple[int, int]) -> dict[str, Any]:
    """The fan-out benchmark's ``saturation`` workload (as ``fanout.w_saturation``), with
    the server's CPU per 1,000 delivered events over the measured window."""
    c = dict(PROFILES["full"]["saturation"])

    def run(p: Pair) -> dict[str, Any]:
        p.server.ctl.call(op="setup", keys=["s0"])
        connect_subs(p, [["s0", c["subs"]]], mode="count", sample_reads=64)
        p.server.ctl.send(
            op="saturate",
            key="s0",
            duration=c["warm"] + c["measure"],
            batch=c["batch"],
            size=c["size"],
        )
        time.sleep(c["warm"])
        p.load.call(op="mark")
        cpu0 = cpu_seconds([p.server.proc.pid])
        time.sleep(c["measure"])
        snap = p.load.call(op="snap")
        cpu = cpu_seconds([p.server.proc.pid]) - cpu0
        p.server.ctl.recv()
        return {
            "delivered_per_s": snap["rate"],
            "cpu_us_per_1000": 1e9 * cpu / snap["frames"] if snap["frames"] else 0.0,
        }

    return with_procs(kind, run, cpus)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--hubs",
        nargs="*",
        default=[f"after={sys.executable}"],
        help="NAME=PYTHON[,SRC]: hubs to measure, each from PYTHON's virtualenv "
        "(with SRC first on its PYTHONPATH: a variant of the code)",
    )
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--delay", type=float, default=6.0, help="seconds before the first token")
    ap.add_argument("--json", metavar="FILE")
    ap.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="SECS",
        help="before each measurement, wait up to SECS for other processes to leave the CPUs",
    )
    ap.add_argument("--server-cpu", type=int, default=0)
    ap.add_argument("--load-cpu", type=int, default=1)
    args = ap.parse_args(argv)
    raise_nofile()
    cpus = (args.server_cpu, args.load_cpu)
    hubs = dict(item.split("=", 1) for item in args.hubs)
    names = [f"hub:{h}" for h in hubs] + ["naive", "broker"]
    runs: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
    for rep in range(args.repeats):
        order = names if rep % 2 == 0 else names[::-1]
        for name in order:
            if args.wait_quiet:
                wait_quiet(args.wait_quiet)
            if name.startswith("hub:"):
                got = hub_once(hubs[name[4:]], args.delay, cpus)
            else:
                got = saturation_once(name, cpus)
            runs[name].append(got)
            log(
                f"  rep {rep + 1} {name:12} {got['delivered_per_s']:>12,.0f} events/s"
                f"  other cpu {got['other_cpu']:.2f}"
                + (
                    f"  events/write {got['events_per_write']:.1f}"
                    if "events_per_write" in got
                    else ""
                )
            )
    med = {n: statistics.median(r["delivered_per_s"] for r in runs[n]) for n in names}
    naive, broker = med["naive"], med["broker"]
    print(
        f"\nfast model end to end ({args.repeats} repeats, medians; "
        f"1 run x {SUBSCRIBERS} subscribers)"
    )
    print(f"{'server':14} {'events/s':>12} {'x naive':>8} {'x broker':>9}  extra")
    for n in names:
        r = runs[n]
        if n.startswith("hub:"):
            ew = statistics.median(x["events_per_write"] for x in r)
            cpu = statistics.median(x["hub_cpu_us_per_1000"] for x in r)
            extra = f"events/write {ew:.1f}, CPU {cpu:.0f} us per 1,000 delivered"
        else:
            cpu = statistics.median(x["cpu_us_per_1000"] for x in r)
            extra = f"CPU {cpu:.0f} us per 1,000 delivered"
        print(f"{n:14} {med[n]:>12,.0f} {med[n] / naive:>7.1f}x {med[n] / broker:>8.2f}x  {extra}")
    others = [r["other_cpu"] for n in names for r in runs[n]]
    print(
        f"other processes' CPU during runs: median {statistics.median(others):.2f}, "
        f"max {max(others):.2f} cores"
    )
    for n in names:
        if n.startswith("hub:"):
            ok = med[n] >= 15 * naive and med[n] >= 0.7 * broker
            print(
                f"target {n}: >= 15x naive ({med[n] / naive:.1f}x) and >= 0.7x broker "
                f"({med[n] / broker:.2f}x): {'MET' if ok else 'MISSED'}"
            )
    if args.json:
        Path(args.json).write_text(json.dumps({"medians": med, "runs": runs}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
