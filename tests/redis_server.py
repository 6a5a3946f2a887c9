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
import uuid
from collections.abc import Iterator

import pytest

from agent_runtime.bench.redis_server import RedisServer

__all__ = ["RedisServer", "redis_prefix", "redis_server", "redis_url"]


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
