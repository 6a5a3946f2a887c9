"""A private ``redis-server`` process, for tests and benchmarks of the Redis backend.

Debian's ``redis-server`` binary on loopback, a free port, persistence off, its log in its
own work directory, optionally pinned to one core (so a benchmark can keep it off the
hub's core)::

    with RedisServer(cpu=1) as redis:
        config = HubConfig(redis={"url": redis.url, "prefix": "bench:"})

Construction starts the server and returns once it answers ``PING`` (it raises
:class:`RedisServerError` with the log's tail if it does not); :meth:`stop` terminates it
and removes a work directory it created. Blocking calls throughout: use it from fixtures
and drivers, not from inside a running event loop's hot path.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

__all__ = ["RedisServer", "RedisServerError"]

_START_TIMEOUT = 10.0


class RedisServerError(RuntimeError):
    """``redis-server`` is missing or did not start."""


class RedisServer:
    """One ``redis-server`` process (see the module docs)."""

    def __init__(self, workdir: Path | None = None, *, cpu: int | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RedisServerError("redis-server is not installed (apt-get install redis-server)")
        self._own_dir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="redis-")) if workdir is None else workdir
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port: int = probe.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.log = self.workdir / "redis.log"
        command = [binary, "--bind", "127.0.0.1", "--port", str(self.port)]
        command += ["--save", "", "--appendonly", "no", "--dir", str(self.workdir)]
        command += ["--maxclients", "10000", "--logfile", str(self.log)]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if cpu is not None:
            try:
                os.sched_setaffinity(self.process.pid, {cpu})
            except (AttributeError, OSError):
                pass  # one core, or no affinity here: unpinned
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + _START_TIMEOUT
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                tail = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
                self.stop()
                raise RedisServerError(f"redis-server did not start:\n{tail}")
            time.sleep(0.02)  # a process starting: there is nothing to await

    def cpu_seconds(self) -> float:
        """User + system CPU time the server has used so far."""
        with open(f"/proc/{self.process.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        """Terminate the server (kill it after 10 s). Idempotent."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stderr is not None:
            self.process.stderr.close()
        if self._own_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
