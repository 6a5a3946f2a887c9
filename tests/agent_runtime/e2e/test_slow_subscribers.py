"""A slow subscriber dropped by the hub is counted in ``/metrics`` and logged.

The subscriber is a raw socket with a tiny kernel receive buffer that sends its request
and never reads. Whichever gives up on it first, the hub's stall timer (its transport
buffer above ``high_water`` for ``stall_timeout``) or the kernel's ``TCP_USER_TIMEOUT``
(sent data unacknowledged for as long: usually first, since the peer's window closes
long before the hub's buffer fills), the drop must show.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from pathlib import Path

import pytest

from ..conftest import UNIT, StartHub, eventually, write_agent

FIREHOSE = """
import asyncio

async def run(env):
    line = "x" * 1000
    while True:  # publishes as fast as it can until the run is ended
        await env.astream_text(line)
        await asyncio.sleep(0)
"""
"""An agent that never ends: whatever the kernel's buffers hold, the subscriber falls
behind (a run that ended could be taken whole into the kernel's send buffer)."""


async def test_a_dropped_slow_subscriber_is_counted_and_logged(
    start_hub: StartHub, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.INFO, logger="broker.sse")
    write_agent(tmp_path, "firehose", FIREHOSE)
    hub = await start_hub(
        agents=(tmp_path,), broker={"stall_timeout": 0.3 * UNIT, "high_water": 4096}
    )
    registry = hub.hub.registry
    thread_id, run_id = await hub.start("firehose")

    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
        sock.setblocking(False)
        port = hub.server.port
        await loop.sock_connect(sock, ("127.0.0.1", port))
        request = f"GET /v1/threads/{thread_id}/stream/{run_id} HTTP/1.1\r\nHost: x\r\n\r\n"
        await loop.sock_sendall(sock, request.encode())
        # It never reads: dropped within the stall timeout (plus scheduling).
        await eventually(
            lambda: registry.counters.stalled_disconnects == 1,
            units=10,
            what="the slow subscriber dropped and counted",
        )
    finally:
        sock.close()

    reply = await hub.request("GET", "/metrics")
    assert reply.status == 200
    lines = reply.body.decode().splitlines()
    assert "agentstream_slow_subscriber_disconnects_total 1.0" in lines
    assert registry.subscriber_count == 0
    (record,) = [r for r in caplog.records if "slow subscriber dropped" in r.getMessage()]
    assert record.levelno == logging.INFO
    message = record.getMessage()
    assert repr(run_id) in message and "events and" in message and "bytes behind" in message
