"""Processes of a benchmark run: the server under test, the load generator, and a watch on
the CPU that other processes take from them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .common import LineClient, free_port, rss_kib

ROOT = Path(__file__).resolve().parent.parent


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Server:
    """A server under test in its own process (core 0), with its control channel."""

    def __init__(self, kind: str, cpu: int, args: Sequence[str] = ()) -> None:
        """``args``: more options for ``benchmarks.servers`` (say, ``--redis-url URL``)."""
        self.kind = kind
        self.port = free_port()
        ctl_port = free_port()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "benchmarks.servers",
                kind,
                "--port",
                str(self.port),
                "--ctl-port",
                str(ctl_port),
                "--cpu",
                str(cpu),
                *args,
            ],
            cwd=ROOT,
        )
        try:
            self.ctl = LineClient(ctl_port, timeout=20.0)
        except OSError:
            self.proc.kill()
            raise

    def rss_kib(self) -> int:
        return rss_kib(self.proc.pid)

    def close(self) -> None:
        # Nothing is left to collect: kill our child rather than wait for it to tear down
        # thousands of connections.
        self.ctl.close()
        self.proc.kill()
        self.proc.wait()


class Load:
    """The load generator in its own process (core 1), driven over stdin/stdout."""

    def __init__(self, cpu: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.load", "--cpu", str(cpu)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def call(self, **cmd: Any) -> Any:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("load generator died")
        reply = json.loads(line)
        if isinstance(reply, dict) and "error" in reply:
            raise RuntimeError(f"load generator: {reply['error']}")
        return reply

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()


OTHER_CPU_WARN_DEFAULT = 0.10


def _busy_seconds() -> float:
    """CPU seconds spent so far on all cores in user, system and steal time.

    Interrupt and softirq time is left out: on loopback most of it is our own traffic.
    """
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:]
    user, nice, system, steal = (int(fields[i]) for i in (0, 1, 2, 7))
    return (user + nice + system + steal) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    """CPU seconds used so far by these processes (user + system)."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


class OtherCpu:
    """Cores used by everything but ``pids`` (other processes, even short-lived ones, and
    the hypervisor's steal) between construction and :meth:`cores`."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.t0 = time.monotonic()
        self.busy0 = _busy_seconds()
        self.ours0 = cpu_seconds(pids)

    def cores(self) -> float:
        busy = _busy_seconds() - self.busy0
        ours = cpu_seconds(self.pids) - self.ours0
        return max(0.0, busy - ours) / (time.monotonic() - self.t0)


def wait_quiet(limit: float, threshold: float = OTHER_CPU_WARN_DEFAULT) -> None:
    """Wait (at most ``limit`` seconds) until other processes use under ``threshold`` cores."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        probe = OtherCpu([os.getpid()])
        time.sleep(0.5)
        if probe.cores() < threshold:
            return


@dataclass
class Pair:
    server: Server
    load: Load


def with_procs(
    kind: str, fn: Callable[[Pair], dict[str, Any]], cpus: tuple[int, int]
) -> dict[str, Any]:
    server = Server(kind, cpus[0])
    load = Load(cpus[1])
    # Other processes on the machine (say, a test suite) take time from the pinned cores.
    other = OtherCpu([os.getpid(), server.proc.pid, load.proc.pid])
    try:
        metrics = fn(Pair(server, load))
        metrics["other_cpu"] = other.cores()
    finally:
        load.close()
        server.close()
    return metrics


def connect_subs(p: Pair, plan: list[list[Any]], **kw: Any) -> dict[str, Any]:
    got = p.load.call(op="connect", port=p.server.port, plan=plan, **kw)
    want = sum(n for _, n in plan)
    if got["connected"] != want:
        log(f"    ! {p.server.kind}: connected {got['connected']}/{want}: {got['errors']}")
    return dict(got)
