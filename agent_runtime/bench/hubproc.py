"""A hub in a child process for ``agentstream bench`` without ``--url``, and CPU accounting.

The child is ``python -m agent_runtime.bench.hubproc`` (:func:`main`: ``serve`` on
127.0.0.1, a free port, the in-memory store, finished streams retained for 60 s, agents in
the hub's process unless ``isolation`` says otherwise) pinned to one core (it pins itself
too, before it starts, so its agent worker processes inherit the core); its URL is read
from its ``agentstream listening on …`` log line. :func:`pin` pins the calling process.
:class:`CpuMeter` turns process CPU time into "fraction of one core" per interval, for
this process (``time.process_time``) or another (``/proc/<pid>/stat``).

Concurrency: :class:`HubProcess` is used from one event loop; :meth:`HubProcess.stop` sends
SIGTERM (the hub's graceful shutdown), then kills the child if it has not exited in time.
A cancelled :meth:`HubProcess.start` kills the child before re-raising.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import os
import re
import resource
import signal
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "CpuMeter",
    "CpuPressure",
    "HubProcess",
    "HubStartError",
    "MachineMeter",
    "pin",
    "raise_nofile",
]

logger = logging.getLogger(__name__)

_LISTENING = re.compile(r"agentstream listening on (http://\S+)")
_START_TIMEOUT = 30.0
_STOP_TIMEOUT = 15.0


class HubStartError(RuntimeError):
    """The child hub did not start; the message holds its last log lines."""


def pin(cpu: int, pid: int = 0) -> bool:
    """Pin process ``pid`` (0: this one) to core ``cpu``; False where that is impossible
    (one core, no ``sched_setaffinity``, or the core is not available).

    A core is available if the machine has it and the kernel lets us use it, whatever
    the caller's own affinity: a harness already pinned to core 1 can pin its hub child
    to core 0."""
    try:
        if (os.cpu_count() or 1) < 2 or not 0 <= cpu < (os.cpu_count() or 1):
            return False
        os.sched_setaffinity(pid, {cpu})
    except (AttributeError, OSError):
        return False
    return True


def raise_nofile() -> int:
    """Raise the open-files soft limit to the hard limit (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class CpuMeter:
    """CPU used per wall-clock second since the previous :meth:`sample` (1.0 = one core)."""

    def __init__(self, pid: int | None = None) -> None:
        self.pid = pid
        self._ticks = os.sysconf("SC_CLK_TCK") if pid is not None else 1
        self._last_cpu = self._cpu()
        self._last_wall = time.monotonic()

    def _cpu(self) -> float:
        if self.pid is None:
            return time.process_time()
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return self._last_cpu if hasattr(self, "_last_cpu") else 0.0
        return (int(fields[11]) + int(fields[12])) / self._ticks  # utime + stime

    def sample(self) -> float:
        cpu, wall = self._cpu(), time.monotonic()
        spent = wall - self._last_wall
        used = (cpu - self._last_cpu) / spent if spent > 0 else 0.0
        self._last_cpu, self._last_wall = cpu, wall
        return max(0.0, used)


class MachineMeter:
    """Cores busy on the whole machine per wall-clock second since the previous
    :meth:`sample` (from ``/proc/stat``; None where it cannot be read)."""

    def __init__(self) -> None:
        self._ticks = os.sysconf("SC_CLK_TCK")
        self._last = self._busy()
        self._last_wall = time.monotonic()

    @staticmethod
    def _busy() -> int | None:
        try:
            with open("/proc/stat") as stat:
                fields = stat.readline().split()
        except OSError:
            return None
        if not fields or fields[0] != "cpu":
            return None
        user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[1:9])
        return user + nice + system + irq + softirq + steal

    def sample(self) -> float | None:
        busy, wall = self._busy(), time.monotonic()
        last, spent = self._last, wall - self._last_wall
        self._last, self._last_wall = busy, wall
        if busy is None or last is None or spent <= 0:
            return None
        return max(0.0, (busy - last) / self._ticks / spent)


class CpuPressure:
    """The fraction of wall-clock time some runnable task of the machine waited for a CPU
    between :meth:`start` and :meth:`stop` (Linux's ``/proc/pressure/cpu``, "some"): how
    much the machine's other work delayed everyone's, the bench and its hub included.
    None where the kernel does not report it."""

    def __init__(self) -> None:
        self._start: tuple[int, float] | None = None
        self.fraction: float | None = None

    @staticmethod
    def _total() -> int | None:
        try:
            with open("/proc/pressure/cpu") as stat:
                line = stat.readline()
        except OSError:
            return None
        for field in line.split():
            if field.startswith("total="):
                return int(field[6:])
        return None

    def start(self) -> None:
        total = self._total()
        self._start = None if total is None else (total, time.monotonic())

    def stop(self) -> float | None:
        total = self._total()
        if self._start is not None and total is not None:
            spent = time.monotonic() - self._start[1]
            if spent > 0:
                self.fraction = round(min(1.0, (total - self._start[0]) / 1e6 / spent), 3)
        return self.fraction


class HubProcess:
    """``agentstream serve`` in a child process, pinned to ``cpu`` (see the module docs)."""

    def __init__(
        self,
        *,
        agents: Sequence[Path] = (),
        cpu: int | None = 0,
        redis: tuple[str, str] | None = None,
        isolation: Mapping[str, Any] | None = None,
        start_timeout: float = _START_TIMEOUT,
        python: str | None = None,
    ) -> None:
        """``redis``: (URL, key prefix) to run the hub as a node on Redis. ``isolation``:
        the hub's ``HubConfig.isolation`` section (say ``{"mode": "process", "workers":
        8}``); ``start_timeout``: seconds the child has to listen (a pool of worker
        processes is started before it does). ``python``: the interpreter to run the hub
        with (default: this one), e.g. another checkout's, to compare two hubs under the
        same bench."""
        self.agents = list(agents)
        self.cpu = cpu
        self.redis = redis
        self.isolation = dict(isolation) if isolation is not None else None
        self.start_timeout = start_timeout
        self.python = python or sys.executable
        self.pinned = False
        self.url = ""
        self.proc: asyncio.subprocess.Process | None = None
        self.log: collections.deque[str] = collections.deque(maxlen=40)
        self._drain: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    async def start(self) -> str:
        """Start the child and return its URL once it listens."""
        command = [self.python, "-m", "agent_runtime.bench.hubproc"]
        if self.cpu is not None:
            command += ["--cpu", str(self.cpu)]
        if self.redis is not None:
            command += ["--redis", *self.redis]
        if self.isolation is not None:
            command += ["--isolation", json.dumps(self.isolation)]
        command += [str(folder.resolve()) for folder in self.agents]
        # Another interpreter runs from a neutral folder: ``-m`` would otherwise import
        # the package of the current folder, not that interpreter's own.
        cwd = None if self.python == sys.executable else tempfile.gettempdir()
        self.proc = await asyncio.create_subprocess_exec(
            *command,
            cwd=cwd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        if self.cpu is not None:
            self.pinned = pin(self.cpu, self.proc.pid)
        try:
            async with asyncio.timeout(self.start_timeout):
                self.url = await self._wait_listening()
        except BaseException as exc:
            await self.aclose()
            if isinstance(exc, TimeoutError):
                raise HubStartError(self._failure("did not start listening in time")) from None
            raise
        self._drain = asyncio.create_task(self._read_log())
        logger.info("hub process %d listening on %s", self.proc.pid, self.url)
        return self.url

    async def _wait_listening(self) -> str:
        assert self.proc is not None and self.proc.stderr is not None
        while True:
            raw = await self.proc.stderr.readline()
            if not raw:
                await self.proc.wait()
                raise HubStartError(self._failure(f"exited with status {self.proc.returncode}"))
            line = raw.decode(errors="replace").rstrip()
            self.log.append(line)
            found = _LISTENING.search(line)
            if found:
                return found.group(1)

    async def _read_log(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        while raw := await self.proc.stderr.readline():
            self.log.append(raw.decode(errors="replace").rstrip())

    def _failure(self, what: str) -> str:
        tail = "\n".join(f"  {line}" for line in self.log) or "  (no output)"
        return f"the hub process {what}; its last output:\n{tail}"

    async def aclose(self) -> None:
        """SIGTERM, wait up to 15 s, then SIGKILL. Idempotent."""
        proc = self.proc
        if proc is None:
            return
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(_STOP_TIMEOUT):
                    await proc.wait()
            except TimeoutError:
                logger.warning("hub process %d did not stop; killing it", proc.pid)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if self._drain is not None:
            self._drain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._drain
            self._drain = None


def main(argv: Sequence[str] | None = None) -> None:
    """The child: ``python -m agent_runtime.bench.hubproc [--cpu N] [--redis URL PREFIX]
    [--isolation JSON] [AGENT_DIR ...]``."""
    from ..config import HubConfig
    from ..server import serve

    args = list(sys.argv[1:] if argv is None else argv)
    redis: dict[str, str] | None = None
    isolation: dict[str, Any] = {}
    if args[:1] == ["--cpu"]:
        pin(int(args[1]))  # before any worker process is started: they inherit it
        del args[:2]
    if args[:1] == ["--redis"]:
        redis = {"url": args[1], "prefix": args[2]}
        del args[:3]
    if args[:1] == ["--isolation"]:
        isolation = json.loads(args[1])
        del args[:2]
    folders = tuple(Path(arg) for arg in args)
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    raise_nofile()
    config = HubConfig(
        host="127.0.0.1",
        port=0,
        agents=folders,
        broker={"retention": 60.0},
        redis=redis,
        isolation=isolation,
    )
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(config))


if __name__ == "__main__":
    main()
