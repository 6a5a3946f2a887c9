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


async def healthz(request: web.Request) -> web.Response:
    """Liveness, with the figures an operator checks first (``tasks``: asyncio tasks
    alive in the process, which must not grow with finished runs or connections)."""
    hub = request.app[HUB]
    body = {
        "status": "ok",
        "live_runs": hub.runs.live_count,
        "agents": len(hub.catalog),
        "subscribers": hub.registry.subscriber_count,
        "tasks": len(asyncio.all_tasks()),
    }
    if hub.cluster is not None:  # one node of several on Redis
        body["node"] = hub.cluster.node_id
    return json_response(body)


def routes() -> list[tuple[str, str, Any]]:
    return [("GET", "/agents", list_agents)]
