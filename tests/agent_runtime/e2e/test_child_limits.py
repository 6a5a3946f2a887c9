"""Child runs are bounded: their depth, the live descendants of a root run, and the slots
of ``--max-concurrent-runs`` they fill without waiting (see ``agent_runtime.runs.children``).

Each against a real hub on a real socket; the agents are written as users write them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agent_runtime.models.scripted import Gate, Say, ScriptedModel

from ..conftest import StartHub, eventually, within, write_agent
from .test_tools_and_children import StartScripted, start_scripted  # noqa: F401 - a fixture

LIMIT_AGENTS: dict[str, str] = {
    # The runaway: an agent that runs itself.
    "recurse": """
async def run(env):
    await env.arun_agent("recurse", "again")
""",
    # The same, catching the refusal and saying so.
    "catcher": """
from agent_runtime.errors import ChildRunLimitReached

async def run(env):
    try:
        result = await env.arun_agent("catcher", "again")
    except ChildRunLimitReached as exc:
        await env.aadd_reply(f"stopped by {exc.param}: {exc}")
        return
    await env.aadd_reply(result.text)
""",
    # Fans out to 5 children at once, then (once they have ended) to 3 more.
    "fan-out": """
import asyncio, json
from agent_runtime.errors import ChildRunLimitReached

async def run(env):
    async def one(i):
        try:
            return (await env.arun_agent("leaf", str(i))).status
        except ChildRunLimitReached as exc:
            return str(exc)
    first = await asyncio.gather(*(one(i) for i in range(5)))
    second = await asyncio.gather(*(one(i) for i in range(3)))
    await env.aadd_reply(json.dumps([first, second]))
""",
    "leaf": """
async def run(env):
    await env.aadd_reply("leaf")
""",
}


@pytest.fixture
def limit_agents(tmp_path: Path) -> Path:
    root = tmp_path / "limit-agents"
    for name, source in LIMIT_AGENTS.items():
        write_agent(root, name, source)
    return root


async def ended(hub: Any, thread_id: str, run_id: str) -> dict[str, Any]:
    """The run once it has ended (its stream read to the end)."""
    events = await hub.events(thread_id, run_id)
    assert events[-1].name.startswith("thread.run."), events[-1]
    run: dict[str, Any] = await hub.run(thread_id, run_id)
    return run


@pytest.mark.parametrize(
    ("runs", "created", "words"),
    [
        # The default depth limit: the root (depth 0) and 8 levels of children.
        ({}, 9, ["depth 9", "limit of 8", "--max-child-depth"]),
        ({"max_child_depth": 3}, 4, ["depth 4", "limit of 3", "--max-child-depth"]),
        # Descendants of every generation count against the root's cap.
        ({"max_descendants": 2}, 3, ["2 live child runs", "limit of 2", "--max-descendants"]),
    ],
)
async def test_a_recursive_agent_fails_at_the_limit_and_its_runs_are_bounded(
    start_hub: StartHub, limit_agents: Path, runs: dict[str, int], created: int, words: list[str]
) -> None:
    hub = await start_hub(agents=(limit_agents,), runs=runs)
    thread_id, run_id = await hub.start("recurse", "go")
    run = await ended(hub, thread_id, run_id)
    # Uncaught, the refusal fails the deepest run, and each parent's call raises it again.
    assert run["status"] == "failed", run
    message = run["last_error"]["message"]
    assert message.startswith("run_agent('recurse') refused"), message
    for word in words:
        assert word in message, message
    manager = hub.hub.runs
    await eventually(lambda: manager.live_count == 0, what="every run of the tree ended")
    assert manager.started == created
    assert manager.finished == {"failed": created}


async def test_an_agent_that_catches_the_refusal_completes(
    start_hub: StartHub, limit_agents: Path
) -> None:
    hub = await start_hub(agents=(limit_agents,), runs={"max_child_depth": 2})
    thread_id, run_id = await hub.start("catcher", "go")
    run = await ended(hub, thread_id, run_id)
    assert run["status"] == "completed", run
    [reply] = await hub.assistant_texts(thread_id)  # the deepest run's, passed up
    assert reply.startswith("stopped by max_child_depth: run_agent('catcher') refused")
    assert "--max-child-depth" in reply
    assert hub.hub.runs.started == 3


async def test_a_fan_out_past_the_descendants_cap_is_refused_while_they_live(
    start_hub: StartHub, limit_agents: Path
) -> None:
    hub = await start_hub(agents=(limit_agents,), runs={"max_descendants": 3})
    thread_id, run_id = await hub.start("fan-out", "go")
    run = await ended(hub, thread_id, run_id)
    assert run["status"] == "completed", run
    [reply] = await hub.assistant_texts(thread_id)
    first, second = json.loads(reply)
    assert first[:3] == ["completed"] * 3, first  # gather starts them in order
    for refusal in first[3:]:
        assert "already has 3 live child runs, the limit of 3" in refusal, refusal
        assert "--max-descendants" in refusal, refusal
    assert second == ["completed"] * 3  # the cap is on live children: they have ended
    assert hub.hub.runs.started == 1 + 3 + 3


SLOT_AGENTS: dict[str, str] = {
    "parent": """
async def run(env):
    result = await env.arun_agent("gated", "go")
    note("parent-end")
    await env.aadd_reply("the child " + result.status)
""",
    "gated": """
async def run(env):
    text = await env.acompletion("go")
    note("child-end")
    await env.aadd_reply(text)
""",
    "second": """
async def run(env):
    note("second-start")
    await env.aadd_reply("second")
""",
}

NOTE = """
def note(line):
    with open({path!r}, "a") as f:
        f.write(line + "\\n")
"""


@pytest.mark.parametrize("limit", [1, 2])
async def test_child_runs_fill_slots_without_waiting_for_one(
    start_scripted: StartScripted,  # noqa: F811 - the fixture imported above
    tmp_path: Path,
    limit: int,
) -> None:
    """With ``--max-concurrent-runs N``, a root whose child runs still completes (the
    child never waits for a slot), and a second root waits ``queued`` while the first
    root and its child fill the N slots: until the child ends (N=2) or the whole tree has
    (N=1)."""
    notes = tmp_path / "notes"
    root = tmp_path / "slot-agents"
    for name, source in SLOT_AGENTS.items():
        write_agent(root, name, NOTE.format(path=str(notes)) + source)
    gate = Gate()
    hub = await start_scripted(
        ScriptedModel([gate, Say("done")]),
        agents=(root,),
        runs={"max_concurrent_runs": limit},
    )
    first = await hub.start("parent", "go")
    async with within():
        await gate.reached()  # the parent's child runs, at the gate
    second = await hub.start("second", "go")
    manager = hub.hub.runs
    slots = manager.slot()

    def settled() -> bool:  # waits for a slot, or got one
        ctx = manager.live(second[1])
        return getattr(slots, "waiting", 0) == 1 or ctx is None or ctx.run.status != "queued"

    await eventually(settled, what="the second root waits or runs")
    assert (await hub.run(*second))["status"] == "queued"  # the child fills a slot
    gate.open()
    assert (await ended(hub, *first))["status"] == "completed"
    assert (await ended(hub, *second))["status"] == "completed"
    assert await hub.assistant_texts(first[0]) == ["the child completed"]
    lines = notes.read_text().split()
    assert lines.index("second-start") > lines.index("child-end"), lines
    if limit == 1:
        assert lines.index("second-start") > lines.index("parent-end"), lines
