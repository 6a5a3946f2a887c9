"""Running a run's agent in a worker process: the hub's side of one run.

:class:`ProcessRunner` takes a worker from the pool, sends it the run, and serves the
agent's calls with the run's own :class:`~agent_runtime.runs.agent_side.AgentSide` (so the
run's events, store writes, completions and child runs happen in the hub exactly as for
an agent in the hub's process). A streamed completion is pumped and published here; a
forwarder sends its chunks to the worker, everything that arrived meanwhile in one
message. The agent's end arrives as ``done`` and is raised here as the in-process agent's
would be (an exit as :class:`~agent_runtime.runs.agent_thread.AgentExit`, the runtime's
own errors as themselves, anything else as :class:`AgentProcessError` with the agent's
description of it).

Cancellation: cancelling :meth:`ProcessRunner.run_agent` (the run was cancelled, expired
or the hub is shutting down) sends ``cancel``; the agent has ``cancel_grace`` seconds to
stop, after which its worker is killed and replaced. The cancellation then propagates.
A worker that dies during the run fails it with how the process ended; a run that went
over its CPU or memory limit fails naming the limit. A worker is reused only after a run
that ended in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import signal
from typing import Any

from ..config import IsolationConfig
from ..errors import AgentProcessError, AgentRuntimeError
from ..runs.agent_side import AgentSide
from ..runs.agent_thread import AgentExit
from ..runs.context import RunContext
from ..stream_handler import StreamHandler
from .pool import Worker, WorkerPool, describe_exit, first_of
from .worker import rebuild_error

__all__ = ["ProcessRunner"]

logger = logging.getLogger(__name__)


def _error_body(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, AgentRuntimeError):
        return {"type": type(exc).__name__, "message": str(exc)}
    return {"type": "AgentRuntimeError", "message": f"the hub failed to answer: {exc}"}


class _Session:
    """One run in one worker: dispatches the worker's messages until ``done``."""

    def __init__(self, ctx: RunContext, worker: Worker) -> None:
        self.ctx = ctx
        self.worker = worker
        self.port = AgentSide(ctx)
        self.done: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.streams: dict[str, StreamHandler] = {}
        self.tasks: set[asyncio.Task[Any]] = set()

    def on_message(self, message: dict[str, Any]) -> None:
        op = message.get("op")
        if op == "call":
            self._spawn(self._answer(message))
        elif op == "note":
            args = message.get("args") or {}
            if message.get("method") == "agent_log":
                self.port.agent_log(str(args.get("line", "")), int(args.get("level", 20)))
            elif message.get("method") == "set_outcome":
                self.port.set_outcome(args["status"], args.get("message"))
        elif op == "done" and not self.done.done():
            self.done.set_result(message)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _answer(self, message: dict[str, Any]) -> None:
        call_id = message["id"]
        try:
            result = await self._call(str(message["method"]), message.get("args") or {})
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not isinstance(exc, AgentRuntimeError):
                logger.exception("run %s: serving the agent's call failed", self.ctx.run.id)
            self.worker.send({"op": "error", "id": call_id, "error": _error_body(exc)})
            return
        self.worker.send({"op": "reply", "id": call_id, "result": result})

    async def _call(self, method: str, args: dict[str, Any]) -> Any:
        port = self.port
        if method == "complete":
            completion = await port.complete(args["messages"], args.get("model"), args["kwargs"])
            return completion.model_dump(mode="json")
        if method == "start_stream":
            handler = await port.start_stream(args["messages"], args.get("model"), args["kwargs"])
            self.streams[handler.id] = handler
            # Queued after this call's reply (same loop turn, in order): the worker knows
            # the stream before its first chunks.
            self._spawn(self._forward(handler))
            return {"stream": handler.id, "message": dataclasses.asdict(handler.message)}
        if method == "reply_from_stream":
            handler = self.streams[str(args["stream"])]
            message = await port.reply_from_stream(handler)
            return None if message is None else dataclasses.asdict(message)
        if method == "reply_text":
            return dataclasses.asdict(await port.reply_text(str(args["text"])))
        if method == "add_message":
            message = await port.add_message(str(args["role"]), str(args["content"]))
            return dataclasses.asdict(message)
        if method == "messages":
            return [dataclasses.asdict(m) for m in await port.messages()]
        if method == "progress":
            return await port.progress(str(args["text"]))
        if method == "emit":
            return await port.emit(str(args["name"]), args.get("data"))
        if method == "run_child":
            result = await port.run_child(
                str(args["agent_name"]), args["query"], relay=bool(args.get("relay"))
            )
            return dataclasses.asdict(result)
        raise AgentRuntimeError(f"unknown call {method!r}")

    async def _forward(self, handler: StreamHandler) -> None:
        """Send the completion's chunks to the worker as they arrive, batched."""
        stream = handler.id
        error: dict[str, Any] | None = None
        try:
            while batch := await handler.next_batch():
                chunks = [c.model_dump(mode="json", exclude_unset=True) for c in batch]
                self.worker.send({"op": "chunks", "stream": stream, "chunks": chunks})
        except Exception as exc:
            error = _error_body(exc)
        self.worker.send({"op": "stream_end", "stream": stream, "error": error})

    async def close(self) -> None:
        for task in list(self.tasks):
            task.cancel()
        for task in list(self.tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


class ProcessRunner:
    """Runs agents in worker processes (``--isolation process``)."""

    def __init__(self, pool: WorkerPool, config: IsolationConfig) -> None:
        self.pool = pool
        self.config = config
        self.killed = 0
        """Workers killed because a cancelled agent did not stop within the grace."""

    def _limits(self) -> dict[str, Any]:
        return {"cpu_seconds": self.config.run_cpu_seconds, "memory_mb": self.config.run_memory_mb}

    async def run_agent(self, ctx: RunContext) -> None:
        """Run ``ctx``'s agent in a worker until it ends; raises as the agent did."""
        worker = await self.pool.acquire()
        session = _Session(ctx, worker)
        worker.handler = session.on_message
        reuse = False
        try:
            agent = ctx.agent
            worker.send(
                {
                    "op": "run",
                    "run": dataclasses.asdict(ctx.run),
                    "path": str(agent.path),
                    "version": agent.version,
                    "limits": self._limits(),
                }
            )
            try:
                done = await self._outcome(session)
            except asyncio.CancelledError:
                reuse = await self._stop(session)
                raise
            reuse = "limit" not in done
            self._raise(done)
        finally:
            await session.close()
            await self.pool.release(worker, reuse=reuse)

    async def _outcome(self, session: _Session) -> dict[str, Any]:
        """The worker's ``done``; raises :class:`AgentProcessError` if it died first."""
        worker = session.worker
        await first_of(session.done, worker.exited)
        if session.done.done():
            return session.done.result()
        raise AgentProcessError(self._death(worker.exited.result()))

    def _death(self, returncode: int) -> str:
        cpu = self.config.run_cpu_seconds
        if cpu is not None and returncode == -signal.SIGXCPU:
            return f"the run went over its CPU limit ({cpu:g} s, --run-cpu-seconds)"
        return describe_exit(returncode)

    async def _stop(self, session: _Session) -> bool:
        """The run was cancelled: ask the agent to stop, kill its worker past the grace.
        Whether the worker can be reused."""
        worker = session.worker
        if not worker.alive:
            return False
        worker.send({"op": "cancel"})
        grace = self.config.cancel_grace
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                await first_of(session.done, worker.exited)
        if session.done.done():
            return "limit" not in session.done.result()
        if worker.alive:
            logger.warning(
                "run %s: the agent did not stop within %g s of its cancel; killing its "
                "worker (pid %d)",
                session.ctx.run.id,
                grace,
                worker.pid,
            )
            self.killed += 1
            worker.kill()
        return False

    def _raise(self, done: dict[str, Any]) -> None:
        """Raise the agent's ending as an in-process agent's would be raised."""
        if "exit" in done:
            code = done["exit"].get("code")
            original: BaseException = (
                KeyboardInterrupt()
                if done["exit"].get("type") == "KeyboardInterrupt"
                else SystemExit(code)
            )
            raise AgentExit(original)
        error = done.get("error")
        if error is None:
            return
        if done.get("limit") == "memory":
            raise AgentProcessError(
                f"the run went over its memory limit ({self.config.run_memory_mb} MiB, "
                "--run-memory-mb)"
            )
        if error.get("runtime") or error.get("type") == "RunCancelled":
            raise rebuild_error(error)
        raise AgentProcessError(str(error.get("message")))
