"""Several hubs on one Redis: which node owns which run, cancels sent to the owner, and
the runs of a node that died failed by the survivors.

Keys (under the deployment's ``prefix``)
----------------------------------------
* ``node:{id}`` — this node's lease: a key with a time to live of ``lease`` seconds,
  renewed every ``lease / 3``. A node whose lease key is gone is presumed dead.
* ``runs:live`` — hash, run id → ``"{node id} {thread id}"``: every live run and its owner.
* ``threads:live`` — hash, thread id → run id: at most one live run per thread, across
  every node (claimed with ``HSETNX`` in the same script that records the owner).
* ``node:{id}:inbox`` — list: requests for that node (``cancel``), each naming a reply
  list ``reply:{uuid}`` that the requester pops with a timeout.
* ``reap:{run id}`` — held (``SET NX``) by the survivor failing that run, so that only one
  does.

Tasks: one heartbeat, one inbox reader (a blocking ``BLPOP``) and one reaper per node,
all tracked and cancelled by :meth:`Cluster.aclose`; releases of claims run as tracked
tasks too. The owner of a run is the only writer of its run object while it lives; a
survivor writes it only once the owner's lease has expired.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol, cast

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from .errors import (
    AgentRuntimeError,
    Conflict,
    InvalidRequest,
    NotFound,
    ServiceUnavailable,
    StorageUnavailable,
)
from .objects import Run, now
from .store.redis_scripts import CLAIM
from .store.redis_store import ClaimKeys, RedisStore

if TYPE_CHECKING:
    from broker.redis_streams import RedisRegistry

    from .objects import Message, Thread
    from .store import Store

__all__ = ["Cluster", "new_node_id"]

logger = logging.getLogger(__name__)

_RELEASE = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then redis.call('HDEL', KEYS[1], ARGV[1]) end
redis.call('HDEL', KEYS[2], ARGV[2])
return 1
"""

# KEYS: runs live. ARGV: run id, this node's id, inbox key = ARGV[3] .. owner .. ARGV[4],
# request. The run's owner (the request pushed to its inbox unless it is this node), or
# false: the run is live nowhere.
_FORWARD = """
local value = redis.call('HGET', KEYS[1], ARGV[1])
if not value then return false end
local owner = string.match(value, '^[^ ]*')
if owner ~= ARGV[2] then redis.call('RPUSH', ARGV[3] .. owner .. ARGV[4], ARGV[5]) end
return owner
"""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def new_node_id() -> str:
    """``host-pid-random``: unique per process start."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


_REMOTE_ERRORS: dict[str, type[AgentRuntimeError]] = {
    cls.__name__: cls
    for cls in (InvalidRequest, NotFound, Conflict, ServiceUnavailable, StorageUnavailable)
}
"""Errors a node's answer to a cluster request may name (``kind``): raised here as the
same class, so the client gets the answer the owner would have given. Others are 500s."""


class LiveRun(Protocol):
    """A run live on this node, as the cluster sees it."""

    @property
    def run(self) -> Run: ...

    def end(self, status: Any, message: str | None = None) -> None: ...


class LocalRuns(Protocol):
    """What the cluster needs of this node's runs (the
    :class:`~agent_runtime.runs.RunManager`): given at :meth:`Cluster.start`."""

    def live_contexts(self) -> Sequence[LiveRun]: ...

    def knows(self, thread_id: str, run_id: str) -> bool: ...

    async def cancel(self, thread_id: str, run_id: str, *, local: bool = False) -> Run: ...

    async def thread_messages(self, thread_id: str) -> list[Message]: ...


class _NoRuns:
    """Before :meth:`Cluster.start`: no run is live here."""

    def live_contexts(self) -> Sequence[LiveRun]:
        return ()

    def knows(self, thread_id: str, run_id: str) -> bool:
        return False

    async def cancel(self, thread_id: str, run_id: str, *, local: bool = False) -> Run:
        raise ServiceUnavailable("this node is not started")

    async def thread_messages(self, thread_id: str) -> list[Message]:
        return []


class Cluster:
    """This node's membership of a deployment on one Redis (see the module docstring)."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        prefix: str,
        node_id: str,
        lease: float,
        registry: RedisRegistry,
        store: Store,
        cancel_timeout: float = 5.0,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.node_id = node_id
        self.lease = lease
        self.runs: LocalRuns = _NoRuns()
        self.registry = registry
        self.store = store
        self.cancel_timeout = cancel_timeout
        self._claim = client.register_script(CLAIM.text)
        self._release = client.register_script(_RELEASE)
        self._forward = client.register_script(_FORWARD)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False
        self.reaped = 0
        """Runs of dead nodes this node has failed (for metrics and tests)."""
        self.on_orphan_failed: list[Callable[[Run], Awaitable[None]]] = []
        """Awaited, in order, with each run of a dead node this node has just failed (its
        terminal event appended): what else that run fed ends too. Errors are logged."""

    # -- keys --------------------------------------------------------------------------

    def _lease_key(self, node_id: str) -> str:
        return f"{self.prefix}node:{node_id}"

    def _inbox(self, node_id: str) -> str:
        return f"{self.prefix}node:{node_id}:inbox"

    @property
    def _live(self) -> str:
        return f"{self.prefix}runs:live"

    @property
    def _threads(self) -> str:
        return f"{self.prefix}threads:live"

    # -- lifecycle ---------------------------------------------------------------------

    async def start(self, runs: LocalRuns) -> None:
        """Take this node's lease and start its heartbeat, inbox and reaper, serving
        cancels forwarded here to ``runs`` (this node's runs)."""
        self.runs = runs
        await self._renew(first=True)
        # Runs recorded as ours are a previous process's under the same node id (it
        # died, and its lease was taken over before anyone noticed): fail them now.
        live = cast("dict[bytes, bytes]", await self.client.hgetall(self._live))
        for raw_run, value in live.items():
            node, _, thread = _text(value).partition(" ")
            if node == self.node_id:
                await self._fail_orphan(
                    node, thread, _text(raw_run), "was restarted while this run was live"
                )
        for body, name in (
            (self._every(self.lease / 3, self._renew, "renewing the lease"), "cluster heartbeat"),
            (self._serve_inbox(), "cluster inbox"),
            (self._every(self.lease / 2, self.reap, "looking for dead nodes"), "cluster reaper"),
        ):
            self._spawn(body, name)
        logger.info("node %s joined the cluster (lease %.1fs)", self.node_id, self.lease)

    def _spawn(self, body: Any, name: str) -> None:
        task = asyncio.get_running_loop().create_task(body, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def aclose(self) -> None:
        """Stop the tasks (pending releases are let finish, bounded) and give up the lease:
        call it after this node's runs have ended."""
        if self._closed:
            return
        self._closed = True
        releases = [t for t in self._tasks if t.get_name() == "cluster release"]
        if releases:
            await asyncio.wait(releases, timeout=self.cancel_timeout)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        with contextlib.suppress(RedisError, OSError):
            await self.client.delete(self._lease_key(self.node_id), self._inbox(self.node_id))

    async def _renew(self, *, first: bool = False) -> None:
        ttl_ms = max(1, int(self.lease * 1000))
        info = orjson.dumps({"pid": os.getpid(), "host": socket.gethostname()})
        renewed = await self.client.set(
            self._lease_key(self.node_id), info, px=ttl_ms, xx=not first
        )
        if not renewed:
            # Our lease expired (this process stalled): survivors may have failed our runs.
            logger.error("node %s: lease had expired; taking it again", self.node_id)
            await self.client.set(self._lease_key(self.node_id), info, px=ttl_ms)
            await self._end_reaped_runs()

    async def _end_reaped_runs(self) -> None:
        """Our live runs that another node failed while our lease was gone: stop them."""
        mine = [ctx for ctx in self.runs.live_contexts() if not ctx.run.terminal]
        if not mine:
            return
        owners = await self.client.hmget(self._live, [ctx.run.id for ctx in mine])
        for ctx, owner in zip(mine, owners, strict=True):
            if owner is None or not _text(owner).startswith(self.node_id + " "):
                ctx.end("failed", "this node lost its lease and the run was failed elsewhere")

    async def _every(self, period: float, step: Callable[[], Awaitable[object]], what: str) -> None:
        """Run ``step`` every ``period`` seconds; a Redis failure is logged and retried."""
        while True:
            await asyncio.sleep(period)
            try:
                await step()
            except (RedisError, OSError) as exc:
                logger.warning("node %s: %s failed: %s", self.node_id, what, exc)

    # -- run ownership -----------------------------------------------------------------

    async def create_run(
        self, store: Store, run: Run, *, messages: Sequence[Message], thread: Thread | None
    ) -> str | None:
        """Store a new run (:meth:`Store.create_run`), recorded as live on this node with
        its thread claimed: ``None``, or the id of the live run that already holds the
        thread (nothing is stored or recorded).

        On this deployment's :class:`RedisStore` (same Redis, same prefix) the claim is
        made by the run's own write: one script, one round trip, atomic. On another
        store, the claim (one script) comes first and is released if the write fails.
        """
        if isinstance(store, RedisStore) and self._shares(store):
            claim = ClaimKeys(self._threads, self._live, self.node_id)
            return await store.create_claimed_run(
                run, messages=messages, thread=thread, claim=claim
            )
        holder = await self.claim(run.thread_id, run.id)
        if holder is not None:
            return holder
        try:
            await store.create_run(run, messages=messages, thread=thread)
        except BaseException:
            self.release_soon(run.thread_id, run.id)
            raise
        return None

    def _shares(self, store: RedisStore) -> bool:
        """``store`` keeps its keys in this cluster's Redis and prefix."""
        return store.prefix == self.prefix and store.url == self.registry.settings.url

    async def claim(self, thread_id: str, run_id: str) -> str | None:
        """Record ``run_id`` as live on this node and claim its thread. Returns ``None``,
        or the id of the live run that already holds the thread (nothing is recorded)."""
        holder = await self._claim(
            keys=[self._threads, self._live], args=[thread_id, run_id, self.node_id]
        )
        return None if holder is None else cast(bytes, holder).decode()

    def release_soon(self, thread_id: str, run_id: str) -> None:
        """Forget a run that has ended (its claim on its thread too), in a tracked task."""
        self._spawn(self._release_now(thread_id, run_id), "cluster release")

    async def _release_now(self, thread_id: str, run_id: str) -> None:
        try:
            await self._release(keys=[self._threads, self._live], args=[thread_id, run_id])
        except (RedisError, OSError) as exc:
            logger.warning("run %s ended but could not be released in Redis: %s", run_id, exc)

    async def owner_of(self, run_id: str) -> str | None:
        """The node running ``run_id``, if it is live anywhere."""
        value = await self.client.hget(self._live, run_id)
        return None if value is None else _text(value).split(" ", 1)[0]

    # -- cancel, delivered to the owner ------------------------------------------------

    async def cancel_remote(self, thread_id: str, run_id: str) -> Run | None:
        """Cancel a run live on another node; ``None`` when it is live nowhere.

        The request goes to the owner's inbox; the owner cancels it as a local cancel
        would (``cancelling`` published, then ``cancelled``) and answers. Raises the
        owner's error, or :class:`ServiceUnavailable` if it does not answer in time.
        """
        reply = f"{self.prefix}reply:{uuid.uuid4().hex}"
        request = {"op": "cancel", "thread_id": thread_id, "run_id": run_id, "reply": reply}
        payload = orjson.dumps(request).decode()
        # The owner looked up and the request put in its inbox: one script.
        found = await self._forward(
            keys=[self._live],
            args=[run_id, self.node_id, f"{self.prefix}node:", ":inbox", payload],
        )
        owner = None if found is None else _text(found)
        if owner is None or owner == self.node_id:
            return None
        answer = await self.client.blpop([reply], timeout=self.cancel_timeout)
        if answer is None:
            with contextlib.suppress(RedisError, OSError):
                await self.client.lrem(self._inbox(owner), 1, payload)
            raise ServiceUnavailable(
                f"node {owner}, which runs {run_id}, did not answer the cancel within "
                f"{self.cancel_timeout:g}s; if it has died, the run is marked failed once "
                f"its lease ({self.lease:g}s) expires"
            )
        body = orjson.loads(answer[1])
        if "error" in body:
            sent = body["error"]
            kind = _REMOTE_ERRORS.get(sent.get("kind", ""), AgentRuntimeError)
            raise kind(sent["message"], param=sent.get("param"), code=sent.get("code"))
        return Run(**body["run"])  # as the owner answered: ``cancelling``, like a local cancel

    async def _serve_inbox(self) -> None:
        inbox = self._inbox(self.node_id)
        while True:
            try:
                # The registry's blocking-read period: below the client's socket timeout.
                item = await self.client.blpop([inbox], timeout=self.registry.settings.block)
            except (RedisError, OSError) as exc:
                logger.warning("node %s: reading the inbox failed: %s", self.node_id, exc)
                await asyncio.sleep(min(1.0, self.lease / 3))
                continue
            if item is None:
                continue
            try:
                request = orjson.loads(item[1])
                await self._answer(request)
            except Exception:
                logger.exception("node %s: a cluster request failed", self.node_id)

    async def _answer(self, request: dict[str, Any]) -> None:
        answer: dict[str, Any]
        if request.get("op") != "cancel":
            message = f"unknown op {request.get('op')!r}"
            answer = {"error": {"message": message, "kind": InvalidRequest.__name__}}
        else:
            try:
                run = await self.runs.cancel(request["thread_id"], request["run_id"], local=True)
                answer = {"run": dataclasses.asdict(run)}
            except AgentRuntimeError as exc:
                answer = {"error": {"message": str(exc), "param": exc.param, "code": exc.code}}
                answer["error"]["kind"] = type(exc).__name__
        async with self.client.pipeline(transaction=True) as pipe:
            pipe.rpush(request["reply"], orjson.dumps(answer))
            pipe.expire(request["reply"], max(1, int(self.cancel_timeout * 2)))
            await pipe.execute()

    # -- survivors fail the runs of dead nodes -----------------------------------------

    async def reap(self) -> int:
        """Fail every live run whose owner's lease has expired; returns how many this
        node failed. Safe to run on every node at once (each run is claimed by one)."""
        live = cast("dict[bytes, bytes]", await self.client.hgetall(self._live))
        owners: dict[str, list[tuple[str, str]]] = {}
        for raw_run, value in live.items():
            node, _, thread = _text(value).partition(" ")
            if node != self.node_id:
                owners.setdefault(node, []).append((thread, _text(raw_run)))
        for raw_run, value in live.items():
            # Ours but unknown here: a run whose release did not reach Redis. Release it,
            # or its thread would never take another run.
            node, _, thread = _text(value).partition(" ")
            run_id = _text(raw_run)
            if node == self.node_id and not self.runs.knows(thread, run_id):
                logger.info("run %s: ended here but still recorded live; releasing it", run_id)
                await self._release_now(thread, run_id)
        failed = 0
        for node, runs in owners.items():
            if await self.client.exists(self._lease_key(node)):
                continue
            for thread_id, run_id in runs:
                claimed = await self.client.set(
                    f"{self.prefix}reap:{run_id}", self.node_id, nx=True, ex=60
                )
                if claimed:
                    await self._fail_orphan(
                        node, thread_id, run_id, f"stopped (its lease of {self.lease:g}s expired)"
                    )
                    failed += 1
        self.reaped += failed
        return failed

    async def _fail_orphan(self, node: str, thread_id: str, run_id: str, what: str) -> None:
        """Fail a run whose node is gone: the run and its unfinished messages in the store,
        then ``thread.run.failed`` and the end of its stream for every subscriber."""
        message = f"node {node} {what} while this run was live; it was marked failed"
        logger.warning("run %s on thread %s: %s", run_id, thread_id, message)
        try:
            run = await self.store.get_run(thread_id, run_id)
        except AgentRuntimeError:
            run = None
        if run is not None and not run.terminal:
            stamp = now()
            run.status = "failed"
            run.failed_at = stamp
            run.last_error = {"code": "server_error", "message": message}
            await self.store.update_run(run)  # the state first, as a live run does
            for msg in await self.runs.thread_messages(thread_id):
                if msg.run_id == run_id and msg.status == "in_progress":
                    msg.status = "incomplete"
                    msg.incomplete_at = stamp
                    msg.incomplete_reason = "run_failed"
                    await self.store.update_message(msg)
            event_id = await self.registry.append_final(run_id, "thread.run.failed", run.to_dict())
            if event_id is not None:
                run.last_event_id = event_id
                await self.store.update_run(run)
            for hook in self.on_orphan_failed:
                try:
                    await hook(run)
                except Exception:
                    logger.exception("run %s: ending what it fed failed", run_id)
        await self._release_now(thread_id, run_id)
