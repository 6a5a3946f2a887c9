"""Round trips to Redis per API operation on a hub that is a node on Redis (a count, not a
timing).

A private ``redis-server``, a hub in this process (``--redis``, one run slot, held by a
run that never ends, so new runs stay ``queued`` and their own tasks write nothing), and
the HTTP API through a real socket. Every ``send_packed_command`` of redis-py's
connections is one round trip (a pipeline is one); those of the node's background tasks
(inbox, heartbeat, reaper, the streams' outbox and readers, checkpoints) are left out.
Each operation is done ``--repeats`` times after a warm-up; the table gives the median
round trips and the commands of the last one.

    python -m benchmarks.redis_round_trips
"""

from __future__ import annotations

import argparse
import asyncio
import re
import statistics
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
from redis.asyncio.connection import AbstractConnection

from agent_runtime.bench.redis_server import RedisServer
from agent_runtime.config import HubConfig
from agent_runtime.server import Server

_COMMAND = re.compile(rb"\*\d+\r\n\$\d+\r\n([A-Za-z]+)\r\n")
_BACKGROUND = ("cluster ", "redis outbox", "redis mirror", "open mirror", "run checkpoints")
SLOW = "simulated:tokens=5000,rate=1"

sent: list[list[str]] = []
counting = False
_send = AbstractConnection.send_packed_command


async def _counted(self: AbstractConnection, command: Any, check_health: bool = True) -> None:
    task = asyncio.current_task()
    name = task.get_name() if task is not None else ""
    if counting and not name.startswith(_BACKGROUND):
        packed = command if isinstance(command, (bytes, str)) else b"".join(command)
        packed = packed.encode() if isinstance(packed, str) else packed
        sent.append([m.decode().upper() for m in _COMMAND.findall(packed)])
    await _send(self, command, check_health)


async def count(operation: Callable[[], Awaitable[object]]) -> list[list[str]]:
    global counting
    sent.clear()
    counting = True
    try:
        await operation()
        await asyncio.sleep(0.05)  # the store's writer has sent what was queued
    finally:
        counting = False
    return list(sent)


async def main_async(repeats: int) -> list[tuple[str, float, list[list[str]]]]:
    with RedisServer() as redis:
        config = HubConfig(
            host="127.0.0.1",
            port=0,
            force_model=SLOW,
            runs={"max_concurrent_runs": 1, "max_queued_runs": 10_000},
            redis={"url": redis.url, "prefix": "rt:", "node_id": "n1", "node_lease": 600},
        )
        async with Server(config) as server, aiohttp.ClientSession() as session:
            url = server.url + "/v1"

            async def post(path: str, body: dict[str, Any] | None = None) -> Any:
                async with session.post(url + path, json=body or {}) as response:
                    assert response.status == 200, await response.text()
                    return await response.json()

            hold = await post("/threads/runs", {"assistant_id": "async-example"})
            thread_id = hold["thread_id"]
            user = {"role": "user", "content": "hi"}
            queued: list[dict[str, Any]] = []

            async def thread_with_message() -> None:
                await post("/threads", {"messages": [user]})

            async def thread_and_run() -> None:
                body = {"assistant_id": "async-example", "thread": {"messages": [user]}}
                queued.append(await post("/threads/runs", body))

            fresh: list[str] = []  # threads made beforehand, outside the count

            async def make_threads() -> None:
                for _ in range(repeats + 1):
                    fresh.append((await post("/threads", {"messages": [user]}))["id"])

            async def run_on_thread() -> None:
                body = {"assistant_id": "async-example", "additional_messages": [user]}
                queued.append(await post(f"/threads/{fresh.pop()}/runs", body))

            async def message() -> None:
                await post(f"/threads/{thread_id}/messages", user)

            async def cancel() -> None:
                run = queued.pop()
                await post(f"/threads/{run['thread_id']}/runs/{run['id']}/cancel")

            operations: list[tuple[str, Callable[[], Awaitable[None]]]] = [
                ("POST /threads (1 message)", thread_with_message),
                ("POST /threads/runs (1 message)", thread_and_run),
                ("POST /threads/{id}/messages", message),
                ("POST /threads/{id}/runs (1 additional)", run_on_thread),
                ("POST …/runs/{id}/cancel (queued run)", cancel),
            ]
            await make_threads()
            rows = []
            for name, operation in operations:
                await operation()  # warm-up: connections open, scripts loaded
                counts, last = [], []
                for _ in range(repeats):
                    last = await count(operation)
                    counts.append(len(last))
                rows.append((name, statistics.median(counts), last))
            return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    AbstractConnection.send_packed_command = _counted  # type: ignore[method-assign]
    rows = asyncio.run(main_async(args.repeats))
    print(f"round trips to Redis per operation (median of {args.repeats}; commands of the last)")
    for name, median, commands in rows:
        print(f"  {name:42} {median:>4g}   {' | '.join(' '.join(c) for c in commands)}")


if __name__ == "__main__":
    main()
