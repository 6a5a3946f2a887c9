"""The hub: every long-lived part of one agentstream process, passed around explicitly.

Created by :func:`agent_runtime.api.app.create_app` (stored on the aiohttp app under
:data:`HUB`) or directly by code that embeds agentstream. Must be created on the event
loop that will run it. :meth:`Hub.aclose` ends live runs (bounded by
``config.shutdown_timeout``), drops the broker's streams and closes providers and store.

``providers`` maps extra model names to providers of the embedding code's own (a
:class:`~agent_runtime.models.scripted.ScriptedModel` in tests): a run or a chat completion
naming one, or ``config.force_model`` forcing one, is served by it. The hub does not close them.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable, Mapping

from broker import BackendUnavailable, Registry
from broker.redis_streams import RedisRegistry

from .agents import AgentCatalog, bundled_examples_dir, discover_agents
from .checkpoints import end_interrupted
from .cluster import Cluster, new_node_id
from .config import HubConfig
from .errors import ServiceUnavailable
from .isolation.host import ProcessRunner
from .isolation.pool import WorkerPool
from .models.base import ModelProvider
from .models.router import ModelRouter
from .objects import key_digest
from .responses.fold import ResponseFold
from .run_log import RunLog
from .runs import RunManager
from .store import MemoryStore, RedisStore, SQLiteStore, Store
from .watchdog import LoopWatchdog

__all__ = ["Hub"]


def _projection(key: str) -> RunLog | ResponseFold:
    """What a mirror folds a stream into: a response's stream (``resp_…``) or a run's."""
    return ResponseFold() if key.startswith("resp_") else RunLog()


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
        self._agent_folders = tuple(
            {str(p) + os.sep for a in self.catalog.list() for p in (a.path, a.path.resolve())}
        )
        self.models = ModelRouter(
            default_model=config.default_model,
            force_model=config.force_model,
            default_provider=config.default_provider,
            timeout=config.provider_timeout,
            max_retries=config.provider_max_retries,
        )
        for name, provider in (providers or {}).items():
            self.models.register(name, provider)
        self.cluster: Cluster | None = None
        redis_registry: RedisRegistry | None = None
        redis = config.redis
        if redis is not None:
            redis_registry = RedisRegistry(config.broker, redis, projection=_projection)
            self.registry: Registry = redis_registry
            if store is None:
                store = RedisStore(redis.url, prefix=redis.prefix)
        else:
            self.registry = Registry(config.broker)
        if store is None:
            store = SQLiteStore(config.database_path) if config.store == "sqlite" else MemoryStore()
        self.store: Store = store
        if redis_registry is not None and redis is not None:
            self.cluster = Cluster(
                redis_registry.client,
                prefix=redis.prefix,
                node_id=redis.node_id or new_node_id(),
                lease=redis.node_lease,
                registry=redis_registry,
                store=self.store,
            )
        self.workers: WorkerPool | None = None
        runner = None
        if config.isolation.mode == "process":
            self.workers = WorkerPool(config.isolation)
            runner = ProcessRunner(self.workers, config.isolation)
        self.runs = RunManager(
            runner=runner,
            store=self.store,
            registry=self.registry,
            catalog=self.catalog,
            models=self.models,
            config=config.runs,
            cluster=self.cluster,
        )
        self.watchdog = LoopWatchdog(
            config.loop_stall_threshold,
            run_of_task=self.runs.run_of_task,
            is_agent_file=self._is_agent_file,
        )
        """Stalls of the event loop (started by :meth:`start`, stopped by :meth:`aclose`)."""
        self.after_runs: list[Callable[[], Awaitable[None]]] = []
        """Awaited by :meth:`aclose` once every run has ended, before the store closes:
        services that write when a run ends (the Responses' final records) finish here."""
        self._closed = False
        self._started = False

    def _is_agent_file(self, filename: str) -> bool:
        """The file is an agent's code (under one of the catalog's agent folders)."""
        return any(filename.startswith(folder) for folder in self._agent_folders)

    async def start(self) -> None:
        """Make the hub ready: open the store, handle threads without an owner when API
        keys are on (see :meth:`_check_ownerless_threads`) and fail the runs that were live
        when a previous process holding this store died; then start the loop's watchdog.
        Idempotent.

        A SQLite store that cannot be opened (its data directory locked by another hub,
        or unusable) raises :class:`~agent_runtime.errors.DataDirError` and is closed.
        """
        if self._started:
            return
        self._started = True
        await self._start()
        self.watchdog.start()

    async def _start(self) -> None:
        if self.workers is not None:  # process isolation: workers ready before any run
            await self.workers.start()
        if self.cluster is not None:
            await self._check_ownerless_threads()
            # Several nodes: runs of a node that died are failed by the survivors once
            # its lease expires (see .cluster), never by a node that starts.
            try:
                await self.registry.start()
            except BackendUnavailable as exc:
                raise ServiceUnavailable(str(exc)) from exc
            await self.cluster.start(self.runs)
            return
        try:
            # The store's first operation opens it: a SQLite store takes its data
            # directory's lock before touching the database (DataDirInUse if another
            # process holds it, DataDirError if the directory is unusable).
            interrupted = await self.store.mark_interrupted_runs(
                "the hub stopped while this run was live (it was not resumed on restart)"
            )
            await self._check_ownerless_threads()
        except BaseException:
            await self.store.aclose()
            raise
        await end_interrupted(self.store, interrupted)

    async def _check_ownerless_threads(self) -> None:
        """With API keys on: adopt ownerless threads if ``adopt_unowned_threads`` says so,
        then warn once about those left (every key gets 404 for them)."""
        if not self.config.api_keys:
            return
        if self.config.adopt_unowned_threads is not None:
            adopted = await self.store.adopt_unowned_threads(
                key_digest(self.config.adopt_unowned_threads)
            )
            logger.info("adopted %d threads without an owner for the given API key", adopted)
        unowned = await self.store.count_unowned_threads()
        if unowned:
            logger.warning(
                "%d threads have no owner (created while API keys were off): no API key can "
                "reach them; start once with --adopt-unowned-threads KEY to give them to KEY",
                unowned,
            )

    async def aclose(self) -> None:
        """Graceful, ordered, time-bounded shutdown, then the watchdog's thread is
        stopped and joined. Idempotent."""
        if self._closed:
            return
        self._closed = True
        try:
            await self._aclose()
        finally:
            self.watchdog.stop()

    async def _aclose(self) -> None:
        loop = asyncio.get_running_loop()
        # 1. Let live runs finish within the grace period, then end the rest: each
        #    publishes its terminal event and closes its stream.
        await self.runs.aclose(
            grace=self.config.shutdown_grace, timeout=self.config.shutdown_timeout
        )
        if self.workers is not None:  # every run has ended: no agent is left to stop
            await self.workers.aclose()
        for finish in self.after_runs:
            try:
                await finish()
            except Exception:
                logger.exception("finishing after the runs ended failed")
        deadline = loop.time() + self.config.shutdown_timeout
        # 2. Let subscribers read to the end (bounded), 3. then drop what is left.
        idle = await self.registry.wait_idle(max(0.0, deadline - loop.time()))
        if not idle:
            logger.warning(
                "%d subscribers still connected at shutdown; disconnecting them",
                self.registry.subscriber_count,
            )
        if self.cluster is not None:
            await self.cluster.aclose()
        await self.registry.aclose(max(0.0, deadline - loop.time()))
        await self.models.aclose()
        await self.store.aclose()
