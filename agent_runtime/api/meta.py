"""Agents, liveness and metrics: ``/agents``, ``/healthz``, ``/metrics``."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from .keys import HUB
from .validation import json_response

__all__ = ["healthz", "routes"]


async def list_agents(request: web.Request) -> web.Response:
    agents = [agent.to_dict() for agent in request.app[HUB].catalog.list()]
    return json_response({"object": "list", "data": agents})


_ORPHANS_LISTED = 10


async def healthz(request: web.Request) -> web.Response:
    """Liveness, with the figures an operator checks first (``tasks``: asyncio tasks
    alive in the process, which must not grow with finished runs or connections;
    ``loop_stall_worst_recent_ms``: the event loop's longest stall of the last five
    minutes; ``orphaned_agent_threads``: synchronous agents still running after their run
    ended, the longest orphaned listed in ``orphans``)."""
    hub = request.app[HUB]
    orphans = hub.runs.agent_threads.orphans()
    body: dict[str, Any] = {
        "status": "ok",
        "live_runs": hub.runs.live_count,
        "agents": len(hub.catalog),
        "subscribers": hub.registry.subscriber_count,
        "tasks": len(asyncio.all_tasks()),
        "loop_stall_worst_recent_ms": round(hub.watchdog.worst_recent() * 1000, 1),
        "orphaned_agent_threads": len(orphans),
        "orphans": [
            {
                "run_id": o.run_id,
                "agent": o.agent,
                "seconds_since_run_ended": round(o.seconds_since_run_ended, 1),
            }
            for o in orphans[:_ORPHANS_LISTED]
        ],
    }
    if hub.cluster is not None:  # one node of several on Redis
        body["node"] = hub.cluster.node_id
    return json_response(body)


def routes() -> list[tuple[str, str, Any]]:
    return [("GET", "/agents", list_agents)]
