"""An async agent's module-level code runs once per agent version, never on the event loop.

Against a real hub on a real socket. The module of the agent under test blocks until the
test releases it (or a fail-safe deadline passes): whatever the hub serves meanwhile —
``/healthz``, a witness run's stream — it served while the module executed, with no
timing to measure.
"""

from __future__ import annotations

from pathlib import Path

from ..conftest import UNIT, HubClient, StartHub, eventually, with_examples, within, write_agent

HELD_MODULE = """
import pathlib, time

FOLDER = pathlib.Path({folder!r})
with open(FOLDER / "executions", "a") as f:
    f.write("executed\\n")
(FOLDER / "started").touch()
deadline = time.monotonic() + {hold!r}
while not (FOLDER / "release").exists() and time.monotonic() < deadline:
    time.sleep(0.005)  # module code that blocks its thread: the hub must not notice
RELEASED = (FOLDER / "release").exists()
RUNS = []

async def run(env):
    RUNS.append(1)
    await env.aadd_reply(f"released={{RELEASED}} run={{len(RUNS)}}")
"""

FAILING_MODULE = """
import pathlib

FOLDER = pathlib.Path({folder!r})
with open(FOLDER / "executions", "a") as f:
    f.write("executed\\n")
if not (FOLDER / "fixed").exists():
    raise RuntimeError("the module is not ready")

async def run(env):
    await env.aadd_reply("ready")
"""


def executions(folder: Path) -> int:
    path = folder / "executions"
    return len(path.read_text().split()) if path.exists() else 0


async def outcome(hub: HubClient, thread_id: str, run_id: str) -> tuple[str, list[str]]:
    """The run's status once ended, and its replies."""
    await hub.events(thread_id, run_id)
    run = await hub.run(thread_id, run_id)
    return run["status"], await hub.assistant_texts(thread_id)


async def test_a_module_runs_once_off_the_loop_while_the_hub_serves(
    start_hub: StartHub, tmp_path: Path
) -> None:
    folder = tmp_path / "held-state"
    folder.mkdir()
    agents = tmp_path / "agents"
    write_agent(agents, "held", HELD_MODULE.format(folder=str(folder), hold=10 * UNIT))
    hub = await start_hub(agents=with_examples(agents), model="simulated:tokens=40,rate=400")

    first = await hub.start("held", "one")
    await eventually(lambda: (folder / "started").exists(), what="the module executes")
    # The module is blocked in its thread until released: the loop answers meanwhile…
    async with within():
        assert (await hub.request("GET", "/healthz")).status == 200
    # …a second first run waits for that same execution…
    second = await hub.start("held", "two")
    # …and another agent's run streams its whole answer.
    witness = await hub.start("streaming-example", "witness")
    witness_status, witness_texts = await outcome(hub, *witness)
    assert witness_status == "completed" and len(witness_texts) == 2
    assert not (folder / "release").exists() and executions(folder) == 1
    (folder / "release").touch()

    replies = []
    for thread_id, run_id in (first, second):
        status, texts = await outcome(hub, thread_id, run_id)
        assert status == "completed", texts
        replies += texts
    third_status, third = await outcome(hub, *await hub.start("held", "three"))
    assert third_status == "completed"
    # One execution, released by the test (not by the fail-safe deadline), whose
    # namespace every run shares: its module-level list counts the runs.
    assert executions(folder) == 1
    assert sorted(replies) == ["released=True run=1", "released=True run=2"]
    assert third == ["released=True run=3"]


async def test_a_module_that_raises_fails_its_runs_and_is_retried_by_the_next(
    start_hub: StartHub, tmp_path: Path
) -> None:
    folder = tmp_path / "failing-state"
    folder.mkdir()
    agents = tmp_path / "agents"
    write_agent(agents, "not-ready", FAILING_MODULE.format(folder=str(folder)))
    hub = await start_hub(agents=(agents,))

    runs = [await hub.start("not-ready", str(i)) for i in range(2)]
    for thread_id, run_id in runs:
        await hub.events(thread_id, run_id)
        run = await hub.run(thread_id, run_id)
        assert run["status"] == "failed"
        assert run["last_error"]["message"] == "RuntimeError: the module is not ready"
    failed = executions(folder)
    assert failed in (1, 2)  # concurrent first runs may share the failed execution

    (folder / "fixed").touch()  # the failure was transient: the next run executes it again
    for i in range(2):
        status, texts = await outcome(hub, *await hub.start("not-ready", f"again {i}"))
        assert (status, texts) == ("completed", ["ready"])
    assert executions(folder) == failed + 1  # and once it has succeeded, never again
