"""How runs end other than ``completed``: an agent that raises (``failed``, the message
without a traceback), ``expires_at`` passing (``expired``), ``request_user_input()``
(``requires_action``) and ``mark_failed`` (``failed`` with its message)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from ..conftest import SLOW_MODEL, UNIT, StartHub, check_run, text_of, with_examples, within


@pytest.mark.parametrize(
    ("agent", "message"),
    [
        ("raiser", "the oracle is silent 42"),
        ("async-raiser", "async oracle is silent 7"),
    ],
)
async def test_agent_that_raises_fails_the_run(
    start_hub: StartHub, agents_dir: Path, agent: str, message: str
) -> None:
    hub = await start_hub(agents=with_examples(agents_dir))
    thread_id, run_id = await hub.start(agent)

    events = await hub.events(thread_id, run_id)

    trace = check_run(events, "thread.run.failed")
    error = trace.terminal.data["last_error"]
    assert message in error["message"]
    assert "Traceback" not in error["message"] and 'File "' not in error["message"]
    assert error["code"] == "server_error"
    assert trace.terminal.data["failed_at"] is not None
    run = await hub.run(thread_id, run_id)
    assert run["status"] == "failed" and run["last_error"] == error
    assert len(trace.messages) == 1  # the reply before the failure is kept
    assert await hub.assistant_texts(thread_id) == [trace.messages[0].text]


async def test_mark_failed_fails_the_run_with_its_message(
    start_hub: StartHub, agents_dir: Path
) -> None:
    hub = await start_hub(agents=with_examples(agents_dir))
    thread_id, run_id = await hub.start("marks-failed")

    trace = check_run(await hub.events(thread_id, run_id), "thread.run.failed")

    assert trace.terminal.data["last_error"]["message"] == "x"
    assert trace.texts == ["I cannot answer that."]
    assert (await hub.run(thread_id, run_id))["last_error"]["message"] == "x"


async def test_request_user_input_ends_the_run_requiring_action(
    start_hub: StartHub, agents_dir: Path
) -> None:
    hub = await start_hub(agents=with_examples(agents_dir))
    thread_id, run_id = await hub.start("asks-user")

    trace = check_run(await hub.events(thread_id, run_id), "thread.run.requires_action")

    assert trace.texts == ["Which virtue do you mean?"]
    assert (await hub.run(thread_id, run_id))["status"] == "requires_action"
    # the user answers: a new run on the same thread is accepted
    reply = await hub.request(
        "POST",
        f"/v1/threads/{thread_id}/runs",
        json_body={
            "assistant_id": "streaming-example",
            "additional_messages": [{"role": "user", "content": "Courage."}],
        },
    )
    assert reply.status == 200, reply.body
    check_run(await hub.events(thread_id, reply.json()["id"]))
    stored = await hub.messages(thread_id)
    assert [text_of(m) for m in stored[:3]] == [
        "What is virtue?",
        "Which virtue do you mean?",
        "Courage.",
    ]


@pytest.mark.parametrize("agent", ["streaming-example", "async-waiter"])
async def test_run_past_expires_at_ends_expired(
    start_hub: StartHub, agents_dir: Path, agent: str
) -> None:
    hub = await start_hub(
        agents=with_examples(agents_dir), model=SLOW_MODEL, runs={"expires_after": 1.0}
    )
    thread_id, run_id = await hub.start(agent)

    events = await hub.events(thread_id, run_id, units=1 + 2)

    trace = check_run(events, "thread.run.expired")
    run = await hub.run(thread_id, run_id)
    assert run["status"] == "expired"
    assert run["expires_at"] is not None and run["expires_at"] <= time.time() + 1
    assert trace.terminal.data == run
    finals = [m.final.name for m in trace.messages]
    if agent == "streaming-example":
        assert finals == ["thread.message.incomplete"]
        assert trace.messages[0].final.data["incomplete_details"] == {"reason": "run_expired"}
    else:
        assert finals == ["thread.message.completed"]


async def test_run_does_not_expire_before_its_time(start_hub: StartHub) -> None:
    """``run_expires_after`` is in seconds (a float): a run is given all of it."""
    expires_after = 0.5 * UNIT
    hub = await start_hub(model=SLOW_MODEL, runs={"expires_after": expires_after})
    thread_id = await hub.create_thread("What is patience?")
    started = time.monotonic()
    async with within(2 + expires_after / UNIT):
        reply = await hub.request(
            "POST",
            f"/v1/threads/{thread_id}/runs",
            json_body={"assistant_id": "async-example", "stream": True},
        )
    lasted = time.monotonic() - started

    trace = check_run(reply.events("openai")[:-1], "thread.run.expired")
    assert lasted >= 0.9 * expires_after, f"expired after {lasted:.3f}s, not {expires_after}s"
    assert trace.messages, "the agent got to stream before the run expired"


async def test_unsupported_environment_method_fails_the_run_naming_it(
    start_hub: StartHub, agents_dir: Path
) -> None:
    hub = await start_hub(agents=with_examples(agents_dir))
    thread_id, run_id = await hub.start("unsupported")

    trace = check_run(await hub.events(thread_id, run_id), "thread.run.failed")

    message = trace.terminal.data["last_error"]["message"]
    assert "exec_command" in message and "not supported" in message


async def test_replies_without_streaming(start_hub: StartHub, agents_dir: Path) -> None:
    hub = await start_hub(agents=with_examples(agents_dir))
    thread_id, run_id = await hub.start("plain-replies")

    trace = check_run(await hub.events(thread_id, run_id))

    assert trace.texts[:2] == ["First, plainly.", ""]
    assert [len(m.deltas) for m in trace.messages] == [1, 0, 1]  # a reply is one delta
    assert trace.texts[2]  # a non-streamed completion's text
    assert await hub.assistant_texts(thread_id) == trace.texts
