"""A synchronous agent's ``env.add_reply(text)`` reaches a subscriber in one write, over
a real socket: the broker frames each write as one HTTP/1.1 chunk, so a raw client that
reads the chunks finds each reply's ``created``, ``in_progress``, ``delta`` and
``completed`` in one chunk; and a client that reads the thread right after seeing the
``completed`` finds the message there, completed.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from ..conftest import StartHub, with_examples, within, write_agent

GATED_REPLIES = """
import os
import time

env = globals().get("env")
if env is not None:
    gate = env.list_messages()[-1]["content"]  # a file the test creates once subscribed
    while not os.path.exists(gate):
        time.sleep(0.005)
    for i in range(3):
        env.add_reply(f"tick {i}")
"""


async def read_chunk(reader: asyncio.StreamReader) -> list[tuple[str, dict[str, Any]]] | None:
    """The next HTTP chunk of a chunked SSE response as its events (name, data); ``None``
    at the last chunk."""
    size = int((await reader.readuntil(b"\r\n")).strip(), 16)
    body = await reader.readexactly(size + 2)
    if size == 0:
        return None
    return [
        (str(frame["event"]), frame["data"])
        for line in body[:-2].decode().splitlines()
        if line.startswith("data: ") and (frame := json.loads(line[6:]))
    ]


@pytest.mark.parametrize(
    ("store", "mode"),
    [("sqlite", "none"), ("memory", "none"), ("sqlite", "process")],
    ids=["sqlite", "memory", "sqlite-process"],
)
async def test_each_reply_of_a_sync_agent_arrives_in_one_chunk_after_it_is_stored(
    start_hub: StartHub, tmp_path: Path, store: str, mode: str
) -> None:
    write_agent(tmp_path / "agents", "gated-replies", GATED_REPLIES)
    hub = await start_hub(
        agents=with_examples(tmp_path / "agents"),
        store=store,
        data_dir=tmp_path / "data",
        isolation={"mode": mode, "workers": 1} if mode == "process" else {},
    )
    gate = tmp_path / "gate"
    thread_id, run_id = await hub.start("gated-replies", str(gate))
    where = urlsplit(hub.url)
    assert where.hostname is not None and where.port is not None
    reader, writer = await asyncio.open_connection(where.hostname, where.port)
    try:
        writer.write(
            f"GET /v1/threads/{thread_id}/stream/{run_id} HTTP/1.1\r\n"
            f"Host: {where.hostname}\r\nConnection: close\r\n\r\n".encode()
        )
        async with within(5):
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200"), head
            assert b"transfer-encoding: chunked" in head.lower(), head
            await read_chunk(reader)  # the backlog: once it is here, we are subscribed
        gate.touch()
        seen: list[dict[str, Any]] = []
        chunks: list[list[tuple[str, dict[str, Any]]]] = []
        async with within(10):
            while (events := await read_chunk(reader)) is not None:
                chunks.append(events)
                for name, data in events:
                    if name == "thread.message.completed":
                        # The thread, read as soon as the completion arrived.
                        stored = {m["id"]: m for m in await hub.messages(thread_id)}
                        seen.append(stored.get(data["id"], {}))
    finally:
        writer.close()
    message_chunks = [
        [name for name, _ in chunk if name.startswith("thread.message.")] for chunk in chunks
    ]
    replies = [names for names in message_chunks if names]
    assert (
        replies
        == [
            [
                "thread.message.created",
                "thread.message.in_progress",
                "thread.message.delta",
                "thread.message.completed",
            ]
        ]
        * 3
    ), message_chunks
    # Read right after its completed arrived, the thread has each message, completed.
    assert [m.get("status") for m in seen] == ["completed"] * 3
    assert [m["content"][0]["text"]["value"] for m in seen] == [f"tick {i}" for i in range(3)]
