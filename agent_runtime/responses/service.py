"""Responses on top of runs: each response is a run on a thread, and its Responses event
stream a broker stream of its own, fed by projecting the run's events as they are
published.

Concurrency: everything runs on the event loop. The projection is a synchronous observer
of the run's :meth:`~agent_runtime.runs.context.RunContext.publish`: each run event is
projected and the Responses events it makes are published into the response's stream in
the same loop step (publishing never awaits a subscriber), so the two streams never
diverge and a response's stream gets every fan-out, retention, gap and Redis property of
the broker. Only the node running the response publishes its stream; any node serves it
(a Redis mirror, whose projection is a :class:`~.fold.ResponseFold`).

Storage: the response's record (the response object, its input items, the id of its
last event) is kept with the run's logs under the response id
(:meth:`~agent_runtime.store.Store.save_run_log`), written when the response is created
and when it ends. A live response on another node is read from its run's checkpoints.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from broker import LimitExceeded, Stream, StreamMoved
from broker.buffer import Gap

from .. import protocol
from ..agents import Agent, AgentMetadata
from ..environment import Environment
from ..errors import NotFound
from ..objects import Run, Thread, new_id
from ..runs import RunContext
from ..runs.agent_side import AgentSide
from ..runs.ports import AgentRunner
from .fold import TERMINAL_STATUSES, ResponseFold
from .objects import parse_response_id, response_id
from .projection import Projector

if TYPE_CHECKING:
    from ..hub import Hub

__all__ = ["LiveResponse", "PlainRequest", "Responses", "model_agent"]

logger = logging.getLogger(__name__)

_END_ATTEMPTS = 5
"""Tries at ending the stream of a response whose node died (see Responses.end_orphan)."""

MODEL_AGENT_NAME = "model"
"""The ``assistant_id`` of a plain-model response's run."""


def model_agent() -> Agent:
    """The agent a plain-model response's run records: no code of its own (its body is
    :meth:`Responses._run_plain`, run in the hub's process whatever the isolation)."""
    metadata = AgentMetadata(name=MODEL_AGENT_NAME, description="a plain model response")
    code = compile("", "<responses model>", "exec")
    return Agent(Path(__file__).parent, metadata, "async", code, {})


@dataclass(slots=True)
class PlainRequest:
    """What a plain-model run sends its model."""

    messages: list[dict[str, Any]]
    kwargs: dict[str, Any]


@dataclass(slots=True)
class LiveResponse:
    """A response whose run is live on this node (until its final record is stored)."""

    id: str
    thread_id: str
    run_id: str
    ctx: RunContext
    projector: Projector
    stream: Stream
    record: dict[str, Any]
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    """Set once its terminal event is published and its final record stored."""
    initial: asyncio.Task[None] | None = None

    @property
    def response(self) -> dict[str, Any]:
        return self.projector.fold.copy_response()


class _Runner:
    """The hub's runner, with plain-model runs executed here (in-process)."""

    def __init__(self, inner: AgentRunner, service: Responses) -> None:
        self.inner = inner
        self.service = service

    async def run_agent(self, ctx: Any) -> None:
        plain = self.service.plain.pop(ctx.run.id, None)
        if plain is None:
            await self.inner.run_agent(ctx)
        else:
            await self.service.run_plain(ctx, plain)


class Responses:
    """The responses of one hub: created, followed, stored."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.live: dict[str, LiveResponse] = {}
        self.plain: dict[str, PlainRequest] = {}
        self.model_agent = model_agent()
        self.created = 0
        """Responses created since start (for metrics)."""
        self._tasks: set[asyncio.Task[None]] = set()
        hub.runs.runner = _Runner(hub.runs.runner, self)
        hub.after_runs.append(self.aclose)  # the final records, before the store closes
        if hub.cluster is not None:
            hub.cluster.on_orphan_failed.append(self.end_orphan)

    # -- creating ------------------------------------------------------------------------

    async def start(
        self,
        *,
        thread_id: str,
        thread: Thread | None = None,
        agent: Agent,
        model: str | None,
        instructions: str | None,
        messages: list[tuple[str, str]],
        metadata: dict[str, str] | None,
        base: dict[str, Any],
        items: list[dict[str, Any]],
        plain: PlainRequest | None,
    ) -> LiveResponse:
        """Start the run and the response's stream. ``base``: the response object as
        created (its id is filled in here). Raises as ``RunManager.create`` does, and
        ``LimitExceeded`` when the broker takes no more streams (the run is cancelled).
        ``thread``: a new thread (of id ``thread_id``), stored with the run in one write."""
        runs = self.hub.runs
        ctx: RunContext = await runs.create(
            thread_id,
            agent.name,
            agent=agent,
            model=model,
            instructions=instructions,
            additional_messages=messages,
            metadata=metadata,
            thread=thread,
        )
        # No await from here until the observer is set: no run event can be missed.
        rid = response_id(thread_id, ctx.run.id)
        base["id"] = rid
        base["created_at"] = ctx.run.created_at
        projector = Projector(base)
        try:
            stream = self.hub.registry.create(
                rid,
                snapshot=projector.fold.snapshot,
                resume_snapshot=projector.fold.resume_snapshot,
            )
        except LimitExceeded:
            runs.cancel_now(ctx)
            raise
        record = {"response": base, "input": items, "head": 0}
        live = LiveResponse(rid, thread_id, ctx.run.id, ctx, projector, stream, record)
        self.live[rid] = live
        if plain is not None:
            self.plain[ctx.run.id] = plain
        found = ctx.stream.buffer.since(0)  # what the run published while being created
        for event in () if isinstance(found, Gap) else found:
            self._observe(live, event.name, event.payload())
        ctx.observer = lambda name, payload: self._observe(live, name, payload)
        self.created += 1
        live.initial = asyncio.create_task(self._save(live, final=False))
        await live.initial
        return live

    def _observe(self, live: LiveResponse, name: str, payload: dict[str, Any]) -> None:
        """Project one run event into the response's stream (synchronous)."""
        if live.projector.ended:
            return
        try:
            events = live.projector.feed(name, payload)
            for event_name, event in events:
                live.stream.publish(event_name, event)
        except Exception:  # a bug: end the response's stream rather than leave it open
            logger.exception("response %s: projecting %s failed", live.id, name)
            live.projector.abandon()
        if live.projector.ended:
            live.stream.close()
            task = asyncio.get_running_loop().create_task(self._finish(live))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _finish(self, live: LiveResponse) -> None:
        try:
            if live.initial is not None:
                await asyncio.gather(live.initial, return_exceptions=True)
            await self._save(live, final=True)
        finally:
            live.finished.set()
            if self.live.get(live.id) is live:
                del self.live[live.id]

    async def _save(self, live: LiveResponse, *, final: bool) -> None:
        record = dict(live.record)
        if final:
            record["response"] = live.response
            record["head"] = live.stream.head
        try:
            await self.hub.store.save_run_log(live.thread_id, live.id, record)
        except Exception:  # the run's own record stays; a read rebuilds from it
            logger.exception("response %s: its record could not be stored", live.id)

    async def end_orphan(self, run: Run) -> None:
        """``run``'s node died and this node has failed it (see
        :attr:`~agent_runtime.cluster.Cluster.on_orphan_failed`): if it is a response, end
        the response's stream with ``response.failed`` (the response rebuilt from the
        failed run), numbered after what Redis holds of the stream, and store the final
        record. The append is conditional on that last event (so the numbers stay
        consecutive): re-read and retried a few times if the stream moved meanwhile.
        Nothing is appended to a stream that has ended already."""
        cluster = self.hub.cluster
        if cluster is None:
            return
        rid = response_id(run.thread_id, run.id)
        try:
            record = await self.record(run.thread_id, rid)
        except NotFound:
            return  # a plain run, not a response
        response = await self.rebuilt(run, dict(record["response"]))
        registry = cluster.registry
        last, ended = await registry.tail(rid)
        for _ in range(_END_ATTEMPTS):
            if ended:
                return
            event = {"type": "response.failed", "sequence_number": last, "response": response}
            try:
                head = await registry.append_final(rid, "response.failed", event, expect_after=last)
            except StreamMoved as moved:
                last = moved.last
                continue
            if head is None:
                return
            final = {**record, "response": response, "head": head}
            await self.hub.store.save_run_log(run.thread_id, rid, final)
            return
        logger.error("response %s: its stream kept moving; it was not ended", rid)

    async def run_plain(self, ctx: RunContext, plain: PlainRequest) -> None:
        """A plain-model response's run: one streamed completion, added as the reply."""
        env = Environment(AgentSide(ctx))
        handler = await env.acompletion(plain.messages, None, True, **plain.kwargs)
        await env.aadd_reply(handler)

    # -- reading -------------------------------------------------------------------------

    async def record(self, thread_id: str, rid: str) -> dict[str, Any]:
        """The stored record of a response; ``NotFound`` if none (or deleted)."""
        record = await self.hub.store.get_run_log(thread_id, rid)
        if record is None or record.get("deleted") or "response" not in record:
            raise NotFound(f"No response found with id '{rid}'.", param="response_id")
        return record

    async def current(self, thread_id: str, run_id: str, rid: str) -> dict[str, Any]:
        """The response object now: live here, stored final, or rebuilt from its run's
        stored state (live on another node, or ended without its final record)."""
        live = self.live.get(rid)
        if live is not None:
            return live.response
        record = await self.record(thread_id, rid)
        response: dict[str, Any] = dict(record["response"])
        if response.get("status") in TERMINAL_STATUSES:
            return response
        run: Run = await self.hub.runs.get_run(thread_id, run_id)
        return await self.rebuilt(run, response)

    async def rebuilt(self, run: Run, base: dict[str, Any]) -> dict[str, Any]:
        """The response as its run's stored event log and status have it."""
        log = await self.hub.store.get_run_log(run.thread_id, run.id)
        projector = Projector(base)
        for item in (log or {}).get("items") or []:
            projector.feed(str(item[2]), item[3])
        if run.terminal and not projector.ended:
            projector.feed(protocol.run_event(run.status), run.to_dict())
        response = projector.fold.copy_response()
        if not run.terminal:
            response["status"] = "queued" if run.status == "queued" else "in_progress"
        return response

    async def chain(self, thread_id: str, rid: str, limit: int = 1000) -> list[dict[str, Any]]:
        """The conversation a response continuing ``rid`` has (OpenAI's
        ``previous_response_id``): each response's input items then output items, from
        the first of the chain (at most ``limit`` responses back)."""
        parts: list[list[dict[str, Any]]] = []
        current: str | None = rid
        while current is not None and len(parts) < limit:
            record = await self.record(thread_id, current)
            response = await self.current(thread_id, parse_response_id(current)[1], current)
            parts.append([*(record.get("input") or []), *(response.get("output") or [])])
            previous = response.get("previous_response_id")
            current = str(previous) if previous else None
        return [item for part in reversed(parts) for item in part]

    def fold_of(self, rid: str) -> ResponseFold | None:
        live = self.live.get(rid)
        return None if live is None else live.projector.fold

    async def delete(self, thread_id: str, rid: str) -> None:
        await self.record(thread_id, rid)
        await self.hub.store.save_run_log(thread_id, rid, {"deleted": True})
        self.hub.registry.discard(rid)

    async def aclose(self) -> None:
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


def input_with_ids(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Input items as ``input_items`` lists them (each with an id)."""
    return [{"id": item.get("id") or new_id("msg"), **item} for item in items]
