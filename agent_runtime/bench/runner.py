"""The load of ``agentstream bench``: runs started over HTTP, subscribers, verification.

``--runs N`` slots each start a run (``POST /v1/threads/runs``), connect its ``K``
subscribers, wait for its end, verify it, and start the next one, until ``--duration``
seconds have passed since the first start (every slot runs at least once; slot ``i``
starts ``i × ramp / N`` seconds late). Runs still live then are awaited for ``--drain``
seconds more, then cancelled through the API.

Per run, a random ``late`` fraction of the subscribers joins part-way through it and a
``drop`` fraction drops its connection part-way and resumes with ``Last-Event-ID`` (never
subscriber 0, the run's first and steadiest receiver, when there are others). "Part-way"
is a random 10–90% of the expected run length: from the simulated model's spec at first,
then the average length of the runs measured so far.

Verification, per run, once every subscriber has its terminal event: the thread's stored
messages of the run (``GET …/messages?run_id=``) against each subscriber's rebuilt text,
exactly; ids without duplicate or unannounced hole; every subscriber at the run's last id.

Latency (see ``LATENCY_DEFINITION``): receive time minus the first receipt of the same
event by any subscriber of its run. Concurrency: one event loop; a ticker task samples the
counters every second (the timeline and the progress line).
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from .breakdown import Breakdown, ClientStamps
from .endpoint import BenchError, endpoint_of, resolved
from .hubproc import CpuMeter, CpuPressure, MachineMeter
from .selfcheck import LoopLag, verdict
from .sse_client import BenchCounters, RunState, Subscriber, describe
from .stats import Histogram, summary_ms
from .totals import Totals

__all__ = ["LATENCY_DEFINITION", "Bench", "BenchError", "BenchOptions"]

logger = logging.getLogger(__name__)

LATENCY_DEFINITION = (
    "latency = an event's receive time at a subscriber minus its first receipt by any "
    "subscriber of the same run (the run's de-facto probe, over loopback): it measures how "
    "late the hub's fan-out delivers to the other subscribers, not the hop from the model. "
    "Events another subscriber had received before this one's response began (backlog "
    "replays to late joiners, resumed or slow-to-connect subscribers) are not sampled."
)
_CANCEL_GRACE = 5.0


@dataclass
class BenchOptions:
    """Everything ``agentstream bench`` was asked to do."""

    url: str
    agent: str = "streaming-example"
    runs: int = 10
    subscribers: int = 10
    model: str | None = None
    duration: float = 10.0
    ramp: float = 0.0
    late_joiners: float = 0.0
    reconnects: float = 0.0
    drain: float = 30.0
    question: str = "What is virtue?"
    seed: int = 1
    hub_pid: int | None = None
    progress: Callable[[dict[str, Any]], None] | None = None


class Bench:
    """One bench against the hub at ``options.url``; :meth:`run` returns the summary."""

    def __init__(self, options: BenchOptions) -> None:
        self.opt = options
        self.endpoint = endpoint_of(options.url)
        self.base = options.url.rstrip("/")
        self.rng = random.Random(options.seed)
        self.tally = BenchCounters()
        self.totals = Totals()
        self.latency = Histogram()
        self.spread = Histogram()
        self.first_delta: list[float] = []
        self.breakdown = Breakdown()
        self.loop_lag = LoopLag()
        self._wall = 0.0
        """``time.time()`` minus ``time.monotonic()``: the bench's stamps on the hub's clock."""
        self.run_lengths: list[float] = []
        self.models_used: dict[str, int] = {}
        """Runs per model the hub recorded on them (the run object's ``model``): a hub
        that forces a model uses it whatever the bench asked for."""
        self.estimate = _initial_estimate(options.model)
        self.timeline: list[dict[str, Any]] = []
        self.live_runs = 0
        self.stopping = False
        self.hard_stop = asyncio.Event()
        self._cpu = CpuMeter()
        self._hub_cpu = CpuMeter(options.hub_pid) if options.hub_pid else None
        self._machine = MachineMeter()
        self._pressure = CpuPressure()
        self._t0 = 0.0
        self._marks: dict[str, tuple[float, int]] = {}
        self._session: aiohttp.ClientSession | None = None
        self._all_subs: list[Subscriber] = []

    # -- the whole bench -----------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        timeout = aiohttp.ClientTimeout(total=60)
        # One connection per run being started or verified at once: a pool smaller than
        # the burst would queue the POSTs in the bench and count the wait as the hub's.
        connector = aiohttp.TCPConnector(limit=max(64, 2 * self.opt.runs))
        async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
            self._session = session
            await self._preflight()
            self.endpoint = await resolved(self.endpoint)
            runs_before = await self._metric("agentstream_runs_started_total")
            loop = asyncio.get_running_loop()
            self._t0 = loop.time()
            self._cpu.sample()
            if self._hub_cpu is not None:
                self._hub_cpu.sample()
            self._machine.sample()
            self._pressure.start()
            self._wall = time.time() - time.monotonic()
            self.loop_lag.start()
            self._mark("start")
            loop.call_later(max(self.opt.ramp, 0.0), self._mark, "ramped")
            loop.call_later(self.opt.duration, self._stop_starting)
            loop.call_later(self.opt.duration + self.opt.drain, self.hard_stop.set)
            ticker = asyncio.create_task(self._ticker())
            slots = [asyncio.create_task(self._slot(i)) for i in range(self.opt.runs)]
            try:
                await asyncio.gather(*slots)
            finally:  # on an error (or a cancellation) stop every slot before leaving
                ticker.cancel()
                self.loop_lag.stop()
                self._pressure.stop()
                for slot in slots:
                    slot.cancel()
                await asyncio.gather(*slots, return_exceptions=True)
                for sub in self._all_subs:
                    sub.close()
            self._tick()
            self._mark("end")
            runs_after = await self._metric("agentstream_runs_started_total")
        hub_runs = None
        if runs_before is not None and runs_after is not None:
            hub_runs = int(runs_after - runs_before)
        return self._summary(hub_runs)

    async def _preflight(self) -> None:
        assert self._session is not None
        try:
            async with self._session.get(f"{self.base}/v1/agents") as response:
                body = await response.json(content_type=None)
                status = response.status
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise BenchError(f"cannot reach an agentstream hub at {self.base}: {exc}") from None
        if status != 200 or not isinstance(body, dict):
            raise BenchError(f"{self.base}/v1/agents answered {status}: is it an agentstream hub?")
        known = {a.get("name") for a in body.get("data", [])} | {
            a.get("id") for a in body.get("data", [])
        }
        if self.opt.agent not in known:
            names = ", ".join(sorted(str(a.get("name")) for a in body.get("data", [])))
            raise BenchError(f"the hub has no agent {self.opt.agent!r} (it has: {names})")

    async def _metric(self, name: str) -> float | None:
        assert self._session is not None
        try:
            async with self._session.get(f"{self.base}/metrics") as response:
                text = await response.text()
        except (aiohttp.ClientError, TimeoutError):
            return None
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return None

    def _now(self) -> float:
        return asyncio.get_running_loop().time() - self._t0

    def _mark(self, name: str) -> None:
        self._marks[name] = (self._now(), self.tally.delivered)

    def _stop_starting(self) -> None:
        self.stopping = True
        self._mark("stopped")

    # -- the ticker ----------------------------------------------------------------------

    async def _ticker(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self._tick()

    def _tick(self) -> None:
        window, self.tally.window = self.tally.window, Histogram()
        self.latency.merge(window)
        previous = self.timeline[-1] if self.timeline else {"delivered": 0, "bytes": 0, "t": 0.0}
        t = self._now()
        spent = max(t - previous["t"], 1e-9)
        cpu = self._cpu.sample()
        hub_cpu = None if self._hub_cpu is None else self._hub_cpu.sample()
        machine = self._machine.sample()
        others = None if machine is None else max(0.0, machine - cpu - (hub_cpu or 0.0))
        point: dict[str, Any] = {
            "t": round(t, 3),
            "delivered": self.tally.delivered,
            "bytes": self.tally.bytes,
            "events_per_s": round((self.tally.delivered - previous["delivered"]) / spent, 1),
            "latency_ms": window.summary_ms(),
            "cpu": round(cpu, 3),
            "hub_cpu": None if hub_cpu is None else round(hub_cpu, 3),
            "others_cpu": None if others is None else round(others, 3),
            "live_runs": self.live_runs,
            "connected": self.tally.connected,
        }
        self.timeline.append(point)
        if self.opt.progress is not None:
            self.opt.progress(self._progress(point))

    def _progress(self, point: dict[str, Any]) -> dict[str, Any]:
        totals = self.totals
        return {
            "t": point["t"],
            "live_runs": self.live_runs,
            "runs_done": totals.runs_verified,
            "connected": self.tally.connected,
            "events_per_s": point["events_per_s"],
            "p99_ms": self.latency.summary_ms()["p99"],
            "errors": self.tally.errors
            + totals.duplicates
            + totals.missing
            + totals.mismatches
            + totals.create_errors,
            "cpu": point["cpu"],
            "stopping": self.stopping,
        }

    # -- runs ----------------------------------------------------------------------------

    async def _slot(self, index: int) -> None:
        if self.opt.ramp > 0 and self.opt.runs > 1:
            await asyncio.sleep(self.opt.ramp * index / self.opt.runs)
        first = True
        while first or not self.stopping:
            if self.hard_stop.is_set():
                return
            first = False
            if not await self._one_run():
                if self.totals.runs_started == 0 and self.totals.create_errors >= 3:
                    raise BenchError("could not start any run: " + "; ".join(self.totals.examples))
                await asyncio.sleep(0.5)

    async def _create(self) -> tuple[dict[str, Any] | None, float, float | None]:
        """Start a run: its object (None if it failed), when the POST was sent and when
        it was answered (``time.monotonic()``)."""
        assert self._session is not None
        body: dict[str, Any] = {
            "assistant_id": self.opt.agent,
            "thread": {"messages": [{"role": "user", "content": self.opt.question}]},
        }
        if self.opt.model:
            body["model"] = self.opt.model
        t_post = time.monotonic()
        try:
            async with self._session.post(f"{self.base}/v1/threads/runs", json=body) as response:
                payload = await response.json(content_type=None)
                status = response.status
            t_answered = time.monotonic()
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            self.totals.create_errors += 1
            self.totals.example(f"POST /v1/threads/runs: {exc!r}")
            return None, t_post, None
        if status != 200 or not isinstance(payload, dict) or "id" not in payload:
            self.totals.create_errors += 1
            message = payload.get("error", {}).get("message") if isinstance(payload, dict) else ""
            self.totals.example(f"POST /v1/threads/runs answered {status}: {message}")
            return None, t_post, t_answered
        return payload, t_post, t_answered

    def _roles(self) -> tuple[set[int], set[int]]:
        k = self.opt.subscribers
        candidates = list(range(1, k)) if k > 1 else [0]
        self.rng.shuffle(candidates)

        def count(fraction: float) -> int:
            exact = fraction * k
            whole = math.floor(exact)
            return min(len(candidates), whole + (self.rng.random() < exact - whole))

        late, drops = count(self.opt.late_joiners), count(self.opt.reconnects)
        return set(candidates[:late]), set(candidates[len(candidates) - drops :] if drops else [])

    async def _one_run(self) -> bool:
        payload, t_post, t_answered = await self._create()
        if payload is None:
            return False
        self.totals.runs_started += 1
        used = payload.get("model")
        if isinstance(used, str) and used:
            if not self.models_used and not self.run_lengths and used != self.opt.model:
                self.estimate = _initial_estimate(used)  # the pace of the model in use
            self.models_used[used] = self.models_used.get(used, 0) + 1
        self.live_runs += 1
        try:
            run = RunState(payload["id"], payload["thread_id"], t_post)
            run.answered = t_answered
            await self._follow(run)
        finally:
            self.live_runs -= 1
        return True

    async def _follow(self, run: RunState) -> None:
        late, drops = self._roles()
        subs = [
            Subscriber(run, self.endpoint, self.tally, late=i in late, drops=i in drops)
            for i in range(self.opt.subscribers)
        ]
        self._all_subs.extend(subs)
        tasks: list[asyncio.Task[None]] = []
        for sub in subs:
            join = self.rng.uniform(0.1, 0.9) * self.estimate if sub.late else 0.0
            tasks.append(asyncio.create_task(self._drive(sub, join)))
        everyone = asyncio.gather(*(sub.done for sub in subs))
        stop = asyncio.create_task(self.hard_stop.wait())
        try:
            waiters: set[asyncio.Future[Any]] = {everyone, stop}
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            if not everyone.done():
                await self._cancel(run)
                await asyncio.wait([everyone], timeout=_CANCEL_GRACE)
        finally:
            stop.cancel()
            for task in tasks:
                task.cancel()
            for sub in subs:
                sub.close()
            everyone.cancel()
        await self._verify(run, subs)
        self._all_subs = [s for s in self._all_subs if s.run is not run]

    async def _drive(self, sub: Subscriber, join: float) -> None:
        """Connect ``sub`` (after ``join`` seconds); if it drops, drop and resume once."""
        if join > 0:
            await asyncio.sleep(join)
        await sub.connect()
        if not sub.drops:
            return
        left = max(self.estimate - join, 0.05)
        await asyncio.sleep(self.rng.uniform(0.1, 0.9) * left)
        if sub.drop():
            await asyncio.sleep(self.rng.uniform(0.01, 0.1))
            sub.reconnects += 1
            await sub.connect()

    async def _cancel(self, run: RunState) -> None:
        assert self._session is not None
        url = f"{self.base}/v1/threads/{run.thread_id}/runs/{run.run_id}/cancel"
        try:
            async with self._session.post(url) as response:
                await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            logger.info("cancelling %s failed: %s", run.run_id, exc)

    async def _stored_texts(self, run: RunState) -> dict[str, str] | None:
        assert self._session is not None
        url = f"{self.base}/v1/threads/{run.thread_id}/messages"
        params = {"order": "asc", "limit": "100", "run_id": run.run_id}
        try:
            async with self._session.get(url, params=params) as response:
                body = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            self.totals.example(f"GET messages of {run.run_id}: {exc!r}")
            return None
        out: dict[str, str] = {}
        for message in body.get("data", []):
            if message.get("role") == "assistant" and message.get("run_id") == run.run_id:
                parts = message.get("content") or []
                out[message["id"]] = "".join(
                    p["text"]["value"] for p in parts if p.get("type") == "text"
                )
        return out

    async def _verify(self, run: RunState, subs: list[Subscriber]) -> None:
        totals = self.totals
        stored = await self._stored_texts(run)
        published = max(sub.expected - 1 for sub in subs)
        status = next((s.terminal for s in subs if s.terminal), None)
        key = status.removeprefix("thread.run.") if status else "unfinished"
        totals.by_status[key] = totals.by_status.get(key, 0) + 1
        totals.runs_verified += 1
        totals.published += published
        totals.expected += published * len(subs)
        for sub in subs:
            totals.subscribers += 1
            totals.late += sub.late
            totals.dropping += sub.drops
            totals.reconnects += sub.reconnects
            totals.delivered += sub.delivered
            totals.covered += sub.covered
            totals.duplicates += sub.duplicates
            totals.protocol_gaps += sub.protocol_gaps
            totals.corrupt += sub.corrupt
            missing = sub.lost + max(0, published - (sub.expected - 1))
            totals.missing += missing
            if sub.terminal is None or sub.expected - 1 < published:
                totals.unfinished += 1
                totals.example(f"unfinished subscriber: {describe(sub)}")
            if stored is None:
                continue
            rebuilt = sub.texts()
            for message_id in stored.keys() | rebuilt.keys():
                if stored.get(message_id, "") != rebuilt.get(message_id, ""):
                    totals.mismatches += 1
                    totals.example(
                        f"text mismatch in {message_id} of {run.run_id}: stored "
                        f"{stored.get(message_id, '')[:40]!r}…, rebuilt "
                        f"{rebuilt.get(message_id, '')[:40]!r}… ({describe(sub)})"
                    )
        if stored is None:
            totals.mismatches += 1
        if run.first_delta_rx is not None:
            self.first_delta.append(run.first_delta_rx - run.t_post)
            self.breakdown.add(
                run.first_delta_rx - run.t_post, self._client_stamps(run), await self._timings(run)
            )
        if run.terminal_rx is not None:
            length = run.terminal_rx - run.t_post
            self.run_lengths.append(length)
            self.estimate = 0.7 * self.estimate + 0.3 * length
        first = run.first_rx
        for event_id, last in run.last_rx.items():
            self.spread.add(last - first[event_id])
        run.release()

    def _client_stamps(self, run: RunState) -> ClientStamps:
        def wall(t: float | None) -> float | None:
            return None if t is None else t + self._wall

        return ClientStamps(
            post_sent=run.t_post + self._wall,
            post_answered=wall(run.answered),
            first_connected=wall(run.first_connected),
            first_rx=wall(run.first_delta_rx),
        )

    async def _timings(self, run: RunState) -> dict[str, float | None] | None:
        """The hub's stamps of the run's start (None from a hub that does not keep them)."""
        assert self._session is not None
        url = f"{self.base}/v1/threads/{run.thread_id}/runs/{run.run_id}/timings"
        try:
            async with self._session.get(url) as response:
                if response.status != 200:
                    return None
                body = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None
        stamps = body.get("stamps") if isinstance(body, dict) else None
        return stamps if isinstance(stamps, dict) else None

    # -- the summary -----------------------------------------------------------------------

    def _rate(self, start: str, end: str) -> float | None:
        if start not in self._marks or end not in self._marks:
            return None
        (t1, n1), (t2, n2) = self._marks[start], self._marks[end]
        return round((n2 - n1) / (t2 - t1), 1) if t2 > t1 else None

    def _model_used(self) -> str | None:
        """The model the hub ran the runs on (most runs first, if several), else the one
        asked for (no run started)."""
        if not self.models_used:
            return self.opt.model
        ranked = sorted(self.models_used, key=lambda m: -self.models_used[m])
        return ", ".join(ranked)

    def _summary(self, hub_runs: int | None) -> dict[str, Any]:
        totals = self.totals
        opt = self.opt
        cpu = [p["cpu"] for p in self.timeline if p["t"] <= opt.duration + 1.0] or [0.0]
        load_generator = verdict(cpu, self.loop_lag.lag)
        hub_cpu = [p["hub_cpu"] for p in self.timeline if p["hub_cpu"] is not None]
        others = [p["others_cpu"] for p in self.timeline if p["others_cpu"] is not None]
        others_avg = sum(others) / len(others) if others else None
        elapsed = self._marks["end"][0]
        return {
            "schema": "agentstream.bench/1",
            "config": {
                "url": opt.url,
                "agent": opt.agent,
                "model": self._model_used(),
                "model_requested": opt.model,
                "models_used": dict(sorted(self.models_used.items())),
                "runs": opt.runs,
                "subscribers": opt.subscribers,
                "duration_s": opt.duration,
                "ramp_s": opt.ramp,
                "late_joiners": opt.late_joiners,
                "reconnects": opt.reconnects,
                "drain_s": opt.drain,
                "seed": opt.seed,
            },
            "elapsed_s": round(elapsed, 3),
            "runs": {
                "started": totals.runs_started,
                "verified": totals.runs_verified,
                "by_status": dict(sorted(totals.by_status.items())),
                "hub_runs_started": hub_runs,
                "length_ms": summary_ms(self.run_lengths),
            },
            "subscribers": {
                "total": totals.subscribers,
                "late_joiners": totals.late,
                "dropping": totals.dropping,
                "reconnects": totals.reconnects,
            },
            "events": {
                "published": totals.published,
                "expected": totals.expected,
                "delivered": totals.delivered,
                "covered_by_snapshots": totals.covered,
                "bytes": self.tally.bytes,
                "per_s": round(totals.delivered / elapsed, 1) if elapsed > 0 else None,
                "per_s_steady": self._rate("ramped", "stopped"),
            },
            "latency_ms": {"definition": LATENCY_DEFINITION, **self.latency.summary_ms()},
            "spread_ms": {
                "definition": "per event: last minus first receipt among a run's subscribers",
                **self.spread.summary_ms(),
            },
            "time_to_first_delta_ms": {
                "definition": "from sending POST /v1/threads/runs to the run's first delta "
                "at any of its subscribers",
                **summary_ms(self.first_delta),
                "breakdown": self.breakdown.summary(),
            },
            "errors": totals.errors(self.tally.errors, self.tally.error_examples),
            "load_generator": load_generator,
            "other_processes": {
                "definition": "cores the rest of the machine kept busy (all CPU time in "
                "/proc/stat minus the bench's and its hub's)",
                "cpu_avg": None if others_avg is None else round(others_avg, 3),
                "cpu_pressure": self._pressure.fraction,
                "cpu_pressure_definition": "fraction of the bench's time some runnable task "
                "of the machine waited for a CPU (/proc/pressure/cpu, 'some')",
                "disturbed": (others_avg is not None and others_avg > 0.2)
                or (self._pressure.fraction or 0.0) > 0.2,
            },
            "hub_process": None
            if not hub_cpu
            else {
                "pid": opt.hub_pid,
                "cpu_avg": round(sum(hub_cpu) / len(hub_cpu), 3),
                "cpu_max": round(max(hub_cpu), 3),
            },
            "correct": totals.correct,
            "timeline": self.timeline,
        }


def _initial_estimate(model: str | None) -> float:
    """Seconds one message of ``model`` takes, if it is a simulated spec; else 2 s."""
    from ..errors import InvalidRequest
    from ..models.simulated import is_simulated, parse_spec

    if not model or not is_simulated(model):
        return 2.0
    try:
        config = parse_spec(model)
    except InvalidRequest:
        return 2.0
    streaming = config.tokens / config.rate if config.rate > 0 else 0.05
    return max(0.05, config.delay + streaming)
