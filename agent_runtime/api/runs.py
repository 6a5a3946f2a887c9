"""Runs, their steps and their event streams: ``/threads/{thread_id}/runs…`` (with
``…/runs/{run_id}/steps``), ``/threads/runs``, ``/threads/{thread_id}/stream/{run_id}``.

Starting a run never retries itself and answers errors with ``x-should-retry: false``,
so the openai SDK's automatic retries cannot start duplicate runs.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from broker import (
    Event,
    Framing,
    StreamQuery,
    at_end_response,
    check_cursor,
    parse_stream_query,
    replay_response,
    serve_stream,
)

from .. import protocol
from ..errors import InvalidRequest, NotFound
from ..objects import Message, Run, RunStep, Thread
from ..protocol import GAP, delta_payload
from ..run_log import replay_compacted
from ..runs import RunContext
from ..runs.timings import timings_body
from .keys import HUB
from .threads import MessageIn, ThreadIn, check_content, new_thread, page_body
from .validation import (
    MAX_INSTRUCTIONS_CHARS,
    Instructions,
    Metadata,
    json_response,
    parse_query,
    read_json,
)

__all__ = ["STREAM_PATH", "routes"]

STREAM_PATH = "/threads/{thread_id}/stream/{run_id}"
"""The run stream's route (relative to the API root); it also takes ``?token=``."""


class RunIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    assistant_id: str = Field(min_length=1)
    model: str | None = None
    instructions: Instructions | None = None
    additional_instructions: Instructions | None = None
    additional_messages: list[MessageIn] | None = None
    metadata: Metadata | None = None
    stream: bool | None = None
    temperature: float | None = None
    top_p: float | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    max_prompt_tokens: int | None = None
    max_completion_tokens: int | None = None
    truncation_strategy: dict[str, Any] | None = None
    response_format: Any = None
    parallel_tool_calls: bool | None = None
    reasoning_effort: str | None = None


class ThreadAndRunIn(RunIn):
    thread: ThreadIn | None = None
    tool_resources: dict[str, Any] | None = None


class RunListQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")

    order: Literal["asc", "desc"] = "desc"
    limit: int = Field(20, ge=1, le=100)
    after: str | None = None
    before: str | None = None


async def _start(
    request: web.Request,
    thread_id: str,
    body: RunIn,
    accepted_at: float,
    thread: tuple[Thread, list[Message]] | None = None,
) -> web.StreamResponse:
    """Start the run (with ``thread``: on that new thread, created with it, holding its
    messages): its thread's check or creation, messages, claim and run are one store
    write (one round trip on Redis)."""
    hub = request.app[HUB]
    extra = [(m.role, str(m.content)) for m in body.additional_messages or []]
    for index, (_role, content) in enumerate(extra):
        check_content(request, content, f"additional_messages[{index}].content")
    instructions = body.instructions
    if body.additional_instructions:
        instructions = "\n\n".join(filter(None, [instructions, body.additional_instructions]))
        if len(instructions) > MAX_INSTRUCTIONS_CHARS:
            raise InvalidRequest(
                f"Invalid value for 'additional_instructions': with 'instructions' it makes "
                f"{len(instructions)} characters of instructions; the limit is "
                f"{MAX_INSTRUCTIONS_CHARS}.",
                param="additional_instructions",
            )
    ctx: RunContext = await hub.runs.create(
        thread_id,
        body.assistant_id,
        model=body.model,
        instructions=instructions,
        additional_messages=extra,
        metadata=body.metadata,
        accepted_at=accepted_at,
        thread=None if thread is None else thread[0],
        thread_messages=() if thread is None else thread[1],
    )
    if body.stream:
        query = parse_stream_query(request, framing=Framing.OPENAI)
        return await serve_stream(request, ctx.stream, query, config=hub.registry.config)
    return json_response(ctx.run.to_dict())


def _check_model(request: web.Request, body: RunIn) -> None:
    """400 for a ``model`` this hub cannot serve (a simulated spec out of range, a
    provider that is not configured…), before anything is created; 404 for an unknown
    agent. The agent's own default model is not checked here: a run on it fails, saying
    why."""
    hub = request.app[HUB]
    agent = hub.catalog.get(body.assistant_id)
    if body.model is not None:
        hub.models.check(body.model, agent.defaults.model_provider)


async def create_run(request: web.Request) -> web.StreamResponse:
    accepted_at = time.time()
    thread_id = request.match_info["thread_id"]
    body = await read_json(request, RunIn)
    _check_model(request, body)
    return await _start(request, thread_id, body, accepted_at)  # 404 if no such thread


async def create_thread_and_run(request: web.Request) -> web.StreamResponse:
    accepted_at = time.time()
    body = await read_json(request, ThreadAndRunIn)
    _check_model(request, body)  # 404 or 400 before creating anything
    thread, messages = new_thread(request, body.thread or ThreadIn())
    return await _start(request, thread.id, body, accepted_at, (thread, messages))


async def list_runs(request: web.Request) -> web.Response:
    query = parse_query(request.query, RunListQuery)
    page = await request.app[HUB].store.list_runs(
        request.match_info["thread_id"],
        order=query.order,
        limit=query.limit,
        after=query.after,
        before=query.before,
    )
    return json_response(page_body([r.to_dict() for r in page.data], page.has_more))


async def get_run(request: web.Request) -> web.Response:
    run = await request.app[HUB].runs.get_run(
        request.match_info["thread_id"], request.match_info["run_id"]
    )
    return json_response(run.to_dict())


async def get_run_timings(request: web.Request) -> web.Response:
    """Where the run's start spent its time (:mod:`agent_runtime.runs.timings`): kept in
    memory by the node that started the run, for its last few thousand runs; 404 for a
    run this node did not start (or has forgotten)."""
    hub = request.app[HUB]
    thread_id, run_id = request.match_info["thread_id"], request.match_info["run_id"]
    await hub.store.get_run(thread_id, run_id)  # 404 for an unknown run or another thread's
    timings = hub.runs.timings.get(run_id)
    if timings is None:
        raise NotFound(
            f"No timings for run {run_id} on this node: it started elsewhere or too long ago.",
            param="run_id",
        )
    return json_response(timings_body(run_id, thread_id, timings))


async def list_run_steps(request: web.Request) -> web.Response:
    """The run's steps (tool calls, child runs) as OpenAI's ``thread.run.step`` objects,
    each as of its latest event (a live run's open steps are ``in_progress``)."""
    query = parse_query(request.query, RunListQuery)
    page = await request.app[HUB].store.list_steps(
        request.match_info["thread_id"],
        request.match_info["run_id"],
        order=query.order,
        limit=query.limit,
        after=query.after,
        before=query.before,
    )
    return json_response(page_body([s.to_dict() for s in page.data], page.has_more))


async def get_run_step(request: web.Request) -> web.Response:
    step = await request.app[HUB].store.get_step(
        request.match_info["thread_id"], request.match_info["run_id"], request.match_info["step_id"]
    )
    return json_response(step.to_dict())


async def cancel_run(request: web.Request) -> web.Response:
    run = await request.app[HUB].runs.cancel(
        request.match_info["thread_id"], request.match_info["run_id"]
    )
    return json_response(run.to_dict())


async def stream_run(request: web.Request) -> web.StreamResponse:
    """Subscribe to a run's events: live, retained, or rebuilt from the store."""
    hub = request.app[HUB]
    thread_id = request.match_info["thread_id"]
    run_id = request.match_info["run_id"]
    run = await hub.store.get_run(thread_id, run_id)  # 404 for a run of another thread
    query = parse_stream_query(request)
    # On several nodes the stream may be published elsewhere: ``open`` mirrors it here.
    stream = await hub.registry.open(run_id, expected=not run.terminal, cursor=query.cursor)
    if stream is None:
        return await _rebuilt(request, run, query)
    return await serve_stream(
        request, stream, query, config=hub.registry.config, registry=hub.registry
    )


async def _rebuilt(request: web.Request, run: Run, query: StreamQuery) -> web.StreamResponse:
    """A finished run whose stream is no longer retained, served from the store.

    From the run's stored event log when it has one (see
    :func:`~agent_runtime.run_log.replay_compacted`): the run's own numbering, an ``id:``
    on every event kept. Otherwise (a run stored before logs were kept): a gap, then a
    snapshot of the run from its messages and steps, the last event carrying the id of the run's
    real last event."""
    hub = request.app[HUB]
    cursor, source, framing = query.cursor, query.cursor_param, query.framing
    stored = await hub.store.get_run_log(run.thread_id, run.id)
    kept = (stored or {}).get("items") or []
    # Only a log that holds the run's end: a run ended elsewhere (a node that died, failed
    # by another) may have left only a checkpoint; it is rebuilt from its messages.
    if stored is not None and kept and kept[-1][2] in protocol.TERMINAL_RUN_EVENTS:
        return _replayed(run, stored, cursor, source, framing, query.snapshot)
    # A run interrupted by a crash has no recorded last event id: any cursor is behind.
    known = run.last_event_id is not None
    last = run.last_event_id or 0
    if known and cursor is not None:
        check_cursor(cursor, last, param=source)
        if cursor == last:
            return at_end_response()
    messages = [m for m in await hub.runs.thread_messages(run.thread_id) if m.run_id == run.id]
    steps = await hub.runs.run_steps(run.thread_id, run.id)
    run_dict = run.to_dict()
    items: list[tuple[str, Any]] = [(GAP, {"from": cursor or 0, "to": last + 1 if known else None})]
    live = {"status": "in_progress", "last_error": None, "failed_at": None}
    live |= {"cancelled_at": None, "completed_at": None, "incomplete_details": None}
    items.append((protocol.run_event("in_progress"), run_dict | live))
    # Steps and messages in the order they were created (a step first within a second).
    timeline: list[RunStep | Message] = sorted([*steps, *messages], key=_created)
    for message in timeline:
        if isinstance(message, RunStep):
            items.extend(_step_events(message, run))
            continue
        created = message.to_dict() | {"content": [], "status": "in_progress"}
        created |= {"completed_at": None, "incomplete_at": None, "incomplete_details": None}
        items.append((protocol.MESSAGE_CREATED, created))
        if message.content:
            items.append((protocol.MESSAGE_DELTA, delta_payload(message.id, message.content)))
        final = (
            protocol.MESSAGE_COMPLETED
            if message.status == "completed"
            else protocol.MESSAGE_INCOMPLETE
        )
        items.append((final, message.to_dict()))
    items.append((protocol.run_event(run.status), run_dict))
    events = [Event.create(None, name, payload) for name, payload in items]
    if known:
        events[-1] = events[-1].with_id(last)
    return replay_response(events, framing)


def _replayed(
    run: Run,
    stored: dict[str, Any],
    cursor: int | None,
    source: str,
    framing: Framing,
    resume: bool,
) -> web.StreamResponse:
    """A run's stream rebuilt from its stored event log (see :func:`_rebuilt`).

    A cursor past the end is a 400, except on a run a crash interrupted: a client may
    have seen events published after the last checkpoint, so any cursor from the
    recovered end on is at the end (204)."""
    items = stored["items"]
    last = int(items[-1][1])
    if cursor is not None and not stored.get("recovered"):
        check_cursor(cursor, last, param=source)
    replay = replay_compacted(items, cursor, resume=resume)
    if replay.at_end:
        return at_end_response()
    events = [Event.create(i, name, payload) for i, name, payload in replay.items]
    return replay_response(events, framing)


def _created(item: RunStep | Message) -> tuple[int, int]:
    return (item.created_at, 0 if isinstance(item, RunStep) else 1)


_STEP_STAMPS = ("cancelled_at", "completed_at", "expired_at", "failed_at")


def _step_events(step: RunStep, run: Run) -> list[tuple[str, Any]]:
    """A stored step of a finished run as its ``created`` and its final event (as a
    snapshot has it). A step the run left ``in_progress`` (its process died) ends as
    the run did."""
    final = step.to_dict()
    created = final | dict.fromkeys(_STEP_STAMPS) | {"status": "in_progress", "last_error": None}
    if final.get("type") == "tool_calls":  # calls arrive in deltas: none when created
        created["step_details"] = {"type": "tool_calls", "tool_calls": []}
    elif final.get("type") == "child_run":  # a child run is created queued
        details = final["step_details"]
        created["step_details"] = details | {
            "child_run": details["child_run"] | {"status": "queued"}
        }
    if final["status"] == "in_progress":
        status = run.status if run.status in ("failed", "cancelled", "expired") else "cancelled"
        ended = run.failed_at or run.cancelled_at or run.completed_at or final["created_at"]
        final |= {"status": status, f"{status}_at": ended}
        if status == "failed":
            final["last_error"] = dict(run.last_error or {}) or None
    return [(protocol.STEP_CREATED, created), (protocol.step_event(final["status"]), final)]


def routes() -> list[tuple[str, str, Any]]:
    return [
        ("POST", "/threads/runs", create_thread_and_run),
        ("POST", "/threads/{thread_id}/runs", create_run),
        ("GET", "/threads/{thread_id}/runs", list_runs),
        ("GET", "/threads/{thread_id}/runs/{run_id}", get_run),
        ("GET", "/threads/{thread_id}/runs/{run_id}/timings", get_run_timings),
        ("POST", "/threads/{thread_id}/runs/{run_id}/cancel", cancel_run),
        ("GET", "/threads/{thread_id}/runs/{run_id}/steps", list_run_steps),
        ("GET", "/threads/{thread_id}/runs/{run_id}/steps/{step_id}", get_run_step),
        ("GET", STREAM_PATH, stream_run),
    ]
