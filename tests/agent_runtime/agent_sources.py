"""The suite's small test agents (:data:`TEST_AGENTS`) and how to write an agent folder
(:func:`write_agent`); :func:`with_examples` puts the bundled examples beside them. The
``agents_dir`` fixture (in ``conftest``) writes them all."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

from agent_runtime.agents import bundled_examples_dir

_SYNC_HEAD = """\
import json
import time

from nearai.agents.environment import Environment
"""

TEST_AGENTS: dict[str, str] = {
    # Raises after a reply: the run fails with the exception's message, no traceback.
    "raiser": _SYNC_HEAD
    + """
class Agent:
    def __init__(self, env: Environment):
        self.env = env

    def run(self):
        self.env.add_reply("Let me think.")
        raise ValueError("the oracle is silent 42")

if globals().get('env', None):
    Agent(globals().get('env')).run()
""",
    "async-raiser": """
async def run(env):
    await env.aadd_reply("Let me think, asynchronously.")
    raise RuntimeError("async oracle is silent 7")
""",
    "asks-user": _SYNC_HEAD
    + """
if globals().get('env', None):
    env.add_reply("Which virtue do you mean?")
    env.request_user_input()
""",
    "marks-failed": _SYNC_HEAD
    + """
if globals().get('env', None):
    env.add_reply("I cannot answer that.")
    env.mark_failed("x")
""",
    # Never streams: polls the thread until cancelled (its next Environment call raises).
    "poller": _SYNC_HEAD
    + """
if globals().get('env', None):
    env.add_reply("polling")
    while True:
        env.list_messages()
        time.sleep(0.005)
""",
    # The description's "Agent Usage" loop, reporting what it saw as a second message.
    "nested-loop": _SYNC_HEAD
    + """
class Agent:
    def __init__(self, env: Environment):
        self.env = env

    def run(self):
        prompt = {"role": "system", "content": "respond as though you were Socrates"}
        messages = self.env.list_messages()
        response_stream = self.env.completion([prompt] + messages, stream=True)

        outer, inner, seen, dumps = 0, 0, [], []
        for event in response_stream:
            outer += 1
            seen.append(event)
            for _idx, chunk in enumerate(response_stream):
                c = json.dumps(chunk.model_dump())
                dumps.append(json.loads(c))
                inner += 1
                seen.append(chunk)
        self.env.add_reply(response_stream)

        report = {
            "outer": outer,
            "inner": inner,
            "distinct": len({id(chunk) for chunk in seen}),
            "provider_chunks": len(response_stream.chunks),
            "text": "".join(c.choices[0].delta.content or "" for c in seen if c.choices),
            "dumps": dumps,
        }
        self.env.add_reply(json.dumps(report))

if globals().get('env', None):
    Agent(globals().get('env')).run()
""",
    # Two streamed completions at once, both added afterwards.
    "two-streams": """
SOCRATES = {"role": "system", "content": "respond as though you were Socrates"}
PLATO = {"role": "system", "content": "Now, respond as though you were Plato"}

async def run(env):
    messages = await env.alist_messages()
    first = await env.acompletion([SOCRATES, *messages], stream=True)
    second = await env.acompletion([PLATO, *messages], stream=True)
    await env.aadd_reply(first)
    await env.aadd_reply(second)
""",
    "two-streams-sync": _SYNC_HEAD
    + """
SOCRATES = {"role": "system", "content": "respond as though you were Socrates"}
PLATO = {"role": "system", "content": "Now, respond as though you were Plato"}

if globals().get('env', None):
    messages = env.list_messages()
    first = env.completion([SOCRATES, *messages], stream=True)
    second = env.completion([PLATO, *messages], stream=True)
    env.add_reply(first)
    env.add_reply(second)
""",
    # Calls an Environment method agentstream does not provide.
    "unsupported": _SYNC_HEAD
    + """
if globals().get('env', None):
    env.exec_command("ls")
""",
    # Replies without streaming, including an empty reply.
    "plain-replies": """
async def run(env):
    await env.aadd_reply("First, plainly.")
    await env.aadd_reply("")
    text = await env.acompletion(await env.alist_messages())
    await env.aadd_reply(text)
""",
    # Awaits forever after one reply (for expiry of an asynchronous agent).
    "async-waiter": """
import asyncio

async def run(env):
    await env.aadd_reply("waiting")
    await asyncio.Event().wait()
""",
}


def write_agent(root: Path, name: str, source: str, **details: Any) -> Path:
    """Write ``root/name/agent.py`` and ``metadata.json``; the agent's folder."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "agent.py").write_text(textwrap.dedent(source))
    metadata = {
        "name": name,
        "version": "0.0.1",
        "category": "agent",
        "description": f"test agent {name}",
        "details": {"agent": {"show_streaming_message": True, **details}},
    }
    (folder / "metadata.json").write_text(json.dumps(metadata))
    return folder


def with_examples(*paths: Path) -> tuple[Path, ...]:
    """The bundled examples plus ``paths``, for ``HubConfig(agents=...)``."""
    return (bundled_examples_dir(), *paths)
