"""A store on Redis, shared by every node of a deployment (see :mod:`agent_runtime.cluster`).

Key layout (every key starts with ``prefix``)
---------------------------------------------
* ``thread:{id}`` — the thread, as JSON;
* ``thread:{id}:m`` / ``thread:{id}:r`` — sorted sets of its message / run ids, scored by
  ``thread:{id}:seq`` (an ``INCR`` counter): insertion order, whatever ``created_at`` says;
* ``thread:{id}:mh`` / ``thread:{id}:rh`` — hashes of id → the message / run as JSON;
* ``thread:{id}:s`` / ``thread:{id}:sh`` — the same for the run steps of all its runs (a
  run's steps are listed from the thread's, filtered by run).

Atomicity and order
-------------------
Every write is one Lua script (checks and changes together: a message is never added to a
thread being deleted, adding a message again replaces it in place), sent by digest
(``EVALSHA``; see :mod:`.redis_scripts`). A run's creation is one script: the thread
checked (or created, with its messages), the run's messages, the thread claimed for the
run across nodes (:meth:`RedisStore.create_claimed_run`) and the run. Writes of one store
object go out in the order they were called: they are queued, and one writer task sends
everything queued during a loop turn as one pipeline on one connection (so many runs'
writes share a round trip, and two updates of a run are never reordered by the
connection pool). Reads use the pool freely. Objects are serialised on
the call, so a caller mutating them afterwards changes nothing stored.

Lists are paginated here, from the thread's whole index (one round trip), with the same
rules as the in-memory store (:func:`~agent_runtime.store.memory.paginate`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import Sequence
from typing import Any, NamedTuple, TypeVar

import orjson
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError, RedisError

from ..errors import NotFound, ServiceUnavailable
from ..objects import Message, Run, RunStep, Thread
from .base import Order, Page
from .memory import paginate
from .redis_scripts import (
    ADOPT,
    CREATE_RUN,
    CREATE_THREAD,
    DELETE_THREAD,
    PUT,
    PUT_LOG,
    PUT_STEP,
    REPLACE,
    SCRIPTS,
    Script,
)

__all__ = ["ClaimKeys", "RedisStore"]

T = TypeVar("T", Message, Run)

_SCAN_BATCH = 1000


def _thread_missing(thread_id: str) -> NotFound:
    return NotFound(f"No thread found with id '{thread_id}'.", param="thread_id")


def _run_missing(run_id: str) -> NotFound:
    return NotFound(f"No run found with id '{run_id}'.", param="run_id")


def _dump(obj: Any) -> bytes:
    return orjson.dumps(dataclasses.asdict(obj))


class ClaimKeys(NamedTuple):
    """A cluster's claim of a thread for a new run, made in the run's own write (see
    :meth:`RedisStore.create_claimed_run` and :mod:`agent_runtime.cluster`)."""

    threads: str
    """Hash: thread id → its live run's id."""
    runs: str
    """Hash: run id → ``"{node id} {thread id}"``."""
    node_id: str


class _Write(NamedTuple):
    script: Script
    keys: list[str]
    args: list[Any]
    future: asyncio.Future[Any]


class RedisStore:
    """Threads, messages and runs in Redis. See the module docstring."""

    def __init__(
        self, url: str, *, prefix: str = "agentstream:", max_connections: int = 100
    ) -> None:
        self.url = url
        self.prefix = prefix
        # Reads of many requests at once share the pool; beyond its size they wait for a
        # connection (20 s at most) rather than fail.
        self._client = aioredis.Redis.from_pool(
            aioredis.BlockingConnectionPool.from_url(
                url, max_connections=max_connections, timeout=20, protocol=2
            )
        )
        self._queue: list[_Write] = []
        self._loaded = False
        """Redis has the scripts (``SCRIPT LOAD`` sent and answered)."""
        self._writer: asyncio.Task[None] | None = None
        self._closed = False

    @classmethod
    async def open(cls, url: str, *, prefix: str = "agentstream:") -> RedisStore:
        """A store on ``url``, checked reachable (:class:`ServiceUnavailable` if not)."""
        store = cls(url, prefix=prefix)
        try:
            await store._client.ping()
        except (RedisError, OSError) as exc:
            await store.aclose()
            raise ServiceUnavailable(f"cannot reach Redis at {url}: {exc}") from exc
        return store

    def _keys(self, thread_id: str, kind: str) -> list[str]:
        base = f"{self.prefix}thread:{thread_id}"
        return [base, f"{base}:{kind}", f"{base}:{kind}h", f"{base}:seq"]

    def _write(self, script: Script, keys: list[str], args: list[Any]) -> asyncio.Future[Any]:
        """Queue one write (a script); its result later.

        Every write queued during a loop turn goes out in one pipeline, in call order, on
        one connection, so writes apply in the order they were called and many runs'
        writes cost one round trip. The write happens even if the caller is cancelled.
        """
        if self._closed:
            raise ServiceUnavailable("the store is closed")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append(_Write(script, keys, args, future))
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(
                self._drain(), name="redis store writer"
            )
        return future

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                results = await self._send(batch)
                for write, result in zip(batch, results, strict=True):
                    if write.future.done():
                        continue
                    if isinstance(result, (RedisError, OSError)):
                        write.future.set_exception(
                            ServiceUnavailable(f"the store (Redis at {self.url}) failed: {result}")
                        )
                    else:
                        write.future.set_result(result)
        finally:
            self._writer = None

    async def _send(self, batch: list[_Write]) -> list[Any]:
        """One pipeline of ``EVALSHA``: the scripts' ``SCRIPT LOAD`` ahead of it until
        Redis has them (the first pipeline, and after a ``NOSCRIPT``: then the writes
        refused are sent again, once, in order; see :mod:`.redis_scripts`)."""
        results: list[Any] = [None] * len(batch)
        todo = list(range(len(batch)))
        for _attempt in range(2):
            load = not self._loaded
            try:
                async with self._client.pipeline(transaction=False) as pipe:
                    if load:
                        for script in SCRIPTS:
                            pipe.script_load(script.text)
                    for i in todo:
                        write = batch[i]
                        pipe.evalsha(write.script.sha, len(write.keys), *write.keys, *write.args)
                    replies = await pipe.execute(raise_on_error=False)
            except (RedisError, OSError) as exc:
                for i in todo:
                    results[i] = exc
                return results
            if load:
                loads, replies = replies[: len(SCRIPTS)], replies[len(SCRIPTS) :]
                self._loaded = not any(isinstance(r, Exception) for r in loads)
            for i, reply in zip(todo, replies, strict=True):
                results[i] = reply
            todo = [i for i in todo if isinstance(results[i], NoScriptError)]
            if not todo:
                break
            self._loaded = False  # Redis forgot the scripts: load them, resend those
        return results

    async def _script(self, script: Script, keys: list[str], args: list[Any]) -> Any:
        return await asyncio.shield(self._write(script, keys, args))

    async def _run(self, script: Script, keys: list[str], args: list[Any]) -> int:
        return int(await self._script(script, keys, args))

    async def _read(self, *commands: tuple[str, tuple[Any, ...]]) -> list[Any]:
        try:
            async with self._client.pipeline(transaction=True) as pipe:
                for name, args in commands:
                    getattr(pipe, name)(*args)
                return await pipe.execute()
        except (RedisError, OSError) as exc:
            raise ServiceUnavailable(f"the store (Redis at {self.url}) failed: {exc}") from exc

    # -- threads ---------------------------------------------------------------------

    async def create_thread(self, thread: Thread, messages: Sequence[Message] = ()) -> None:
        """The thread and its messages: one script."""
        keys = self._keys(thread.id, "m")
        args: list[Any] = [_dump(thread)]
        for message in messages:
            args += [message.id, _dump(message)]
        await self._run(CREATE_THREAD, keys, args)

    async def get_thread(self, thread_id: str) -> Thread:
        (raw,) = await self._read(("get", (f"{self.prefix}thread:{thread_id}",)))
        if raw is None:
            raise _thread_missing(thread_id)
        return Thread(**orjson.loads(raw))

    async def _unowned_thread_keys(self) -> list[str]:
        """The keys of every thread without an owner: one ``SCAN`` over the prefix's
        thread keys (their messages' and runs' keys skipped), read in batches."""
        base = f"{self.prefix}thread:"
        pattern = re.sub(r"([*?\[\]\\])", r"\\\1", base) + "*"
        found: list[str] = []
        try:
            keys = [
                key
                async for key in self._client.scan_iter(match=pattern, count=_SCAN_BATCH)
                if ":" not in key.decode()[len(base) :]
            ]
            for start in range(0, len(keys), _SCAN_BATCH):
                batch = keys[start : start + _SCAN_BATCH]
                for key, raw in zip(batch, await self._client.mget(batch), strict=True):
                    if raw is not None and orjson.loads(raw).get("owner") is None:
                        found.append(key.decode())
        except (RedisError, OSError) as exc:
            raise ServiceUnavailable(f"the store (Redis at {self.url}) failed: {exc}") from exc
        return found

    async def count_unowned_threads(self) -> int:
        return len(await self._unowned_thread_keys())

    async def adopt_unowned_threads(self, owner: str) -> int:
        """Each thread is adopted by one script, which checks it is still ownerless; all
        are queued at once, so they go out in pipelines."""
        keys = await self._unowned_thread_keys()
        done = await asyncio.gather(*(self._run(ADOPT, [key], [owner]) for key in keys))
        return sum(done)

    async def delete_thread(self, thread_id: str) -> None:
        base = f"{self.prefix}thread:{thread_id}"
        keys = [base, f"{base}:m", f"{base}:mh", f"{base}:r", f"{base}:rh", f"{base}:seq"]
        keys.append(f"{base}:log")
        keys += [f"{base}:s", f"{base}:sh"]
        if not await self._run(DELETE_THREAD, keys, []):
            raise _thread_missing(thread_id)

    # -- messages --------------------------------------------------------------------

    async def add_message(self, message: Message) -> None:
        keys = self._keys(message.thread_id, "m")
        if not await self._run(PUT, keys, [message.id, _dump(message)]):
            raise _thread_missing(message.thread_id)

    async def update_message(self, message: Message) -> None:
        keys = self._keys(message.thread_id, "m")
        done = await self._run(REPLACE, keys, [message.id, _dump(message)])
        if done == 0:
            raise _thread_missing(message.thread_id)
        if done < 0:
            raise NotFound(f"No message found with id '{message.id}'.", param="message_id")

    async def get_message(self, thread_id: str, message_id: str) -> Message:
        return await self._one(thread_id, "m", message_id, Message, "message")

    async def _one(self, thread_id: str, kind: str, item_id: str, cls: type[T], what: str) -> T:
        """The message (``kind`` "m") or run ("r") ``item_id`` of a thread, or NotFound."""
        thread, _index, table, _seq = self._keys(thread_id, kind)
        exists, raw = await self._read(("exists", (thread,)), ("hget", (table, item_id)))
        if not exists:
            raise _thread_missing(thread_id)
        if raw is None:
            raise NotFound(f"No {what} found with id '{item_id}'.", param=f"{what}_id")
        return cls(**orjson.loads(raw))

    async def _all(self, thread_id: str, kind: str, cls: type[T]) -> list[T]:
        thread, index, table, _seq = self._keys(thread_id, kind)
        exists, ids, rows = await self._read(
            ("exists", (thread,)), ("zrange", (index, 0, -1)), ("hgetall", (table,))
        )
        if not exists:
            raise _thread_missing(thread_id)
        return [cls(**orjson.loads(rows[i])) for i in ids if i in rows]

    async def list_messages(
        self,
        thread_id: str,
        *,
        order: Order = "desc",
        limit: int = 20,
        after: str | None = None,
        before: str | None = None,
        run_id: str | None = None,
    ) -> Page[Message]:
        items = await self._all(thread_id, "m", Message)
        if run_id is not None:
            items = [m for m in items if m.run_id == run_id]
        return paginate(items, order=order, limit=limit, after=after, before=before)

    # -- runs ------------------------------------------------------------------------

    async def create_run(
        self, run: Run, *, messages: Sequence[Message] = (), thread: Thread | None = None
    ) -> None:
        """The run, its messages and its new thread (if any): one script."""
        await self.create_claimed_run(run, messages=messages, thread=thread)

    async def create_claimed_run(
        self,
        run: Run,
        *,
        messages: Sequence[Message] = (),
        thread: Thread | None = None,
        claim: ClaimKeys | None = None,
    ) -> str | None:
        """As :meth:`create_run`, and with ``claim``, the thread claimed for the run
        across nodes in the same script: ``None``, or the id of the live run holding the
        thread (then nothing is written). One round trip (shared with the other writes
        queued in the same loop turn). Raises ``NotFound`` (no thread)."""
        thread_key, m_index, m_table, seq = self._keys(run.thread_id, "m")
        _thread, r_index, r_table, _seq = self._keys(run.thread_id, "r")
        keys = [thread_key, m_index, m_table, seq, r_index, r_table]
        node = ""
        if claim is not None:
            keys += [claim.threads, claim.runs]
            node = claim.node_id
        args: list[Any] = [
            b"" if thread is None else _dump(thread),
            run.id,
            _dump(run),
            node,
            run.thread_id,
        ]
        for message in messages:
            args += [message.id, _dump(message)]
        done = await self._script(CREATE_RUN, keys, args)
        if isinstance(done, bytes):
            return done.decode()
        if not done:
            raise _thread_missing(run.thread_id)
        return None

    async def update_run(self, run: Run) -> None:
        keys = self._keys(run.thread_id, "r")
        if not await self._run(PUT, keys, [run.id, _dump(run)]):
            raise _thread_missing(run.thread_id)

    async def get_run(self, thread_id: str, run_id: str) -> Run:
        return await self._one(thread_id, "r", run_id, Run, "run")

    async def list_runs(
        self,
        thread_id: str,
        *,
        order: Order = "desc",
        limit: int = 20,
        after: str | None = None,
        before: str | None = None,
    ) -> Page[Run]:
        items = await self._all(thread_id, "r", Run)
        return paginate(items, order=order, limit=limit, after=after, before=before)

    async def save_run_log(self, thread_id: str, run_id: str, log: dict[str, Any]) -> None:
        base = f"{self.prefix}thread:{thread_id}"
        if not await self._run(PUT_LOG, [base, f"{base}:log"], [run_id, orjson.dumps(log)]):
            raise _thread_missing(thread_id)

    async def get_run_log(self, thread_id: str, run_id: str) -> dict[str, Any] | None:
        base = f"{self.prefix}thread:{thread_id}"
        exists, raw = await self._read(("exists", (base,)), ("hget", (f"{base}:log", run_id)))
        if not exists:
            raise _thread_missing(thread_id)
        return None if raw is None else dict(orjson.loads(raw))

    # -- run steps -------------------------------------------------------------------

    async def put_step(self, step: RunStep) -> None:
        keys = [*self._keys(step.thread_id, "s"), self._keys(step.thread_id, "r")[2]]
        done = await self._run(PUT_STEP, keys, [step.id, _dump(step), step.run_id])
        if done == 0:
            raise _thread_missing(step.thread_id)
        if done < 0:
            raise _run_missing(step.run_id)

    async def _run_steps(self, thread_id: str, run_id: str) -> list[RunStep]:
        """The run's steps in insertion order, or NotFound (thread, run)."""
        thread, index, table, _seq = self._keys(thread_id, "s")
        runs = self._keys(thread_id, "r")[2]
        exists, has_run, ids, rows = await self._read(
            ("exists", (thread,)),
            ("hexists", (runs, run_id)),
            ("zrange", (index, 0, -1)),
            ("hgetall", (table,)),
        )
        if not exists:
            raise _thread_missing(thread_id)
        if not has_run:
            raise _run_missing(run_id)
        steps = (RunStep(**orjson.loads(rows[i])) for i in ids if i in rows)
        return [step for step in steps if step.run_id == run_id]

    async def get_step(self, thread_id: str, run_id: str, step_id: str) -> RunStep:
        thread, _index, table, _seq = self._keys(thread_id, "s")
        runs = self._keys(thread_id, "r")[2]
        exists, has_run, raw = await self._read(
            ("exists", (thread,)), ("hexists", (runs, run_id)), ("hget", (table, step_id))
        )
        if not exists:
            raise _thread_missing(thread_id)
        if not has_run:
            raise _run_missing(run_id)
        step = None if raw is None else RunStep(**orjson.loads(raw))
        if step is None or step.run_id != run_id:
            raise NotFound(f"No step found with id '{step_id}'.", param="step_id")
        return step

    async def list_steps(
        self,
        thread_id: str,
        run_id: str,
        *,
        order: Order = "desc",
        limit: int = 20,
        after: str | None = None,
        before: str | None = None,
    ) -> Page[RunStep]:
        items = await self._run_steps(thread_id, run_id)
        return paginate(items, order=order, limit=limit, after=after, before=before)

    async def mark_interrupted_runs(self, message: str) -> list[Run]:
        """Nothing, on Redis: the store is shared, and other nodes' live runs are alive.
        The runs of a node that died are failed by the survivors once its lease expires
        (:class:`agent_runtime.cluster.Cluster`)."""
        return []

    async def aclose(self) -> None:
        """Write what is queued, then disconnect. Idempotent."""
        if not self._closed:
            self._closed = True
            if self._writer is not None:
                await asyncio.gather(self._writer, return_exceptions=True)
            await self._client.aclose()
