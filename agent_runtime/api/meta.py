"""Agents, liveness and metrics: ``/agents``, ``/healthz``, ``/metrics``."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .keys import HUB
from .validation import json_response

__all__ = ["healthz", "metrics", "routes"]


async def list_agents(request: web.Request) -> web.Response:
    agents = [agent.to_dict() for agent in request.app[HUB].catalog.list()]
    return json_response({"object": "list", "data": agents})


async def healthz(request: web.Request) -> web.Response:
    hub = request.app[HUB]
    return json_response(
        {"status": "ok", "live_runs": hub.runs.live_count, "agents": len(hub.catalog)}
    )


def _line(name: str, value: float, help_text: str, kind: str = "gauge") -> str:
    return f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n{name} {value}\n"


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text exposition of the hub's runs and the broker's streams."""
    hub = request.app[HUB]
    stats = hub.registry.stats()
    out = [
        _line("agentstream_runs_live", hub.runs.live_count, "Runs queued or in progress."),
        _line("agentstream_runs_started_total", hub.runs.started, "Runs started.", "counter"),
        _line("agentstream_streams", stats.streams, "Streams open or retained."),
        _line("agentstream_streams_open", stats.open_streams, "Streams still publishing."),
        _line("agentstream_subscribers", stats.subscribers, "Connected stream subscribers."),
        _line("agentstream_buffered_bytes", stats.buffered_bytes, "Bytes held by replay buffers."),
        _line(
            "agentstream_slowest_subscriber_lag",
            max((s.slowest_lag for s in stats.per_stream), default=0),
            "Events between a stream's head and its slowest subscriber (max over streams).",
        ),
        "# HELP agentstream_runs_finished_total Runs ended, by terminal status.\n"
        "# TYPE agentstream_runs_finished_total counter\n",
    ]
    for status, count in sorted(hub.runs.finished.items()):
        out.append(f'agentstream_runs_finished_total{{status="{status}"}} {count}\n')
    return web.Response(text="".join(out), content_type="text/plain", charset="utf-8")


def routes() -> list[tuple[str, str, Any]]:
    return [("GET", "/agents", list_agents)]
