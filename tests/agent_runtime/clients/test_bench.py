"""``agentstream bench``, run as a subprocess against real hubs: its own numbers against
the hub's (runs started, events published per stream), zero loss with late joiners and
reconnections, the ``--json`` schema, the ``--slo-p99-ms`` exit status, ``--plot``; and
the pieces its figures rest on (the histogram, the SSE frame and chunk parsing)."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from agent_runtime.bench.breakdown import PHASES
from agent_runtime.bench.sse_client import split_frame
from agent_runtime.bench.stats import Histogram, summary_ms

from ..conftest import UNIT, StartHub

ROOT = Path(__file__).resolve().parents[3]
MODEL = "simulated:tokens=30,rate=100"
"""0.3 s per message: runs are live long enough to join late and to reconnect."""


async def bench(*args: str, units: float = 40) -> tuple[int, str, str]:
    """``agentstream bench ARGS`` in a subprocess, awaited without blocking the loop (the
    hub under test may be serving on it); (exit status, stdout, stderr)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agent_runtime.cli",
        "bench",
        *args,
        cwd=ROOT,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(units * UNIT):
            out, err = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def check_schema(summary: dict[str, Any]) -> None:
    assert summary["schema"] == "agentstream.bench/1"
    for key in ("config", "runs", "subscribers", "events", "errors", "load_generator",
                "other_processes"):  # fmt: skip
        assert isinstance(summary[key], dict), key
    for key in ("latency_ms", "spread_ms", "time_to_first_delta_ms"):
        figures = summary[key]
        assert isinstance(figures["definition"], str) and figures["definition"]
        assert set(figures) >= {"n", "p50", "p95", "p99", "max"}
        if figures["n"]:
            assert 0 <= figures["p50"] <= figures["p95"] <= figures["p99"] <= figures["max"]
    assert isinstance(summary["timeline"], list) and summary["timeline"]
    point = summary["timeline"][0]
    assert set(point) >= {"t", "events_per_s", "latency_ms", "cpu", "delivered"}
    assert isinstance(summary["correct"], bool) and isinstance(summary["ok"], bool)
    breakdown = summary["time_to_first_delta_ms"]["breakdown"]
    assert list(breakdown["phases_ms"]) == [phase[0] for phase in PHASES]
    assert breakdown["runs"] == summary["time_to_first_delta_ms"]["n"]
    generator = summary["load_generator"]
    assert isinstance(generator["bottleneck"], bool) and generator["loop_lag_ms"]["n"] > 0
    assert (generator["warning"] is None) == (not generator["bottleneck"])
    pressure = summary["other_processes"]["cpu_pressure"]
    assert pressure is None or 0.0 <= pressure <= 1.0


async def test_bench_counts_exactly_what_the_hub_published(start_hub: StartHub) -> None:
    client = await start_hub(model=None)  # nothing forced: the runs' model field applies
    hub = client.hub
    code, out, err = await bench(
        *("--url", client.url, "--runs", "4", "--subscribers", "5", "--duration", "1.5"),
        *("--model", MODEL, "--late-joiners", "0.2", "--reconnects", "0.2", "--seed", "3"),
        *("--slo-p99-ms", "60000", "--json"),
    )
    assert code == 0, err
    summary = json.loads(out)
    check_schema(summary)
    assert summary["ok"] and summary["correct"]
    assert summary["slo"] == {"p99_ms_max": 60000.0, "p99_ms": summary["latency_ms"]["p99"],
                              "met": True}  # fmt: skip

    # Its runs are the hub's runs, and its published events the hub's streams' events.
    runs, events = summary["runs"], summary["events"]
    assert runs["started"] == runs["verified"] == hub.runs.started >= 4
    assert runs["hub_runs_started"] == hub.runs.started
    assert runs["by_status"] == {"completed": runs["started"]}
    per_stream = hub.registry.stats().per_stream
    assert len(per_stream) == runs["started"]
    assert events["published"] == sum(s.head_id for s in per_stream)
    # Every subscriber received every event exactly once, late joiners and resumed ones too.
    subscribers = summary["subscribers"]
    assert subscribers["total"] == 5 * runs["started"]
    assert subscribers["late_joiners"] > 0 and subscribers["reconnects"] > 0
    assert events["expected"] == events["published"] * 5
    assert events["delivered"] == events["expected"]
    errors = summary["errors"]
    for key in ("connection", "run_create", "gaps", "duplicates", "text_mismatches"):
        assert errors[key] == 0, (key, errors)
    assert errors["unfinished_subscribers"] == 0 and errors["corrupt_frames"] == 0
    assert (
        summary["latency_ms"]["n"] > 0
        and summary["time_to_first_delta_ms"]["n"] == (runs["started"])
    )
    assert hub.registry.stats().subscribers == 0  # the bench left nothing connected
    # The hub stamped every run's start, in order: its own phases are never negative.
    breakdown = summary["time_to_first_delta_ms"]["breakdown"]
    assert breakdown["hub_reported"] == breakdown["runs"] == runs["started"]
    for name, figures in breakdown["phases_ms"].items():
        assert figures["n"] == runs["started"], name
        if name not in ("request", "delivery"):  # the two that compare two clocks
            assert figures["negative"] == 0, name


async def test_bench_reports_the_model_a_forcing_hub_used(start_hub: StartHub) -> None:
    """A hub started with ``--model`` runs every run on it: the bench reports that model
    (the run objects' ``model``), not the one it asked for."""
    forced = "simulated:tokens=5,rate=0"
    client = await start_hub(model=forced)
    args = ("--url", client.url, "--runs", "1", "--subscribers", "1", "--duration", "0")
    code, out, err = await bench(*args, "--model", MODEL, "--json")
    assert code == 0, err
    config = json.loads(out)["config"]
    started = json.loads(out)["runs"]["started"]
    assert config["model"] == forced and config["model_requested"] == MODEL
    assert config["models_used"] == {forced: started}
    code, out, err = await bench(*args, "--model", MODEL)
    assert code == 0, err
    assert f"subscribers of streaming-example on {forced} (asked for {MODEL};" in out


async def test_bench_starts_its_own_hub_and_fails_a_missed_slo() -> None:
    code, out, err = await bench(
        *("--runs", "2", "--subscribers", "3", "--duration", "0", "--model", MODEL),
        *("--slo-p99-ms", "0.000001"),
    )
    assert code == 1, (out, err)  # 1: the SLO was missed, and nothing else went wrong
    assert "started for this bench: pid" in out
    assert "every subscriber received exactly the stored text" in out
    assert "SLO             p99 <= 1e-06 ms: MISSED" in out
    assert "hub process     cpu" in out
    assert "latency: latency = an event's receive time" in out  # the definition is printed


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="needs matplotlib")
async def test_bench_plots(start_hub: StartHub, tmp_path: Path) -> None:
    client = await start_hub(model=None)
    png = tmp_path / "bench.png"
    code, out, err = await bench(
        *("--url", client.url, "--runs", "1", "--subscribers", "2", "--duration", "0"),
        *("--model", "simulated:tokens=5,rate=0", "--plot", str(png)),
    )
    assert code == 0, err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"plot            {png}" in out


async def test_plot_without_matplotlib_says_how_to_get_it() -> None:
    script = (
        "import sys; sys.modules['matplotlib'] = None; from agent_runtime.cli import main; "
        "raise SystemExit(main(['bench', '--plot', 'x.png', '--url', 'http://127.0.0.1:9']))"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", script, cwd=ROOT, stderr=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(20 * UNIT):
        _, err = await proc.communicate()
    assert proc.returncode == 2
    assert "pip install matplotlib" in err.decode()


async def test_bench_explains_what_it_cannot_do(start_hub: StartHub) -> None:
    client = await start_hub()
    code, _, err = await bench("--url", client.url, "--agent", "no-such-agent", "--duration", "0")
    assert code == 2
    assert "no agent 'no-such-agent'" in err and "streaming-example" in err
    code, _, err = await bench("--url", "https://example.invalid", "--duration", "0")
    assert code == 2 and "http://" in err
    code, _, err = await bench("--late-joiners", "1.5")
    assert code == 2 and "between 0 and 1" in err


# -- the pieces -------------------------------------------------------------------------------


def test_histogram_percentiles_are_within_two_percent() -> None:
    values = [i / 1e5 for i in range(1, 10_001)]  # 10 µs .. 100 ms
    histogram = Histogram()
    for value in values:
        histogram.add(value)
    exact = summary_ms(values)
    approx = histogram.summary_ms()
    assert approx["n"] == exact["n"] == 10_000
    assert approx["max"] == exact["max"] == 100.0
    for key in ("p50", "p95", "p99"):
        assert exact[key] is not None and approx[key] is not None
        assert abs(approx[key] - exact[key]) <= 0.02 * exact[key], key
    assert Histogram().summary_ms()["p99"] is None


def test_sse_frames_are_split_whatever_their_layout() -> None:
    assert split_frame(b'id: 7\ndata: {"a":1}') == (7, b'{"a":1}')
    assert split_frame(b'data: {"a":1}') == (None, b'{"a":1}')
    assert split_frame(b"retry: 1000") == (None, None)
    assert split_frame(b"event: x\nid: 3\ndata: a\ndata: b") == (3, b"a\nb")
    assert split_frame(b"id: bad\ndata: z") == (None, b"z")


async def test_a_subscriber_parses_a_chunked_stream_split_anywhere() -> None:
    from agent_runtime.bench.sse_client import BenchCounters, Endpoint, RunState, Subscriber, _Conn
    from agent_runtime.protocol import delta_payload
    from broker import Event, Framing
    from broker.sse import chunked_wire

    events = [
        Event.create(1, "thread.run.created", {"id": "run_1", "status": "queued"}),
        Event.create(2, "thread.message.created", {"id": "msg_1", "content": []}),
        Event.create(3, "thread.message.delta", delta_payload("msg_1", "Hel")),
        Event.create(4, "thread.message.delta", delta_payload("msg_1", "lo")),
        Event.create(5, "thread.run.completed", {"id": "run_1", "status": "completed"}),
    ]
    frames = [e.frame(Framing.DEFAULT) for e in events]
    # A retry field glued to the first event (as the broker sends it), a keepalive, and a
    # lone retry block: none of them is an event.
    body = (
        b"retry: 1000\n" + b"".join(frames[:2]) + b": ping\n\nretry: 5\n\n" + b"".join(frames[2:])
    )
    wire = b"".join(chunked_wire(body[i : i + 50]) for i in range(0, len(body), 50))
    response = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + wire + b"0\r\n\r\n"
    )
    for step in (1, 7, 64, len(response)):
        run = RunState("run_1", "thread_1", 0.0)
        sub = Subscriber(run, Endpoint("127.0.0.1", 1), BenchCounters(), late=False, drops=False)
        conn = _Conn(sub, b"")
        for i in range(0, len(response), step):
            conn.feed(response[i : i + step])
        assert sub.terminal == "thread.run.completed", step
        assert (sub.delivered, sub.expected, sub.lost, sub.duplicates) == (5, 6, 0, 0)
        assert sub.texts() == {"msg_1": "Hello"} and sub.corrupt == 0
