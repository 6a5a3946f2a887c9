"""A run's task: wait for a slot, run the agent, end the run — whatever fails.

Endings
-------
Exactly one terminal event ends every run, whatever happens: ``completed`` (the agent
returned), ``failed`` (it raised, a provider failed, or it called ``mark_failed``; the
``last_error`` carries the message, not a traceback), ``cancelled`` (a cancel request:
an async agent's task is cancelled at once, a sync agent stops at its next Environment
call), ``expired`` (past ``expires_at``, queue time included), ``requires_action``
(``request_user_input``). The stream is closed right after it.

The final state is stored before the terminal event is published (bounded by
``final_write_timeout``), so a client that reads the run after seeing its end finds it
ended; a write that fails or hangs is logged with the run's id and queued for repair
(:mod:`agent_runtime.repairs`), and the terminal event is published anyway.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging

from .. import protocol
from ..environment import Environment
from ..errors import AgentProcessError, NotFound, RunCancelled, ServiceUnavailable
from ..logs import bind_run, log_run_end, log_run_start
from ..objects import RunStatus, now
from . import children, replies
from .agent_side import AgentSide
from .agent_thread import AgentExit, describe, exit_outcome, in_daemon_thread
from .context import RunContext

__all__ = ["InProcess", "NoSlot", "execute", "finish"]

logger = logging.getLogger(__name__)


class NoSlot:
    """No slot to wait for (a child run: counted by the slots, never waiting)."""

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: object) -> None:
        return None


class InProcess:
    """Agents in the hub's process (``--isolation none``): an async agent awaited on the
    event loop, a sync agent in a daemon thread of its own (see
    :func:`~agent_runtime.runs.agent_thread.in_daemon_thread`)."""

    async def run_agent(self, ctx: RunContext) -> None:
        env = Environment(AgentSide(ctx))
        timings = ctx.timings
        if ctx.agent.style == "async":
            timings.stamp("agent_running")
            await ctx.agent.run_async(env)
        else:
            run_sync = ctx.agent.run_sync

            def run_in_thread(env: Environment) -> None:
                timings.stamp("agent_running")  # in the agent's thread, as it begins
                run_sync(env)

            await in_daemon_thread(
                run_in_thread,
                env,
                ctx.run.id,
                threads=ctx.manager.agent_threads,
                agent=ctx.agent.name,
            )


async def execute(ctx: RunContext) -> None:
    """The run's task body: wait for a slot, run the agent, end the run; an INFO line
    (logger ``agentstream.runs``) when it starts and one when it ends, even cancelled."""
    bind_run(ctx.run.id, ctx.run.thread_id)  # this task's context: its logs carry them
    started = log_run_start(ctx.agent.id, ctx.run.model)
    try:
        await _execute(ctx)
    finally:
        log_run_end(ctx.agent.id, ctx.run.model, ctx.run.status, started, ctx.head)


async def _execute(ctx: RunContext) -> None:
    ctx.started = True
    ctx.timings.stamp("task_started")
    if ctx.ending is not None:  # ended before its task began: end it now
        await finish(ctx, *ctx.ending)
        return
    status: RunStatus = "completed"
    error: str | None = None
    try:
        async with asyncio.timeout_at(ctx.deadline):
            # A child run never waits for a slot (its ancestors hold theirs); it is
            # counted among the slots' runs from its creation (see .slots).
            async with ctx.manager.slot() if ctx.parent is None else NoSlot():
                await _set_status(ctx, "in_progress", started_at=now())
                ctx.timings.stamp("in_progress")
                await ctx.manager.runner.run_agent(ctx)
        if ctx.outcome is not None:
            status, error = ctx.outcome
    except TimeoutError:
        status, error = "expired", None
    except asyncio.CancelledError:
        status, error = ctx.ending or ("failed", "the run was interrupted")
        if ctx.ending is None:
            await finish(ctx, status, error)
            raise
        # We asked for this cancellation (RunContext.end): absorb it and end the run.
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
    except RunCancelled:
        status, error = ctx.ending or ("cancelled", None)
    except (SystemExit, KeyboardInterrupt, AgentExit) as exc:
        # An agent calling sys.exit() (or raising KeyboardInterrupt) ends its run,
        # never the hub: exit status 0 or None completes it, anything else fails it.
        status, error = ctx.ending or exit_outcome(exc)
        logger.warning("run %s: the agent exited: %s", ctx.run.id, error or "status 0")
    except Exception as exc:  # the agent's own failure ends the run, never the hub
        status, error = ctx.ending or ("failed", describe(exc))
        # The hub's own unavailability (a full disk…) is not the agent's bug: no trace.
        trace = None if isinstance(exc, (ServiceUnavailable, AgentProcessError)) else exc
        logger.warning("run %s: the agent failed: %s", ctx.run.id, error, exc_info=trace)
    if ctx.ending is not None:
        status, error = ctx.ending
    await finish(ctx, status, error)


async def _set_status(ctx: RunContext, status: RunStatus, **fields: object) -> None:
    """Record a (non-terminal) status change in the store, then publish it (store first,
    so a client that reads the run after seeing the event sees the new status)."""
    ctx.run.status = status
    for key, value in fields.items():
        setattr(ctx.run, key, value)
    await ctx.manager.store.update_run(ctx.run)
    ctx.publish(protocol.run_event(status), ctx.run.to_dict())


async def finish(ctx: RunContext, status: RunStatus, error: str | None) -> None:
    """End the run: close what is open, write its final state, publish its terminal
    event and close its stream. The terminal event is published and the stream closed
    whatever happens here (a store that fails or hangs, a bug)."""
    ctx.finishing = True  # from here on, end() must not cancel this task
    try:
        for handler in ctx.handlers:
            if not handler.done:
                handler.interrupt()
        pumps = list(ctx.pumps)
        for pump_task in pumps:
            pump_task.cancel()
        if pumps:
            await asyncio.gather(*pumps, return_exceptions=True)
        for handler in ctx.handlers:
            if not handler.replied:
                await replies.close_unreplied(ctx, handler, status)
        await children.end_children(ctx)
        _end_open_steps(ctx, status)
        await ctx.steps_stored()  # the steps are in the store before the run's end
    except Exception as exc:  # never stops the ending
        logger.exception("run %s: error while ending (ending it anyway)", ctx.run.id)
        if status == "completed":
            status, error = "failed", describe(exc)
    _set_final(ctx, status, error)
    try:
        # Store first (bounded), so a client that reads the run after seeing its
        # terminal event sees it ended; then the event, whatever the store did.
        await _write_final(ctx)
    finally:
        try:
            ctx.publish(protocol.run_event(status), ctx.run.to_dict())
        finally:
            ctx.stream.close()
            ctx.done.set()


def _end_open_steps(ctx: RunContext, status: RunStatus) -> None:
    """Steps still open when the run ends: a step's status follows the run's."""
    step_status = status if status in ("failed", "cancelled", "expired") else "cancelled"
    for step in list(ctx.open_steps.values()):
        ctx.end_step(step, step_status, error=f"the run ended {status}")


def _set_final(ctx: RunContext, status: RunStatus, error: str | None) -> None:
    """The run's final status and stamps; its terminal event's id is the next one."""
    stamp = now()
    run = ctx.run
    run.status = status
    if status == "completed":
        run.completed_at = stamp
    elif status == "failed":
        run.failed_at = stamp
        run.last_error = {"code": "server_error", "message": error or "the run failed"}
    elif status == "cancelled":
        run.cancelled_at = stamp
    ctx.cancel_requested = True
    run.last_event_id = ctx.stream.head + 1


async def _write_final(ctx: RunContext) -> None:
    """Store the run's final state and its event log, its terminal event included
    (bounded by ``final_write_timeout``). A failure is logged with the run's id and
    queued for repair; it never raises (but for cancellation)."""
    run = dataclasses.replace(ctx.run)
    log = ctx.stored_log()
    terminal = run.last_event_id
    log["items"].append([terminal, terminal, protocol.run_event(run.status), run.to_dict()])
    log["head"] = terminal
    manager = ctx.manager
    try:
        async with asyncio.timeout(manager.config.final_write_timeout):
            # Both queued in one loop turn: the store applies them in order, and a
            # store that batches its writes (Redis) sends them in one round trip.
            await asyncio.gather(
                manager.store.update_run(run),
                manager.store.save_run_log(run.thread_id, run.id, log),
            )
    except (Exception, TimeoutError) as exc:
        if isinstance(exc, NotFound):
            logger.info("run %s ended after its thread was deleted", run.id)
            return
        logger.error(
            "run %s ended %s but its final state could not be stored (%s); "
            "retrying in the background",
            run.id,
            run.status,
            "timed out" if isinstance(exc, TimeoutError) else describe(exc),
        )
        manager.repairs.add(run.thread_id, run.id, run=run, log=log)
