"""A real ``redis-server`` on loopback for the tests (Debian's package; ``scripts/test``
installs it). One server per test session; each test gets its own key prefix, so tests
never see each other's keys and need no flushing.

Tests that need Redis take the ``redis_url`` fixture (and ``redis_prefix``); they are
skipped, loudly, only when ``redis-server`` is not installed *and*
``AGENTSTREAM_REQUIRE_REDIS`` is unset — CI sets it, so there a missing server fails.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

__all__ = ["RedisServer", "redis_prefix", "redis_server", "redis_url"]


class RedisServer:
    """One ``redis-server`` process, persistence off, on a free loopback port."""

    def __init__(self, workdir: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise FileNotFoundError("redis-server is not installed (apt-get install redis-server)")
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._log = (workdir / "redis.log").open("wb")
        self.process = subprocess.Popen(
            [
                binary,
                "--bind", "127.0.0.1",
                "--port", str(self.port),
                "--save", "",
                "--appendonly", "no",
                "--dir", str(workdir),
                "--maxclients", "10000",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not start; see {workdir / 'redis.log'}")
            time.sleep(0.02)  # a process starting: nothing to await

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._log.close()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    if shutil.which("redis-server") is None and not os.environ.get("AGENTSTREAM_REQUIRE_REDIS"):
        pytest.skip("redis-server is not installed (scripts/test installs it)")
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


@pytest.fixture
def redis_prefix() -> str:
    """A key prefix of this test's own."""
    return f"t{uuid.uuid4().hex[:10]}:"
