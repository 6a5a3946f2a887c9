"""A real :class:`RunManager` on a memory store, for the unit tests of the runs package:
no HTTP, no sockets."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from agent_runtime.agents import AgentCatalog, bundled_examples_dir, discover_agents
from agent_runtime.config import RunsConfig
from agent_runtime.models.router import ModelRouter
from agent_runtime.objects import Message, Thread, new_id, now
from agent_runtime.runs import RunManager
from agent_runtime.store import MemoryStore
from broker import BrokerConfig, Registry

__all__ = ["a_thread", "run_manager"]


@asynccontextmanager
async def run_manager(model: str) -> AsyncIterator[RunManager]:
    """A manager of the bundled examples whose runs default to ``model``; closed after."""
    runs = RunManager(
        store=MemoryStore(),
        registry=Registry(BrokerConfig()),
        catalog=AgentCatalog(discover_agents([bundled_examples_dir()])),
        models=ModelRouter(default_model=model),
        config=RunsConfig(checkpoint_interval=0),
    )
    try:
        yield runs
    finally:
        await runs.aclose(timeout=1)


async def a_thread(manager: RunManager) -> str:
    """A new thread holding one user message; its id."""
    thread = Thread(id=new_id("thread"), created_at=now())
    await manager.store.create_thread(thread)
    await manager.store.add_message(
        Message(id=new_id("msg"), thread_id=thread.id, role="user", content="hi", created_at=now())
    )
    return thread.id
