"""Child runs: ``env.run_agent(name, query, relay=...)``.

A child is a normal run of another agent on a new thread holding ``query``, linked to its
parent in both threads' and runs' metadata. The parent's stream carries a ``child_run``
step naming it (and, with ``relay``, the child's message deltas as
``thread.agent.child_delta``).

Limits (``RunsConfig``; refused calls raise
:class:`~agent_runtime.errors.ChildRunLimitReached` in the calling agent, naming the limit
and its flag):

- depth: a root run is depth 0, a child one more than its parent; a child deeper than
  ``max_child_depth`` (``--max-child-depth``, 8) is refused;
- descendants: at most ``max_descendants`` (``--max-descendants``, 64) child runs of one
  root, every generation counted, live at once (from the call to the child's end).

Both are checked and the descendant counted in one loop step, before any await, so
children started concurrently (``asyncio.gather``) count each other. An agent may catch
the error; uncaught, it fails the run with the error's message, and the parent's own
``run_agent`` call then raises it again (a failed child otherwise does not raise): a
runaway recursion fails its whole chain, root included, with the limit's message.

Slots (``max_concurrent_runs``, :class:`~.slots.RunSlots`): every executing run counts,
children included. A root run waits ``queued`` until fewer than ``max_concurrent_runs``
runs execute. A child never waits for a slot, since its ancestors hold theirs and waiting
could deadlock (a parent waiting for a child waiting for its parent's slot); it fills
one from its creation to its end, so the roots queued meanwhile wait for it too. At most
``max_concurrent_runs`` roots execute, each with at most ``max_descendants`` live
descendants: live runs ≤ ``max_concurrent_runs × (1 + max_descendants)``.

Cancellation: cancelling the parent (or the parent ending) cancels its live children;
the parent's end waits for theirs (bounded) and ends their steps with their statuses.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ..errors import ChildRunLimitReached, InvalidRequest, RunCancelled
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
    root = _admit(parent, agent_name)
    counted = True

    def uncount(_task: object = None) -> None:
        nonlocal counted
        if counted:
            counted = False
            root.live_descendants -= 1

    try:
        child = await _start(parent, agent.id, query)
    except BaseException:
        uncount()
        raise
    assert child.task is not None
    child.task.add_done_callback(uncount)  # no await since _start: it has not ended
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
    refused = child.refused
    if (
        refused is not None
        and child.run.status == "failed"
        and (child.run.last_error or {}).get("message") == refused.message
    ):  # the child failed of the tree's limit: so does this call
        again = ChildRunLimitReached(refused.message, param=refused.param, code=refused.code)
        parent.refused = again
        raise again
    texts = [
        m.content
        for m in await manager.thread_messages(child.run.thread_id)
        if m.run_id == child.run.id and m.role == "assistant"
    ]
    return ChildRunResult(
        thread_id=child.run.thread_id,
        run_id=child.run.id,
        assistant_id=agent.name,
        status=child.run.status,
        texts=texts,
        error=(child.run.last_error or {}).get("message"),
    )


def _admit(parent: RunContext, agent_name: str) -> RunContext:
    """Check the child-run limits and count the new child in its root's descendants
    (no await: concurrent calls count each other); the root. Refused: raises
    :class:`ChildRunLimitReached`, remembered on ``parent`` (see :func:`run_child`)."""
    config = parent.manager.config
    depth = parent.depth + 1
    root = parent.root
    error: ChildRunLimitReached | None = None
    if depth > config.max_child_depth:
        error = ChildRunLimitReached(
            f"run_agent({agent_name!r}) refused: the child run would be at depth {depth}, "
            f"beyond the limit of {config.max_child_depth} child levels (a root run is "
            "depth 0; set with --max-child-depth / runs.max_child_depth)",
            param="max_child_depth",
            code="max_child_depth_exceeded",
        )
    elif root.live_descendants >= config.max_descendants:
        error = ChildRunLimitReached(
            f"run_agent({agent_name!r}) refused: root run {root.run.id} already has "
            f"{root.live_descendants} live child runs, the limit of {config.max_descendants} "
            "(set with --max-descendants / runs.max_descendants)",
            param="max_descendants",
            code="max_descendants_exceeded",
        )
    if error is not None:
        logger.info("run %s: %s", parent.run.id, error.message)
        parent.refused = error
        raise error
    root.live_descendants += 1
    return root


async def _start(parent: RunContext, assistant_id: str, query: str) -> RunContext:
    """Create the child's thread holding ``query`` and start the child run on it."""
    manager = parent.manager
    parent_thread = await manager.store.get_thread(parent.run.thread_id)
    links = {"parent_thread_id": parent.run.thread_id, "parent_run_id": parent.run.id}
    thread = Thread(
        id=new_id("thread"), created_at=now(), metadata=dict(links), owner=parent_thread.owner
    )
    query_message = Message(
        id=new_id("msg"),
        thread_id=thread.id,
        role="user",
        content=query,
        created_at=now(),
        completed_at=now(),
    )
    if parent.cancel_requested:
        raise RunCancelled("the run was cancelled")
    # The thread, its message and the run: one store write.
    return await manager.create(
        thread.id,
        assistant_id,
        metadata=links,
        parent=parent,
        thread=thread,
        thread_messages=[query_message],
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
