"""An agent worker: a process that runs agents for the hub, one run at a time.

Started by :class:`~agent_runtime.isolation.pool.WorkerPool` as
``python -m agent_runtime.isolation.worker FD`` with one end of a socket pair as ``FD``.
It says ``ready``, then runs each ``run`` it is sent: the agent gets an
:class:`~agent_runtime.environment.Environment` whose port, :class:`RemotePort`, turns
every call into a message to the hub and waits for its answer, so the hub keeps the
broker, the store and the streams and the agent keeps nothing of them. A streamed
completion is pumped and published by the hub; its chunks are forwarded here, batched,
for the agent to iterate. The run's end (returned, raised, exited) is sent as ``done``.

Limits (``limits`` of a ``run``): CPU seconds (``RLIMIT_CPU`` set to what the process
used so far plus the run's allowance: past it the kernel kills the worker with
``SIGXCPU``) and memory (``RLIMIT_AS`` set to the process's size plus the allowance: an
allocation past it raises ``MemoryError``, which fails the run naming the limit). Both
are lifted when the run ends; a worker whose run hit one is not reused.

Cancellation: ``cancel`` sets the port's flag (the next Environment call raises
``RunCancelled``), wakes blocked calls and cancels an async agent's task. ``done`` is
sent only once the agent has stopped (a sync agent's thread at its next Environment
call), so a worker is never reused with an agent still running in it. An agent that
ignores the cancel is killed by the hub after its grace period.

The worker exits when the hub closes its end.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import ctypes
import logging
import os
import resource
import socket
import sys
import threading
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

from openai.types.chat import ChatCompletion, ChatCompletionChunk

from .. import errors, hops
from ..agents import Agent, load_agent
from ..environment import Environment
from ..objects import Message, Run, RunStatus
from ..runs.agent_thread import AgentExit, describe, in_daemon_thread
from ..runs.ports import ChildRunResult
from ..stream_handler import StreamHandler
from .channel import Channel, open_channel

__all__ = ["RemotePort", "main", "rebuild_error"]

logger = logging.getLogger("agent_runtime.isolation.worker")


def rebuild_error(error: dict[str, Any]) -> errors.AgentRuntimeError:
    """An error sent over the wire as the runtime's own class when it is one of them
    (``RunCancelled``, ``ProviderError``…), else as :class:`AgentRuntimeError`."""
    cls = getattr(errors, str(error.get("type")), None)
    message = str(error.get("message", ""))
    if isinstance(cls, type) and issubclass(cls, errors.AgentRuntimeError):
        try:
            return cls(message)
        except TypeError:  # a class whose constructor takes more
            pass
    return errors.AgentRuntimeError(message)


class RemotePort:
    """The :class:`~agent_runtime.runs.ports.AgentPort` of a run in a worker: every call
    is a message to the hub. Coroutines run on the worker's loop; a synchronous agent's
    Environment hands them to it from the agent's thread, as in the hub."""

    def __init__(self, channel: Channel, run: Run, agent_name: str) -> None:
        self._channel = channel
        self._run = run
        self._agent_name = agent_name
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._next = 0
        self._pending: dict[int, asyncio.Future[Any]] = {}
        """Calls sent to the hub, awaiting their answers."""
        self._streams: dict[str, StreamHandler] = {}
        self._early: dict[str, list[dict[str, Any]]] = {}
        """``chunks``/``stream_end`` of a stream whose ``start_stream`` reply arrived in the
        same read but has not been taken up yet (its handler does not exist yet)."""
        self._thread_futures: set[concurrent.futures.Future[Any]] = set()
        self.cancelled = False

    # -- from the hub ----------------------------------------------------------------

    def answer(self, message: dict[str, Any]) -> None:
        future = self._pending.pop(int(message["id"]), None)
        if future is None or future.done():
            return
        if message["op"] == "reply":
            future.set_result(message.get("result"))
        else:
            future.set_exception(rebuild_error(message.get("error") or {}))

    def chunks(self, message: dict[str, Any]) -> None:
        handler = self._streams.get(str(message["stream"]))
        if handler is None:
            self._early.setdefault(str(message["stream"]), []).append(message)
            return
        for chunk in message["chunks"]:
            handler.push_chunk(ChatCompletionChunk.model_validate(chunk))

    def stream_end(self, message: dict[str, Any]) -> None:
        handler = self._streams.get(str(message["stream"]))
        if handler is None:
            self._early.setdefault(str(message["stream"]), []).append(message)
            return
        error = message.get("error")
        handler.end(None if error is None else rebuild_error(error))

    def cancel(self) -> None:
        """The hub cancelled the run: every waiting call and reader wakes with
        ``RunCancelled``."""
        self.cancelled = True
        for thread_future in list(self._thread_futures):
            thread_future.cancel()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(errors.RunCancelled("the run was cancelled"))
        self._pending.clear()
        for handler in self._streams.values():
            handler.interrupt()

    # -- the AgentPort -----------------------------------------------------------------

    @property
    def run(self) -> Run:
        return self._run

    @property
    def agent_name(self) -> str:
        return self._agent_name

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    @property
    def loop_thread(self) -> int:
        return self._loop_thread

    @property
    def cancel_requested(self) -> bool:
        return self.cancelled

    def track_thread_future(self, future: concurrent.futures.Future[Any]) -> None:
        self._thread_futures.add(future)

    def untrack_thread_future(self, future: concurrent.futures.Future[Any]) -> None:
        self._thread_futures.discard(future)

    async def _call(self, method: str, **args: Any) -> Any:
        if self.cancelled:
            raise errors.RunCancelled("the run was cancelled")
        self._next += 1
        future: asyncio.Future[Any] = self._loop.create_future()
        self._pending[self._next] = future
        self._channel.send({"op": "call", "id": self._next, "method": method, "args": args})
        return await future

    def _note(self, method: str, **args: Any) -> None:
        """A message that wants no answer; from any thread."""
        message = {"op": "note", "method": method, "args": args}
        if threading.get_ident() == self._loop_thread:
            self._channel.send(message)
        else:
            hops.inbox(self._loop).call(self._channel.send, message)

    async def complete(
        self, messages: list[dict[str, Any]] | str, model: str | None, kwargs: dict[str, Any]
    ) -> ChatCompletion:
        result = await self._call("complete", messages=messages, model=model, kwargs=kwargs)
        return ChatCompletion.model_validate(result)

    async def start_stream(
        self, messages: list[dict[str, Any]] | str, model: str | None, kwargs: dict[str, Any]
    ) -> StreamHandler:
        result = await self._call("start_stream", messages=messages, model=model, kwargs=kwargs)
        handler = StreamHandler(Message(**result["message"]), self._loop, self._loop_thread)
        stream = str(result["stream"])
        self._streams[stream] = handler
        # The hub sends a stream's first chunks right after this call's reply: they may
        # have been decoded in the same read, before this coroutine resumed.
        for early in self._early.pop(stream, ()):
            if early["op"] == "chunks":
                self.chunks(early)
            else:
                self.stream_end(early)
        return handler

    async def reply_from_stream(self, handler: StreamHandler) -> Message | None:
        await handler.await_text()  # the agent's own view ends first (errors raise here)
        result = await self._call("reply_from_stream", stream=handler.id)
        return None if result is None else Message(**result)

    async def reply_text(self, text: str) -> Message:
        return Message(**await self._call("reply_text", text=text))

    async def add_message(self, role: str, content: str) -> Message:
        return Message(**await self._call("add_message", role=role, content=content))

    async def messages(self) -> list[Message]:
        return [Message(**m) for m in await self._call("messages")]

    async def progress(self, text: str) -> int:
        return int(await self._call("progress", text=text))

    async def emit(self, name: str, data: Any) -> int:
        return int(await self._call("emit", name=name, data=data))

    async def run_child(self, agent_name: str, query: str, *, relay: bool) -> ChildRunResult:
        result = await self._call("run_child", agent_name=agent_name, query=query, relay=relay)
        return ChildRunResult(**result)

    def agent_log(self, line: str, level: int) -> None:
        self._note("agent_log", line=str(line), level=int(level))

    def set_outcome(self, status: RunStatus, message: str | None = None) -> None:
        self._note("set_outcome", status=status, message=message)


class _Limits:
    """Per-run resource limits of this process (see the module docstring)."""

    def __init__(self, limits: dict[str, Any]) -> None:
        self.cpu_seconds: float | None = limits.get("cpu_seconds")
        self.memory_mb: int | None = limits.get("memory_mb")

    def apply(self) -> None:
        if self.cpu_seconds is not None:
            usage = resource.getrusage(resource.RUSAGE_SELF)
            used = usage.ru_utime + usage.ru_stime
            soft = int(used + self.cpu_seconds) + 1
            resource.setrlimit(resource.RLIMIT_CPU, (soft, resource.RLIM_INFINITY))
        if self.memory_mb is not None:
            size = _address_space_bytes()
            soft = size + self.memory_mb * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_AS, (soft, resource.RLIM_INFINITY))

    def lift(self) -> None:
        infinity = (resource.RLIM_INFINITY, resource.RLIM_INFINITY)
        if self.cpu_seconds is not None:
            resource.setrlimit(resource.RLIMIT_CPU, infinity)
        if self.memory_mb is not None:
            resource.setrlimit(resource.RLIMIT_AS, infinity)


def _address_space_bytes() -> int:
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[0])
    return pages * os.sysconf("SC_PAGE_SIZE")


async def _until_the_thread_ends(agent_thread: Coroutine[Any, Any, None]) -> None:
    """Await a synchronous agent's thread; when cancelled, keep waiting for the thread to
    end before letting the cancellation through (it ends at its next Environment call,
    which raises ``RunCancelled``). Reporting the run's end earlier would hand the hub a
    worker whose agent still runs: one that spins outside any call would keep burning a
    core in a reused worker, where the hub's kill after ``cancel_grace`` is what ends it."""
    task = asyncio.ensure_future(agent_thread)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        await asyncio.wait({task})
        if not task.cancelled():
            task.exception()  # retrieved: the run ends cancelled whatever the agent raised
        raise


class _Worker:
    """This process's state: its channel, the agents it loaded, the run it runs."""

    def __init__(self) -> None:
        self.channel: Channel | None = None
        self.port: RemotePort | None = None
        self.task: asyncio.Task[None] | None = None
        self.agents: dict[tuple[str, str], Agent] = {}

    def on_message(self, message: dict[str, Any]) -> None:
        op = message.get("op")
        port = self.port
        if op == "run":
            self.task = asyncio.get_running_loop().create_task(self.run(message))
        elif port is None:
            return
        elif op in ("reply", "error"):
            port.answer(message)
        elif op == "chunks":
            port.chunks(message)
        elif op == "stream_end":
            port.stream_end(message)
        elif op == "cancel":
            port.cancel()
            if self.task is not None:
                self.task.cancel()

    def _agent(self, path: str, version: str) -> Agent:
        """The agent at ``path``, loaded once per version."""
        key = (path, version)
        agent = self.agents.get(key)
        if agent is None:
            agent = self.agents[key] = load_agent(Path(path))
        return agent

    async def run(self, message: dict[str, Any]) -> None:
        assert self.channel is not None
        limits = _Limits(message.get("limits") or {})
        done: dict[str, Any] = {"op": "done"}
        try:
            agent = await asyncio.to_thread(self._agent, message["path"], message["version"])
            run = Run(**message["run"])
            self.port = port = RemotePort(self.channel, run, agent.name)
            env = Environment(port)
            limits.apply()
            try:
                if agent.style == "async":
                    await agent.run_async(env)
                else:
                    await _until_the_thread_ends(in_daemon_thread(agent.run_sync, env, run.id))
            finally:
                limits.lift()
        except asyncio.CancelledError:
            done["error"] = {"type": "RunCancelled", "message": "the run was cancelled"}
        except (SystemExit, KeyboardInterrupt, AgentExit) as exc:
            original = exc.original if isinstance(exc, AgentExit) else exc
            code = original.code if isinstance(original, SystemExit) else None
            done["exit"] = {
                "type": type(original).__name__,
                "code": code if code is None or isinstance(code, int) else str(code),
            }
        except MemoryError:
            done["error"] = {"type": "MemoryError", "message": "MemoryError"}
            done["limit"] = "memory"
        except BaseException as exc:
            runtime = isinstance(exc, errors.AgentRuntimeError)
            done["error"] = {
                "type": type(exc).__name__,
                "message": describe(exc),
                "runtime": runtime,
            }
        self.port = None
        self.task = None
        self.channel.send(done)


async def _serve(sock: socket.socket) -> None:
    worker = _Worker()
    worker.channel = channel = await open_channel(sock, worker.on_message)
    channel.send({"op": "ready", "pid": os.getpid()})
    await channel.closed


def _die_with_parent() -> None:
    """Ask Linux to kill this process when the hub's dies (even by ``kill -9``): an agent
    spinning in its code would never notice the closed socket."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, 9)  # PR_SET_PDEATHSIG, SIGKILL
    except (OSError, AttributeError):  # not Linux: the closed socket ends an idle worker
        pass


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m agent_runtime.isolation.worker FD [NICE]``: serve the hub on socket
    ``FD``, with ``NICE`` added to this process's niceness."""
    args = list(sys.argv[1:] if argv is None else argv)
    _die_with_parent()
    if len(args) > 1 and int(args[1]):
        os.nice(int(args[1]))
    logging.basicConfig(level="WARNING", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sock = socket.socket(fileno=int(args[0]))
    try:
        asyncio.run(_serve(sock))
    except KeyboardInterrupt:  # the hub's terminal sent SIGINT to the whole group
        pass


if __name__ == "__main__":
    main()
