"""``/metrics``: the hub in Prometheus text format, through ``prometheus_client``.

One :class:`HubCollector` per app, in a registry of its own (no process-global state):
every figure is read from the hub at scrape time, so nothing on the hot path updates a
metric object; the broker keeps plain integer counters (:class:`broker.Counters`).
"""

from __future__ import annotations

from collections.abc import Iterator

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from ..hub import Hub

__all__ = ["METRICS_REGISTRY", "HubCollector", "metrics"]

METRICS_REGISTRY = web.AppKey("agentstream.metrics", CollectorRegistry)


class HubCollector(Collector):
    def __init__(self, hub: Hub) -> None:
        self._hub = hub

    def collect(self) -> Iterator[Metric]:
        hub = self._hub
        runs = hub.runs
        stats = hub.registry.stats()
        counters = hub.registry.counters

        started = CounterMetricFamily("agentstream_runs_started", "Runs started.")
        started.add_metric([], runs.started)
        yield started
        finished = CounterMetricFamily(
            "agentstream_runs_finished", "Runs ended, by terminal status.", labels=["status"]
        )
        for status, count in sorted(runs.finished.items()):
            finished.add_metric([status], count)
        yield finished
        live = GaugeMetricFamily(
            "agentstream_runs_live", "Runs not yet ended, by status.", labels=["status"]
        )
        for status, count in sorted(runs.live_by_status().items()):
            live.add_metric([status], count)
        yield live

        streams = GaugeMetricFamily(
            "agentstream_streams", "Run streams held by the broker.", labels=["state"]
        )
        streams.add_metric(["open"], stats.open_streams)
        streams.add_metric(["retained"], stats.streams - stats.open_streams)
        yield streams
        subscribers = GaugeMetricFamily("agentstream_subscribers", "Connected SSE subscribers.")
        subscribers.add_metric([], stats.subscribers)
        yield subscribers
        lag = GaugeMetricFamily(
            "agentstream_slowest_subscriber_lag_events",
            "Events between a stream's head and its slowest subscriber (max over streams).",
        )
        lag.add_metric([], max((s.slowest_lag for s in stats.per_stream), default=0))
        yield lag
        buffered = GaugeMetricFamily(
            "agentstream_buffer_bytes", "Bytes held by the streams' replay buffers."
        )
        buffered.add_metric([], stats.buffered_bytes)
        yield buffered

        orphans = GaugeMetricFamily(
            "agentstream_orphaned_agent_threads",
            "Synchronous agents' threads still running after their run ended (they ignored "
            "the cancel; only --isolation process can stop them).",
        )
        orphans.add_metric([], len(runs.agent_threads.orphans()))
        yield orphans

        watchdog = hub.watchdog
        stalls = CounterMetricFamily(
            "agentstream_event_loop_stalls",
            "Times the event loop ran no callback for longer than --loop-stall-threshold.",
        )
        stalls.add_metric([], watchdog.stalls())
        yield stalls
        buckets, total = watchdog.histogram()
        durations = HistogramMetricFamily(
            "agentstream_event_loop_stall_seconds", "Durations of the event loop's stalls."
        )
        durations.add_metric(
            [], [("+Inf" if b == float("inf") else repr(b), n) for b, n in buckets], total
        )
        yield durations

        for name, value, help_text in (
            ("agentstream_events_published", counters.published, "Events published."),
            (
                "agentstream_events_delivered",
                counters.delivered,
                "Events written to SSE subscribers (one per subscriber).",
            ),
            ("agentstream_subscriber_writes", counters.writes, "Coalesced writes to subscribers."),
            ("agentstream_stream_gaps", counters.gaps, "thread.stream.gap events served."),
            ("agentstream_stream_snapshots", counters.snapshots, "Snapshots served."),
            (
                "agentstream_slow_subscriber_disconnects",
                counters.stalled_disconnects,
                "Subscribers disconnected for making no progress.",
            ),
        ):
            family = CounterMetricFamily(name, help_text)
            family.add_metric([], value)
            yield family


def install(app: web.Application, hub: Hub) -> None:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(HubCollector(hub))
    app[METRICS_REGISTRY] = registry


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[METRICS_REGISTRY])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
