"""The hub: every long-lived part of one agentstream process, passed around explicitly.

Created by :func:`agent_runtime.api.app.create_app` (stored on the aiohttp app under
:data:`HUB`) or directly by code that embeds agentstream. Must be created on the event
loop that will run it. :meth:`Hub.aclose` ends live runs (bounded by
``config.shutdown_timeout``), drops the broker's streams and closes providers and store.

``providers`` maps extra model names to providers of the embedding code's own (a
:class:`~agent_runtime.models.scripted.ScriptedModel` in tests): a run or a chat completion
naming one, or ``config.model`` forcing one, is served by it. The hub does not close them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

from broker import Registry

from .agents import AgentCatalog, bundled_examples_dir, discover_agents
from .config import HubConfig
from .models.base import ModelProvider
from .models.router import ModelRouter
from .runs import RunManager
from .store import MemoryStore, SQLiteStore, Store

__all__ = ["Hub"]

logger = logging.getLogger(__name__)


class Hub:
    def __init__(
        self,
        config: HubConfig,
        *,
        store: Store | None = None,
        providers: Mapping[str, ModelProvider] | None = None,
    ) -> None:
        self.config = config
        paths = list(config.agents) or [bundled_examples_dir()]
        self.catalog = AgentCatalog(discover_agents(paths))
        self.models = ModelRouter(
            default_model=config.default_model,
            force_model=config.model,
            default_provider=config.default_provider,
            timeout=config.provider_timeout,
            max_retries=config.provider_max_retries,
        )
        for name, provider in (providers or {}).items():
            self.models.register(name, provider)
        self.registry = Registry(config.broker_config())
        if store is None:
            store = SQLiteStore(config.database_path) if config.store == "sqlite" else MemoryStore()
        self.store: Store = store
        self.runs = RunManager(
            store=self.store,
            registry=self.registry,
            catalog=self.catalog,
            models=self.models,
            config=config.runs_config(),
        )
        self._closed = False
        self._started = False

    async def start(self) -> None:
        """Make the hub ready: open the store and fail the runs that were live when a
        previous process holding this store died. Idempotent."""
        if self._started:
            return
        self._started = True
        interrupted = await self.store.mark_interrupted_runs(
            "the hub stopped while this run was live (it was not resumed on restart)"
        )
        for run in interrupted:
            logger.warning(
                "run %s on thread %s was live at the last stop: marked failed",
                run.id,
                run.thread_id,
            )

    async def aclose(self) -> None:
        """Graceful, ordered, time-bounded shutdown. Idempotent."""
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()
        # 1. Let live runs finish within the grace period, then end the rest: each
        #    publishes its terminal event and closes its stream.
        await self.runs.shutdown(
            grace=self.config.shutdown_grace, timeout=self.config.shutdown_timeout
        )
        deadline = loop.time() + self.config.shutdown_timeout
        # 2. Let subscribers read to the end (bounded), 3. then drop what is left.
        idle = await self.registry.wait_idle(max(0.0, deadline - loop.time()))
        if not idle:
            logger.warning(
                "%d subscribers still connected at shutdown; disconnecting them",
                self.registry.subscriber_count,
            )
        self.registry.shutdown()
        await self.models.aclose()
        await self.store.close()
