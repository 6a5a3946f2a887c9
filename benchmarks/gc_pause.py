"""Full garbage-collection pause with many buffered events, this tree against a baseline.

Each measurement is a fresh worker process pinned to one core: it fills ``streams``
streams (one null subscriber each, so frames are encoded and cached as in production) to
``events`` buffered events in all, with ~200-byte delta payloads, then times
``gc.collect()`` ``collects`` times and reports the median, the GC-tracked objects and the
RSS per buffered event. Workers of this tree and of the baseline alternate.

    .venv/bin/python -m benchmarks.gc_pause --baseline ../before --repeats 3

The worker (this file run as a script, with the tree's own interpreter and ``cwd`` at the
tree) imports only ``broker`` from the interpreter's installation, so the same script
measures any tree. A measured comparison, never a test.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
ROOT = HERE.parent.parent
_FILLER = "The quick brown fox jumps over the lazy dog while the model keeps on streaming. " * 4


def _rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class _NullSink:
    """A subscriber that takes everything at once (frames get encoded and cached)."""

    def __init__(self) -> None:
        from broker.types import plain_wire

        self.wire = plain_wire
        self.written = 0

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def writable(self) -> bool:
        return True

    def is_closing(self) -> bool:
        return False


async def _fill(streams: int, per_stream: int) -> tuple[list[Any], list[Any]]:
    import broker
    from broker.stream import Stream

    config = broker.BrokerConfig(
        max_events_per_stream=per_stream,
        max_bytes_per_stream=per_stream * 2048,
        max_total_bytes=None,
    )
    made = [Stream(f"s{i}", config) for i in range(streams)]
    sinks = [_NullSink() for _ in made]
    for stream, sink in zip(made, sinks, strict=True):
        stream.subscribe(sink)
    for seq in range(per_stream):
        for stream in made:
            stream.publish(
                "thread.message.delta", {"ts": time.time_ns(), "seq": seq, "delta": _FILLER}
            )
        if seq % 16 == 15:
            await asyncio.sleep(0)  # let the flushes run, as a live hub does
    await asyncio.sleep(0)
    return made, sinks


def worker(events: int, streams: int, collects: int) -> dict[str, Any]:
    import broker

    rss0 = _rss_kib()
    per_stream = events // streams

    cpu: list[float] = []

    def pauses_ms() -> list[float]:
        gc.collect()  # the first full pass: what CPython untracks, it untracks here
        pauses = []
        cpu.clear()
        for _ in range(collects):
            t0, c0 = time.perf_counter(), time.process_time()
            gc.collect()
            pauses.append((time.perf_counter() - t0) * 1000)
            cpu.append((time.process_time() - c0) * 1000)
        return pauses

    async def run() -> dict[str, Any]:
        empty = pauses_ms()  # the floor: the interpreter and its modules, nothing buffered
        made, sinks = await _fill(streams, per_stream)
        buffered = sum(len(s.buffer) for s in made)
        pauses = pauses_ms()
        return {
            "broker": os.path.dirname(broker.__file__),
            "buffered": buffered,
            "gc_ms": statistics.median(pauses),
            "gc_ms_all": [round(p, 2) for p in pauses],
            "gc_ms_empty": statistics.median(empty),
            "gc_cpu_ms": statistics.median(cpu),
            "tracked_objects": len(gc.get_objects()),
            "bytes_per_event": (_rss_kib() - rss0) * 1024 / max(1, buffered),
            "written": sum(s.written for s in sinks),
        }

    return asyncio.run(run())


def _measure(python: str, tree: Path, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [python, str(HERE), "--worker", "--events", str(args.events)]
    cmd += ["--streams", str(args.streams), "--collects", str(args.collects)]
    if args.cpu >= 0:
        cmd = ["taskset", "-c", str(args.cpu), *cmd]
    sys.path.insert(0, str(ROOT))
    from benchmarks.procs import OtherCpu

    other = OtherCpu([os.getpid()])
    child0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    proc = subprocess.run(cmd, cwd=tree, capture_output=True, text=True, check=True)
    child1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    worker_cpu = (child1.ru_utime - child0.ru_utime) + (child1.ru_stime - child0.ru_stime)
    out: dict[str, Any] = json.loads(proc.stdout)
    # Cores used by other processes while the worker ran (the worker's own CPU taken out).
    out["other_cpu"] = round(max(0.0, other.cores() - worker_cpu / (time.monotonic() - t0)), 2)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--streams", type=int, default=100)
    ap.add_argument("--collects", type=int, default=7)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--baseline", type=Path, help="a tree with its own .venv")
    ap.add_argument("--cpu", type=int, default=0)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.events, args.streams, args.collects)))
        return 0
    trees = {"this": ROOT}
    if args.baseline is not None:
        trees = {"baseline": args.baseline.resolve(), **trees}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in trees}
    for rep in range(args.repeats):
        for name, tree in trees.items():
            got = _measure(str(tree / ".venv" / "bin" / "python"), tree, args)
            runs[name].append(got)
            print(
                f"rep {rep} {name:8} gc {got['gc_ms']:7.1f} ms (empty {got['gc_ms_empty']:5.1f})"
                f"  tracked {got['tracked_objects']:>9}"
                f"  {got['bytes_per_event']:6.0f} B/event  other CPU {got['other_cpu']:.2f}"
                f"  ({got['broker']})",
                file=sys.stderr,
            )
    print(f"\n{args.events:,} buffered events in {args.streams} streams, median of {args.repeats}")
    print(
        "| tree | full gc.collect() ms | its CPU ms | nothing buffered ms | GC-tracked objects |",
        end="",
    )
    print(" RSS B/event | other CPU (cores) |")
    print("|---|---|---|---|---|---|---|")
    med = {}
    for name, rs in runs.items():
        med[name] = {
            k: statistics.median(r[k] for r in rs)
            for k in (
                "gc_ms",
                "gc_cpu_ms",
                "gc_ms_empty",
                "tracked_objects",
                "bytes_per_event",
                "other_cpu",
            )
        }
        m = med[name]
        cells = f"{m['gc_ms']:.1f} | {m['gc_cpu_ms']:.1f} | {m['gc_ms_empty']:.1f}"
        cells += f" | {m['tracked_objects']:,.0f}"
        cells += f" | {m['bytes_per_event']:.0f} | {m['other_cpu']:.2f}"
        print(f"| {name} | {cells} |")
    if "baseline" in med:
        print(f"ratio this/baseline (gc): {med['this']['gc_ms'] / med['baseline']['gc_ms']:.3f}x")
    if args.json is not None:
        args.json.write_text(json.dumps({"medians": med, "runs": runs}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
