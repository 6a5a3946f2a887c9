"""Agent-written events: ``env.stream_text`` (``thread.agent.progress``) and ``env.emit``
(``thread.agent.<name>``), end to end over a real socket.

They go through the run's one publishing path, so they carry ids in order with every
other event, replay and resume exactly; a gap's snapshot leaves them out (they are not
state). The official SDK reads through them in OpenAI's framing.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from ..clients_helpers import ASSISTANTS_DEPRECATED, Recorder, join, sync_sdk
from ..conftest import StartHub, with_examples, write_agent
from ..steps_helpers import StepsClientState, check_steps_run

EVENT_AGENTS: dict[str, str] = {
    "narrator": """
SOCRATES = {"role": "system", "content": "respond as though you were Socrates"}

async def run(env):
    await env.astream_text("Looking for sources…")
    await env.aemit("sources", {"count": 2, "titles": ["Meno", "Republic"]})
    handler = await env.acompletion([SOCRATES, *await env.alist_messages()], stream=True)
    await env.astream_text("Writing the answer.")
    await env.aadd_reply(handler)
    await env.aemit("done-1.x", None)
""",
    "narrator-sync": """
from nearai.agents.environment import Environment

if globals().get('env', None):
    first = env.stream_text("step 1 of 2")
    second = env.stream_text("step 2 of 2")
    third = env.emit("tick", [1, 2, 3])
    env.add_reply(f"ids {first} {second} {third}")
""",
    "bad-emitter": """
import json

async def run(env):
    errors = []
    for name, data in [("", 1), ("has space", 1), ("x" * 65, 1), ("progress", 1),
                       ("child_delta", 1), ("ok", {1, 2}), ("ok", object()),
                       ("ok", "y" * 70000), ("é", 1)]:
        try:
            await env.aemit(name, data)
        except Exception as exc:
            errors.append([type(exc).__name__, str(exc)])
    try:
        await env.astream_text(42)
    except Exception as exc:
        errors.append([type(exc).__name__, str(exc)])
    await env.aadd_reply(json.dumps(errors))
""",
}

PACED = "simulated:tokens=30,rate=300"


@pytest.fixture
def event_agents(tmp_path: Path) -> Path:
    root = tmp_path / "event-agents"
    for name, source in EVENT_AGENTS.items():
        write_agent(root, name, source)
    return root


async def test_progress_lines_and_custom_events_in_order_with_ids(
    start_hub: StartHub, event_agents: Path
) -> None:
    hub = await start_hub(agents=with_examples(event_agents), model=PACED)
    thread_id, run_id = await hub.start("narrator", "What is virtue?")
    events = await hub.events(thread_id, run_id)
    trace = check_steps_run(events)
    names = [e.name for e in events]
    agent = [e for e in events if e.name.startswith("thread.agent.")]
    assert [e.name for e in agent] == [
        "thread.agent.progress",
        "thread.agent.sources",
        "thread.agent.progress",
        "thread.agent.done-1.x",
    ]
    assert agent[0].data == {
        "object": "thread.agent.progress",
        "run_id": run_id,
        "thread_id": thread_id,
        "text": "Looking for sources…",
    }
    assert agent[1].data == {
        "object": "thread.agent.event",
        "run_id": run_id,
        "thread_id": thread_id,
        "name": "sources",
        "data": {"count": 2, "titles": ["Meno", "Republic"]},
    }
    assert agent[3].data["data"] is None
    # In order with the rest: before the message, between its creation and its end, after.
    created = names.index("thread.message.created")
    completed = names.index("thread.message.completed")
    assert names.index("thread.agent.sources") < created
    assert created < names.index("thread.agent.progress", created) < completed
    assert names.index("thread.agent.done-1.x") == len(names) - 2
    assert trace.texts == await hub.assistant_texts(thread_id)
    # The OpenAI framing carries the same events, with the same ids.
    openai = await hub.events(thread_id, run_id, params={"format": "openai"})
    assert [(e.id, e.name, e.data) for e in openai[:-1]] == [(e.id, e.name, e.data) for e in events]


async def test_a_sync_agent_gets_the_ids_of_its_events(
    start_hub: StartHub, event_agents: Path
) -> None:
    hub = await start_hub(agents=with_examples(event_agents))
    thread_id, run_id = await hub.start("narrator-sync", "hi")
    events = await hub.events(thread_id, run_id)
    trace = check_steps_run(events)
    ids = [e.id for e in events if e.name.startswith("thread.agent.")]
    assert trace.texts == [f"ids {ids[0]} {ids[1]} {ids[2]}"]
    assert [e.data.get("text") for e in trace.agent_events[:2]] == ["step 1 of 2", "step 2 of 2"]
    assert trace.agent_events[2].data["data"] == [1, 2, 3]


async def test_bad_names_and_data_are_clear_errors(start_hub: StartHub, event_agents: Path) -> None:
    hub = await start_hub(agents=with_examples(event_agents))
    thread_id, run_id = await hub.start("bad-emitter", "hi")
    events = await hub.events(thread_id, run_id)
    trace = check_steps_run(events)
    assert trace.agent_events == [], "nothing was published"
    errors = json.loads(trace.texts[0])
    assert [kind for kind, _ in errors] == ["InvalidRequest"] * 10
    messages = [message for _, message in errors]
    for message in messages[:3] + messages[8:9]:
        assert "must be 1-64 letters, digits, '_', '.' or '-'" in message
    assert "written by agentstream itself" in messages[3]
    assert "written by agentstream itself" in messages[4]
    assert "not JSON-serialisable" in messages[5] and "not JSON-serialisable" in messages[6]
    assert "the limit is 65536" in messages[7]
    assert "stream_text takes a str, not int" in messages[9]


async def test_agent_events_resume_exactly_and_are_left_out_of_snapshots(
    start_hub: StartHub, event_agents: Path
) -> None:
    hub = await start_hub(agents=with_examples(event_agents), model=PACED)
    thread_id, run_id = await hub.start("narrator", "What is justice?")
    full = await hub.events(thread_id, run_id)
    check_steps_run(full)
    texts = await hub.assistant_texts(thread_id)
    completed = next(e.id for e in full if e.name == "thread.message.completed")
    assert completed is not None
    for cursor in range(1, len(full)):
        tail = await hub.events(thread_id, run_id, headers={"Last-Event-ID": str(cursor)})
        assert tail == full[cursor:], cursor
        resumed = await hub.events(
            thread_id, run_id, headers={"Last-Event-ID": str(cursor)}, params={"snapshot": "1"}
        )
        state = StepsClientState().apply_all(resumed)
        assert state.terminal == "thread.run.completed"
        assert list(state.final.values()) == (texts if cursor < completed else [])
        assert [e for e in resumed if e.name.startswith("thread.agent.")] == [
            e for e in full[cursor:] if e.name.startswith("thread.agent.")
        ]
    # A gap: the snapshot rebuilds messages, and agent events before the cut are gone.
    small = await start_hub(
        agents=with_examples(event_agents), model=PACED, broker={"max_events_per_stream": 4}
    )
    thread_id, run_id = await small.start("narrator", "What is justice?")
    await asyncio.sleep(0)
    late = await small.events(thread_id, run_id)
    assert late[0].name == "thread.stream.gap"
    state = StepsClientState().apply_all(late)
    assert state.terminal == "thread.run.completed"
    assert list(state.final.values()) == await small.assistant_texts(thread_id)
    after_gap = [e for e in late if e.id is not None]
    assert all(e.name != "thread.agent.progress" for e in late if e.id is None)
    assert after_gap[-1].name == "thread.run.completed"


@ASSISTANTS_DEPRECATED
@pytest.mark.parametrize("how", ["runs.stream", "join"])
async def test_the_openai_sdk_reads_through_agent_events(
    start_hub: StartHub, event_agents: Path, how: str
) -> None:
    hub = await start_hub(agents=with_examples(event_agents), model=PACED)
    thread_id = await hub.create_thread("What is courage?")

    def consume() -> tuple[Recorder, list[Any]]:
        recorder = Recorder()
        with sync_sdk(hub) as (client, _requests):
            if how == "runs.stream":
                manager = client.beta.threads.runs.stream(
                    thread_id=thread_id, assistant_id="narrator", event_handler=recorder
                )
            else:
                run = client.beta.threads.runs.create(thread_id=thread_id, assistant_id="narrator")
                manager = join(client, thread_id, run.id, recorder)
            with manager as stream:
                stream.until_done()
                assert stream.get_final_run().status == "completed"
                return recorder, stream.get_final_messages()

    recorder, final = await asyncio.to_thread(consume)
    assert recorder.seen.events.count("thread.agent.progress") == 2
    assert "thread.agent.sources" in recorder.seen.events
    assert [m.content[0].text.value for m in final] == await hub.assistant_texts(thread_id)  # type: ignore[union-attr]
    assert "".join(recorder.seen.texts()) == (await hub.assistant_texts(thread_id))[0]
