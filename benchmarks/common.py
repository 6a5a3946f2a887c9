"""Small helpers shared by the harness, the servers and the load generator.

Nothing here imports aiohttp, so the load generator stays a bare asyncio process.
"""

from __future__ import annotations

import json
import os
import resource
import socket
import time
from typing import Any

EVENT_NAME = "thread.message.delta"
SERVERS = ("broker", "naive", "raw")

_FILLER = (
    "The quick brown fox jumps over the lazy dog while the model keeps on streaming tokens "
    "to every subscriber of the run; each delta carries a few words of text and nothing else. "
) * 64


def raise_nofile() -> tuple[int, int]:
    """Raise the open-files soft limit to the hard limit; return the new (soft, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def pin(cpu: int | None) -> None:
    """Pin this process to one core (ignored when the machine has fewer cores)."""
    if cpu is None or cpu < 0:
        return
    try:
        if cpu < os.cpu_count():  # type: ignore[operator]
            os.sched_setaffinity(0, {cpu})
    except (AttributeError, OSError):
        pass


def rss_kib(pid: int | str = "self") -> int:
    """Resident set size (VmRSS) of a process, in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def make_payload(seq: int, size: int) -> dict[str, Any]:
    """A delta-like payload whose JSON is about ``size`` bytes, carrying its publish time.

    ``ts`` comes first (the load generator finds it right after ``"data":{``): wall-clock
    nanoseconds, comparable across the processes of one machine.
    """
    pad = max(1, size - 45)
    return {"ts": time.time_ns(), "seq": seq, "delta": _FILLER[:pad]}


def percentile(sorted_values: list[float], q: float) -> float | None:
    """The ``q``-quantile (0..1) of already sorted values, nearest rank."""
    if not sorted_values:
        return None
    i = min(len(sorted_values) - 1, max(0, round(q * (len(sorted_values) - 1))))
    return sorted_values[i]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LineClient:
    """Blocking JSON-lines client for a server's control port."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.sock.settimeout(None)
        self._file = self.sock.makefile("rb")

    def send(self, **cmd: Any) -> None:
        self.sock.sendall(json.dumps(cmd).encode() + b"\n")

    def recv(self, timeout: float | None = 600.0) -> Any:
        self.sock.settimeout(timeout)
        line = self._file.readline()
        if not line:
            raise ConnectionError("control channel closed")
        reply = json.loads(line)
        if isinstance(reply, dict) and "error" in reply:
            raise RuntimeError(f"server error: {reply['error']}")
        return reply

    def call(self, timeout: float | None = 600.0, **cmd: Any) -> Any:
        self.send(**cmd)
        return self.recv(timeout)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass
