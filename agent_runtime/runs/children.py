"""Child runs: ``env.run_agent(name, query, relay=...)``.

A child is a normal run of another agent on a new thread holding ``query``, linked to its
parent in both threads' and runs' metadata. The parent's stream carries a ``child_run``
step naming it (and, with ``relay``, the child's message deltas as
``thread.agent.child_delta``). A child never waits for a ``--max-concurrent-runs`` slot:
it runs in its parent's.

Cancellation: cancelling the parent (or the parent ending) cancels its live children;
the parent's end waits for theirs (bounded) and ends their steps with their statuses.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ..errors import InvalidRequest, RunCancelled
from ..objects import Message, Thread, new_id, now
from .context import RunContext
from .ports import ChildRunResult

__all__ = ["end_children", "run_child"]

logger = logging.getLogger(__name__)

CHILDREN_END_TIMEOUT = 5.0
"""Seconds a parent's end waits for its cancelled children to end."""

_CHILD_STEP_STATUS = {"failed": "failed", "cancelled": "cancelled", "expired": "expired"}
"""A child run's status → its step's final status (any other ending: ``completed``)."""


async def run_child(
    parent: RunContext, agent_name: str, query: str, *, relay: bool
) -> ChildRunResult:
    """Run ``agent_name`` on a new child thread holding ``query``; wait for its end."""
    if parent.cancel_requested:
        raise RunCancelled("the run was cancelled")
    if not isinstance(query, str):
        raise InvalidRequest(f"run_agent's query must be a str, not {type(query).__name__}")
    manager = parent.manager
    agent = manager.catalog.get(agent_name)
    parent_thread = await manager.store.get_thread(parent.run.thread_id)
    links = {"parent_thread_id": parent.run.thread_id, "parent_run_id": parent.run.id}
    thread = Thread(
        id=new_id("thread"), created_at=now(), metadata=dict(links), owner=parent_thread.owner
    )
    await manager.store.create_thread(thread)
    await manager.store.add_message(
        Message(
            id=new_id("msg"),
            thread_id=thread.id,
            role="user",
            content=query,
            created_at=now(),
            completed_at=now(),
        )
    )
    if parent.cancel_requested:
        raise RunCancelled("the run was cancelled")
    child = await manager.create(thread.id, agent.id, metadata=links, parent=parent)
    # No await from here to the wait: the child's first event comes after this.
    step = parent.new_step("child_run", _details(child))
    parent.children[step["id"]] = child
    if relay:
        child.relay = (parent, step["id"])
    try:
        await child.done.wait()
    except asyncio.CancelledError:
        manager.cancel_now(child)
        raise
    _end_step(parent, step["id"])
    texts = [
        m.content
        for m in await manager.thread_messages(thread.id)
        if m.run_id == child.run.id and m.role == "assistant"
    ]
    return ChildRunResult(
        thread_id=thread.id,
        run_id=child.run.id,
        assistant_id=agent.name,
        status=child.run.status,
        texts=texts,
        error=(child.run.last_error or {}).get("message"),
    )


def _details(child: RunContext) -> dict[str, Any]:
    return {
        "type": "child_run",
        "child_run": {
            "thread_id": child.run.thread_id,
            "run_id": child.run.id,
            "assistant_id": child.agent.name,
            "status": child.run.status,
        },
    }


def _end_step(parent: RunContext, step_id: str) -> None:
    child = parent.children.pop(step_id, None)
    step = parent.open_steps.get(step_id)
    if child is None or step is None:
        return
    status = _CHILD_STEP_STATUS.get(child.run.status, "completed")
    error = (child.run.last_error or {}).get("message")
    parent.end_step(step, status, _details(child), error=error)


async def end_children(parent: RunContext) -> None:
    """The run is ending: cancel its live children, wait (bounded) for their ends,
    and end their steps with the children's statuses."""
    children = list(parent.children.items())
    for _step_id, child in children:
        parent.manager.cancel_now(child)
    waits = [child.done.wait() for _step_id, child in children if not child.done.is_set()]
    if waits:
        try:
            async with asyncio.timeout(CHILDREN_END_TIMEOUT):
                await asyncio.gather(*waits)
        except TimeoutError:
            logger.warning(
                "run %s: child runs did not end within %.0fs", parent.run.id, CHILDREN_END_TIMEOUT
            )
    for step_id, _child in children:
        _end_step(parent, step_id)
