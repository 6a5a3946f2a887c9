"""OpenAI's Responses API: ``POST /responses``, ``GET /responses/{id}`` (``?stream=true``
with ``starting_after``), ``POST /responses/{id}/cancel``, ``DELETE /responses/{id}`` and
``GET /responses/{id}/input_items`` (paths relative to the API root).

A response is a run on a thread (see :mod:`agent_runtime.responses`): ``model`` is a
model this hub serves (a plain model response) or ``agent:NAME``. ``docs/responses.md``
describes what is served and how it differs from OpenAI's.

A response belongs to the key that created its thread: other keys get 404 for it, as for
a response that does not exist. Creating one never retries itself (errors carry
``x-should-retry: false``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from pydantic import BaseModel, ConfigDict, Field

from broker import (
    Event,
    Framing,
    StreamQuery,
    at_end_response,
    check_cursor,
    replay_response,
    serve_stream,
)

from ..errors import InvalidRequest, NotFound
from ..hub import Hub
from ..objects import Thread
from ..responses.fold import TERMINAL_STATUSES, terminal_event_for
from ..responses.objects import (
    AGENT_PREFIX,
    base_response,
    chat_messages,
    chat_response_format,
    chat_tool_choice,
    chat_tools,
    input_items,
    item_text,
    message_item,
    parse_response_id,
)
from ..responses.service import LiveResponse, PlainRequest, Responses, input_with_ids
from .auth import owned_thread
from .keys import HUB
from .metrics import METRICS_REGISTRY
from .threads import ThreadIn, check_content, new_thread
from .validation import Instructions, Metadata, json_response, parse_query, read_json

__all__ = ["RESPONSES", "install", "install_metrics", "routes"]

RESPONSES = web.AppKey("agentstream.responses", Responses)


class ResponseIn(BaseModel):
    """The request body of ``POST /responses``; other OpenAI fields are accepted and
    echoed where the response object has them."""

    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=1)
    input: Any = None  # checked by input_items (naming the item at fault)
    instructions: Instructions | None = None
    previous_response_id: str | None = None
    conversation: str | dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: Any = None
    metadata: Metadata | None = None
    store: bool | None = None
    stream: bool | None = None
    background: bool | None = None
    temperature: float | None = Field(default=None, ge=0, le=2)
    top_p: float | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)


class RetrieveQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")

    stream: bool = False
    starting_after: int | None = Field(default=None, ge=0)


class ItemsQuery(BaseModel):
    model_config = ConfigDict(extra="ignore")

    order: Literal["asc", "desc"] = "desc"
    limit: int = Field(20, ge=1, le=100)
    after: str | None = None


def install(app: web.Application, hub: Hub) -> None:
    """Make the hub's responses service (it wraps the hub's agent runner)."""
    app[RESPONSES] = Responses(hub)


class ResponsesCollector(Collector):
    """``agentstream_responses_created`` and ``agentstream_responses_live`` (a response's
    run and streams are counted with the runs and streams too)."""

    def __init__(self, service: Responses) -> None:
        self._service = service

    def collect(self) -> Iterator[Metric]:
        created = CounterMetricFamily(
            "agentstream_responses_created", "Responses created (POST /responses)."
        )
        created.add_metric([], self._service.created)
        yield created
        live = GaugeMetricFamily(
            "agentstream_responses_live", "Responses whose run is live on this node."
        )
        live.add_metric([], len(self._service.live))
        yield live


def install_metrics(app: web.Application) -> None:
    """Add the responses' figures to ``/metrics`` (after :func:`metrics.install`)."""
    app[METRICS_REGISTRY].register(ResponsesCollector(app[RESPONSES]))


async def _owned(request: web.Request, rid: str) -> tuple[str, str]:
    """``(thread_id, run_id)`` of a response this request's key may see; else 404."""
    thread_id, run_id = parse_response_id(rid)
    try:
        await owned_thread(request, thread_id)
    except NotFound:
        raise NotFound(f"No response found with id '{rid}'.", param="response_id") from None
    return thread_id, run_id


async def _thread_for(request: web.Request, body: ResponseIn) -> tuple[str, Thread | None]:
    """The thread the response runs on, and ``None`` if it continues one, else the new
    thread (not stored yet: the run's creation stores it, in the same write)."""
    if body.previous_response_id is not None:
        thread_id, _run_id = await _owned(request, body.previous_response_id)
        await request.app[RESPONSES].record(thread_id, body.previous_response_id)
        return thread_id, None
    if body.conversation is not None:
        conversation = body.conversation
        thread_id = str(conversation.get("id") if isinstance(conversation, dict) else conversation)
        try:
            await owned_thread(request, thread_id)
        except NotFound:
            raise NotFound(
                f"Conversation with id '{thread_id}' not found.", param="conversation"
            ) from None
        return thread_id, None
    thread, _messages = new_thread(request, ThreadIn())
    return thread.id, thread


async def create_response(request: web.Request) -> web.StreamResponse:
    hub = request.app[HUB]
    service = request.app[RESPONSES]
    body = await read_json(request, ResponseIn)
    data = body.model_dump()
    items = input_items(body.input)
    if body.previous_response_id is not None and body.conversation is not None:
        raise InvalidRequest(
            "Use 'previous_response_id' or 'conversation', not both.", param="conversation"
        )
    agent_name = body.model[len(AGENT_PREFIX) :] if body.model.startswith(AGENT_PREFIX) else None
    if agent_name is not None:
        try:
            agent = hub.catalog.get(agent_name)
        except NotFound as exc:
            raise NotFound(exc.message, param="model") from None
        run_model = None
    else:
        hub.models.check(body.model)  # 400 for a model this hub cannot serve
        agent, run_model = service.model_agent, body.model
    messages: list[tuple[str, str]] = []
    system: list[str] = []
    for index, item in enumerate(items):
        if item.get("type") != "message":
            continue
        text = item_text(item)
        check_content(request, text, f"input[{index}].content")
        if item["role"] in ("user", "assistant"):
            messages.append((item["role"], text))
        else:
            system.append(text)
    instructions = "\n\n".join(filter(None, [body.instructions, *system])) or None
    thread_id, thread = await _thread_for(request, body)
    plain: PlainRequest | None = None
    if agent_name is None:
        history: list[dict[str, Any]] = []
        if body.previous_response_id is not None:  # OpenAI's chain: inputs and outputs
            history = await service.chain(thread_id, body.previous_response_id)
        elif thread is None:  # a conversation continued
            messages_so_far = await hub.runs.thread_messages(thread_id)
            history = [message_item(m.role, m.content) for m in messages_so_far]
        plain = PlainRequest(
            chat_messages(body.instructions, [*history, *items]), _model_kwargs(body)
        )
    base = base_response(
        response_id="", thread_id=thread_id, created_at=0, model=body.model, body=data
    )
    live = await service.start(  # a new thread is stored with the run, or not at all
        thread_id=thread_id,
        thread=thread,
        agent=agent,
        model=run_model,
        instructions=instructions,
        messages=messages,
        metadata=body.metadata,
        base=base,
        items=input_with_ids(items),
        plain=plain,
    )
    if body.stream:
        query = StreamQuery(None, "starting_after", Framing.OPENAI, False)
        return await serve_stream(
            request, live.stream, query, config=hub.registry.config, registry=hub.registry
        )
    if body.background:
        return json_response(live.response)
    await live.finished.wait()
    return json_response(live.response)


def _model_kwargs(body: ResponseIn) -> dict[str, Any]:
    kwargs: dict[str, Any] = {}
    tools = chat_tools(body.tools or [])
    if tools:
        kwargs["tools"] = tools
        choice = chat_tool_choice(body.tool_choice)
        if choice is not None:
            kwargs["tool_choice"] = choice
    if body.temperature is not None:
        kwargs["temperature"] = body.temperature
    if body.top_p is not None:
        kwargs["top_p"] = body.top_p
    if body.max_output_tokens is not None:
        kwargs["max_tokens"] = body.max_output_tokens
    response_format = chat_response_format((body.model_extra or {}).get("text"))
    if response_format is not None:
        kwargs["response_format"] = response_format
    return kwargs


async def get_response(request: web.Request) -> web.StreamResponse:
    hub = request.app[HUB]
    service = request.app[RESPONSES]
    rid = request.match_info["response_id"]
    thread_id, run_id = await _owned(request, rid)
    query = parse_query(request.query, RetrieveQuery)
    if not query.stream:
        return json_response(await service.current(thread_id, run_id, rid))
    cursor = None if query.starting_after is None else query.starting_after + 1
    live = service.live.get(rid)
    if live is not None:
        return await _serve(request, live.stream, cursor)
    record = await service.record(thread_id, rid)
    run = await hub.runs.get_run(thread_id, run_id)
    stream = await hub.registry.open(rid, expected=not run.terminal, cursor=cursor)
    if stream is not None:
        return await _serve(request, stream, cursor)
    response = record["response"]
    head = int(record.get("head") or 0)
    if response.get("status") not in TERMINAL_STATUSES:
        response, head = await service.rebuilt(run, response), 0
    return _from_store(response, head, cursor, hub.registry.config.gap_event)


async def _serve(request: web.Request, stream: Any, cursor: int | None) -> web.StreamResponse:
    hub = request.app[HUB]
    query = StreamQuery(cursor, "starting_after", Framing.OPENAI, False)
    return await serve_stream(
        request, stream, query, config=hub.registry.config, registry=hub.registry
    )


def _from_store(
    response: dict[str, Any], head: int, cursor: int | None, gap_event: str
) -> web.StreamResponse:
    """An ended response whose stream is no longer retained: a gap, then its terminal
    event carrying the whole response (stamped with its real last id when known)."""
    if head and cursor is not None:
        check_cursor(cursor, head, param="starting_after")
        if cursor >= head:
            return at_end_response()
    status = str(response.get("status"))
    # Not ended (its stream lost with a node that died): its state as far as stored.
    name = terminal_event_for(status) if status in TERMINAL_STATUSES else "response.in_progress"
    seq = max(head - 1, 0)
    events = [
        Event.create(None, gap_event, {"from": cursor or 0, "to": head + 1 if head else None}),
        Event.create(
            head or None, name, {"type": name, "sequence_number": seq, "response": response}
        ),
    ]
    return replay_response(events, Framing.OPENAI)


async def cancel_response(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    service = request.app[RESPONSES]
    rid = request.match_info["response_id"]
    thread_id, run_id = await _owned(request, rid)
    await service.record(thread_id, rid)
    try:
        await hub.runs.cancel(thread_id, run_id)
    except InvalidRequest:
        current = await service.current(thread_id, run_id, rid)
        raise InvalidRequest(
            f"Cannot cancel a response with status '{current.get('status')}'.",
            param="response_id",
        ) from None
    live: LiveResponse | None = service.live.get(rid)
    if live is not None:
        await live.finished.wait()
        return json_response(live.response)
    response = await service.current(thread_id, run_id, rid)
    if response.get("status") not in TERMINAL_STATUSES:
        response["status"] = "cancelled"
    return json_response(response)


async def delete_response(request: web.Request) -> web.Response:
    service = request.app[RESPONSES]
    rid = request.match_info["response_id"]
    thread_id, run_id = await _owned(request, rid)
    run = await request.app[HUB].runs.get_run(thread_id, run_id)
    if rid in service.live or not run.terminal:  # live here or on another node
        raise InvalidRequest(
            "Cannot delete a response that is in progress; cancel it first.",
            param="response_id",
        )
    await service.delete(thread_id, rid)
    return json_response({"id": rid, "object": "response", "deleted": True})


async def list_input_items(request: web.Request) -> web.Response:
    service = request.app[RESPONSES]
    rid = request.match_info["response_id"]
    thread_id, _run_id = await _owned(request, rid)
    query = parse_query(request.query, ItemsQuery)
    items: list[dict[str, Any]] = list((await service.record(thread_id, rid)).get("input") or [])
    if query.order == "desc":
        items.reverse()
    if query.after is not None:
        ids = [item.get("id") for item in items]
        items = items[ids.index(query.after) + 1 :] if query.after in ids else []
    page = items[: query.limit]
    return json_response(
        {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(items) > len(page),
        }
    )


def routes() -> list[tuple[str, str, Any]]:
    return [
        ("POST", "/responses", create_response),
        ("GET", "/responses/{response_id}", get_response),
        ("POST", "/responses/{response_id}/cancel", cancel_response),
        ("DELETE", "/responses/{response_id}", delete_response),
        ("GET", "/responses/{response_id}/input_items", list_input_items),
    ]
