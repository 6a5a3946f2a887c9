"""Agents written as the product description shows them, unmodified: its full streaming
example (both personas stream), its "Agent Usage" nested loop (``json.dumps(
chunk.model_dump())`` and ``print(c)``: every chunk once), and its
``from nearai.agents.environment import Environment`` import, which resolves to
agentstream's Environment for agents while a real ``nearai`` package on the path stays
what every other module imports (checked in a hub running as a subprocess)."""

# ruff: noqa: E501 - the description's code, kept verbatim, has lines longer than ours

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from agent_runtime.agents import bundled_examples_dir

from ..clients_helpers import (
    ASSISTANTS_DEPRECATED,
    AsyncRecorder,
    async_sdk,
    check_recording,
    platonic,
    socratic,
    texts_of,
)
from ..conftest import (
    FAST_MODEL,
    PACED_MODEL,
    QUESTION,
    UNIT,
    StartHub,
    check_run,
    with_examples,
    within,
    write_agent,
)

ROOT = Path(__file__).resolve().parents[3]

DESCRIPTION_EXAMPLE_SHA256 = "1b1b4e93d669d5edccbab0b4efd065b55bd8b967cc77eb7998157aca00d3818e"
"""SHA-256 of the description's "Full Agent Streaming Example" ``agent.py``, as printed
there (dedented, one final newline). The example's one copy is the bundled agent
(``streaming-example``): the tests use it from there and check it by this digest."""

AGENT_USAGE = """\
import json

from nearai.agents.environment import Environment

class Agent:
    def __init__(self, env: Environment):
        self.env = env

    def run(self):
        prompt = {"role": "system", "content": "respond as though you were Socrates"}
        messages = self.env.list_messages()
        # From here to add_reply: the description's "Agent Usage" block, verbatim.
        response_stream = self.env.completion([prompt] + messages, stream=True)

        for event in response_stream:
            for _idx, chunk in enumerate(response_stream):
                c = json.dumps(chunk.model_dump())
                print(c)
                # do something with the chunk

                # if part of a chain of async calls you could yield the chunk or evaluate or modify it and yield
                # yield chunk
        self.env.add_reply(response_stream) # write the full message to the thread

if globals().get('env', None):
    agent = Agent(globals().get('env'))
    agent.run()
"""


# -- the full example ------------------------------------------------------------------------


async def test_the_descriptions_full_example_streams_both_personas(start_hub: StartHub) -> None:
    folder = bundled_examples_dir() / "streaming-example"
    shipped = hashlib.sha256((folder / "agent.py").read_bytes()).hexdigest()
    assert shipped == DESCRIPTION_EXAMPLE_SHA256  # shipped verbatim
    hub = await start_hub(model=PACED_MODEL)
    agents = (await hub.request("GET", "/v1/agents")).json()["data"]
    (example,) = [a for a in agents if a["name"] == "streaming-example"]
    assert example["show_streaming_message"] is True

    thread_id, run_id = await hub.start("streaming-example")
    trace = check_run(await hub.events(thread_id, run_id))

    socrates, plato = trace.messages
    assert socratic(socrates.text) and platonic(plato.text), trace.texts
    assert len(socrates.deltas) > 10 and len(plato.deltas) > 10  # streamed, not dumped
    names = [e.name for e in trace.events]  # one after the other, as written
    assert names.index("thread.message.completed") < names.index("thread.message.created", 6)
    assert trace.texts == await hub.assistant_texts(thread_id)


# -- the "Agent Usage" nested loop ---------------------------------------------------------------


@pytest.mark.parametrize("model", [FAST_MODEL, PACED_MODEL])
async def test_the_descriptions_agent_usage_loop_yields_each_chunk_once(
    start_hub: StartHub, tmp_path: Path, capsys: pytest.CaptureFixture[str], model: str
) -> None:
    """The outer ``for`` takes the first chunk (the role, no text), the inner one drains
    the rest on the same handler, printing each chunk's JSON once."""
    write_agent(tmp_path, "agent-usage", AGENT_USAGE)
    hub = await start_hub(agents=with_examples(tmp_path), model=model)
    capsys.readouterr()
    thread_id, run_id = await hub.start("agent-usage")
    trace = check_run(await hub.events(thread_id, run_id))

    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    (message,) = trace.messages
    tokens = int(model.split("tokens=")[1].split(",")[0])
    assert len(message.deltas) == tokens
    assert len(printed) == tokens + 1  # every chunk but the outer loop's: tokens, finish
    assert all(p["object"] == "chat.completion.chunk" for p in printed)
    assert [p["choices"][0]["finish_reason"] for p in printed][-2:] == [None, "stop"]
    text = "".join(p["choices"][0]["delta"]["content"] or "" for p in printed)
    assert text == message.text == message.delta_text
    assert await hub.assistant_texts(thread_id) == [text]


# -- `nearai` with a real package on the path ---------------------------------------------------

REAL_NEARAI = {
    "nearai/__init__.py": "REAL = True\n",
    "nearai/agents/__init__.py": "",
    "nearai/agents/environment.py": "class Environment:\n    REAL = True\n",
    "probe_real.py": textwrap.dedent(
        """\
        def environment():
            from nearai.agents.environment import Environment
            return Environment
        """
    ),
}
"""A stand-in for an installed ``nearai`` package, and a module that imports it."""

PROBE = """\
import json
import sys

from nearai.agents.environment import Environment

import probe_real

class Agent:
    def __init__(self, env: Environment):
        self.env = env

    def run(self):
        other = probe_real.environment()
        self.env.add_reply(json.dumps({
            "agent": f"{Environment.__module__}.{Environment.__qualname__}",
            "env_is_agents_environment": isinstance(self.env, Environment),
            "other_module": f"{other.__module__}.{other.__qualname__}",
            "other_is_real": getattr(other, "REAL", False),
            "sys_modules_nearai": getattr(sys.modules.get("nearai"), "__file__", None),
        }))

if globals().get('env', None):
    agent = Agent(globals().get('env'))
    agent.run()
"""


def write_real_nearai(site: Path) -> dict[str, str]:
    """The package on disk; the process environment that puts it on ``sys.path``."""
    for name, source in REAL_NEARAI.items():
        path = site / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    return env


@asynccontextmanager
async def subprocess_hub(env: dict[str, str], *agents: Path) -> AsyncIterator[str]:
    """``agentstream serve --port 0`` in a process of its own; its URL."""
    args = ["-m", "agent_runtime.cli", "serve", "--port", "0", "--store", "memory"]
    args += ["--model", FAST_MODEL]
    for folder in agents:
        args += ["--agents", str(folder)]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *args,
        cwd=ROOT,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stderr is not None
    log: list[str] = []
    drain: asyncio.Task[bytes] | None = None
    try:
        match = None
        async with within(20):
            while match is None:
                line = (await proc.stderr.readline()).decode()
                if not line:
                    break  # the process ended
                log.append(line)
                match = re.search(r"listening on (http://\S+)", line)
        assert match is not None, "".join(log)
        drain = asyncio.create_task(proc.stderr.read())
        yield match[1]
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        async with within(10):
            await proc.wait()
            if drain is not None:
                log.append((await drain).decode())
    assert proc.returncode == 0, "".join(log)


@ASSISTANTS_DEPRECATED
async def test_nearai_import_with_a_real_package_installed(tmp_path: Path) -> None:
    assert not any(name == "nearai" or name.startswith("nearai.") for name in sys.modules)
    env = write_real_nearai(tmp_path / "site")
    write_agent(tmp_path / "agents", "nearai-probe", PROBE)

    async with subprocess_hub(env, tmp_path / "agents", bundled_examples_dir()) as url:
        async with async_sdk(url) as (client, _requests), within(10):
            thread = await client.beta.threads.create(
                messages=[{"role": "user", "content": QUESTION}]
            )
            async with client.beta.threads.runs.stream(
                thread_id=thread.id, assistant_id="nearai-probe"
            ) as stream:
                (report,) = texts_of(await stream.get_final_messages())

            handler = AsyncRecorder()  # the description's example, beside the real package
            async with client.beta.threads.runs.stream(
                thread_id=thread.id, assistant_id="streaming-example", event_handler=handler
            ) as stream:
                final = await stream.get_final_messages()
                assert (await stream.get_final_run()).status == "completed"

    seen = json.loads(report)
    assert seen["agent"] == "agent_runtime.environment.Environment"
    assert seen["env_is_agents_environment"] is True
    assert seen["other_module"] == "nearai.agents.environment.Environment"
    assert seen["other_is_real"] is True  # other code imports the real package...
    assert seen["sys_modules_nearai"] == str(tmp_path / "site" / "nearai" / "__init__.py")
    check_recording(handler.seen, final)  # ...while agents still get agentstream's
    assert socratic(texts_of(final)[0]) and platonic(texts_of(final)[1])


def test_the_guard_skips_the_example_where_env_is_absent(tmp_path: Path) -> None:
    """Run as a plain script beside a real ``nearai``, the example imports the real
    package and its ``globals().get('env')`` guard keeps the agent from running."""
    env = write_real_nearai(tmp_path / "site")
    example = bundled_examples_dir() / "streaming-example" / "agent.py"
    probe = f"import runpy, sys; runpy.run_path({str(example)!r}); print(sorted(sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", probe],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=10 * UNIT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    modules = result.stdout.strip()
    assert "'nearai.agents.environment'" in modules  # the real one, imported
    assert "'agent_runtime" not in modules and "'openai" not in modules  # nothing ran
