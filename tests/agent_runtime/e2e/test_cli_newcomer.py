"""The command line as a newcomer meets it, driven as a subprocess: errors in one or two
lines saying what to do (no traceback unless ``--log-level debug``) with documented exit
statuses, a busy port, ``--log-level``/``--log-format`` after the subcommand, the access
log and the run start/end lines of ``serve``, help that describes every flag with its
default, ``agentstream agents``, ``--agents`` for child runs, "No agent named" naming the
agents, and Ctrl-C cancelling one reply of ``agent interactive``."""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
from pathlib import Path

import aiohttp
import pytest

from agent_runtime.agents import AgentCatalog, bundled_examples_dir, discover_agents
from agent_runtime.cli import _parser
from agent_runtime.errors import NotFound
from agent_runtime.models.openai_compat import PROVIDERS
from agent_runtime.models.simulated import simulated_text

from ..conftest import SOCRATES, TEST_AGENTS, eventually, write_agent
from ..provider_stub import ServeProcess
from .test_cli import EXAMPLE, MODEL, QUESTION, USER, Pty, cli
from .test_restart import new_run, new_thread, whole_stream

FAST = "simulated:tokens=12,rate=0"
SLOW = "simulated:tokens=5000,rate=100"
"""Fifty seconds per message: still streaming when interrupted."""


def no_provider_keys() -> dict[str, str]:
    """This environment without any model provider's key or base URL."""
    names = {n for info in PROVIDERS.values() for n in (info.key_env, info.base_url_env)}
    return {k: v for k, v in os.environ.items() if k not in names}


def short_error(stderr: str) -> list[str]:
    lines = stderr.strip().splitlines()
    assert "Traceback" not in stderr, stderr
    assert 1 <= len(lines) <= 2, stderr
    return lines


# -- errors that say what to do ---------------------------------------------------------


def test_a_missing_provider_key_names_the_variable_and_suggests_simulated() -> None:
    result = cli("agent", "task", EXAMPLE, QUESTION, env=no_provider_keys())
    assert result.returncode == 2, result.stderr
    (line,) = short_error(result.stderr)
    assert "FIREWORKS_API_KEY" in line and "--model simulated" in line
    assert result.stdout == ""


def test_a_bad_simulated_parameter_lists_the_accepted_keys() -> None:
    result = cli("agent", "task", EXAMPLE, QUESTION, "--model", "simulated:tokns=3")
    assert result.returncode == 2, result.stderr
    (line,) = short_error(result.stderr)
    assert "'tokns'" in line and "tokens, rate, delay, seed, tools" in line


@pytest.mark.parametrize("model", ["gpt-4o", "nope::gpt-4o"])
def test_an_unknown_model_names_the_providers(model: str) -> None:
    """A bare name (no ``provider::``) goes to the default provider only when its key is
    set; without it, as an unknown provider, the providers are listed."""
    result = cli("agent", "task", EXAMPLE, QUESTION, "--model", model, env=no_provider_keys())
    assert result.returncode == 2, result.stderr
    (line,) = short_error(result.stderr)
    assert all(name in line for name in ("simulated", "fireworks", "openai", "together"))


@pytest.mark.parametrize(
    ("model", "said"),
    [
        ("simulated:tokns=3", "tokens, rate, delay, seed, tools"),
        ("gpt-4o", "providers: "),
        ("nope::x", "known providers: "),
        ("fireworks::llama-v3p3-70b-instruct", "FIREWORKS_API_KEY"),
    ],
)
def test_serve_refuses_a_forced_model_it_cannot_serve(model: str, said: str) -> None:
    """Every completion would use it: refused at start (before, serve started and each
    run failed)."""
    result = cli(
        "serve", "--port", "0", "--store", "memory", "--model", model, env=no_provider_keys()
    )
    assert result.returncode == 2, result.stderr
    (line,) = short_error(result.stderr)
    assert said in line and "--model" in line, line


def test_an_agent_failure_has_no_traceback_unless_debug(tmp_path: Path) -> None:
    agent = str(write_agent(tmp_path, "raiser", TEST_AGENTS["raiser"]))
    quiet = cli("agent", "task", agent, QUESTION, "--model", MODEL)
    assert quiet.returncode == 1
    assert "Traceback" not in quiet.stderr
    assert quiet.stderr.strip().splitlines()[-1].startswith("run failed: ValueError")
    debug = cli("agent", "task", agent, QUESTION, "--model", MODEL, "--log-level", "debug")
    assert debug.returncode == 1
    assert "Traceback" in debug.stderr


def test_a_busy_port_names_the_port_and_the_flag(tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = cli("serve", "--port", str(port), "--data-dir", str(tmp_path / "data"))
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "Traceback" not in result.stderr
    assert str(port) in last and "--port" in last


# -- help -------------------------------------------------------------------------------

SUBCOMMANDS = [["serve"], ["agents"], ["agent", "task"], ["agent", "interactive"], ["bench"]]


def test_the_exit_statuses_are_in_the_help() -> None:
    result = cli("--help")
    assert result.returncode == 0
    statuses = result.stdout.split("exit statuses:")[1].split()
    assert {"0", "1", "2", "130"} <= set(statuses)


@pytest.mark.parametrize("command", SUBCOMMANDS, ids=" ".join)
def test_each_subcommand_lists_the_log_flags(command: list[str]) -> None:
    result = cli(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert "--log-level" in result.stdout and "--log-format" in result.stdout


def test_every_flag_of_every_subcommand_is_described_with_its_default() -> None:
    def walk(parser: argparse.ArgumentParser, name: str) -> list[tuple[str, str]]:
        found = []
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub_name, sub in action.choices.items():
                    found += walk(sub, f"{name} {sub_name}")
            elif action.option_strings and not isinstance(action, argparse._HelpAction):
                found.append((f"{name} {action.option_strings[0]}", str(action.help or "")))
        return found

    flags = walk(_parser(), "agentstream")
    assert len(flags) > 40
    missing = [flag for flag, text in flags if "default" not in text and not text.endswith(")")]
    assert missing == []
    assert all(len(text) > 10 for _flag, text in flags)


# -- logging ----------------------------------------------------------------------------


def test_log_flags_after_the_subcommand_and_json_lines() -> None:
    result = cli(
        "agent", "task", EXAMPLE, QUESTION, "--model", MODEL,
        "--log-level", "info", "--log-format", "json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stderr.splitlines()]
    ends = [r for r in records if r["message"].startswith("run ended:")]
    (end,) = ends
    assert end["level"] == "INFO" and end["run_id"].startswith("run_")
    assert "agent=streaming-example/0.0.3" in end["message"]
    assert f"model={MODEL}" in end["message"] and "status=completed" in end["message"]
    assert "events=" in end["message"] and "duration=" in end["message"]
    assert all("run_id" not in r for r in records if r["logger"] == "agent_runtime.agents")


async def test_serve_logs_each_request_and_each_run(
    tmp_path: Path, session: aiohttp.ClientSession
) -> None:
    hub = ServeProcess("--data-dir", str(tmp_path), "--log-level", "INFO", "--model", FAST)
    try:
        url = await hub.start()
        thread_id = await new_thread(session, url, QUESTION)
        run = await new_run(session, url, thread_id, FAST)
        status, _events = await whole_stream(session, url, thread_id, run["id"])
        assert status == 200
        stream_path = f"/v1/threads/{thread_id}/stream/{run['id']}"
        await eventually(lambda: f"GET {stream_path} 200 " in hub.output, what="stream")
        await eventually(lambda: "run ended:" in hub.output, what="run end")
    finally:
        await hub.aclose()
    lines = hub.log
    post = next(line for line in lines if f"POST /v1/threads/{thread_id}/runs 200 " in line)
    assert "agentstream.access" in post and post.endswith("ms")
    started = next(line for line in lines if "run started:" in line)
    assert f"[run={run['id']} thread={thread_id}]" in started
    assert "agent=streaming-example/0.0.3" in started
    ended = next(line for line in lines if "run ended:" in line)
    assert "status=completed" in ended and "events=" in ended
    listening = next(line for line in lines if "agentstream listening" in line)
    assert "[run=" not in listening and "thread=-" not in hub.output


async def test_no_access_log(tmp_path: Path, session: aiohttp.ClientSession) -> None:
    hub = ServeProcess("--data-dir", str(tmp_path), "--no-access-log")
    try:
        url = await hub.start()
        async with session.get(f"{url}/healthz") as response:
            assert response.status == 200
        async with session.get(f"{url}/v1/nothing-here") as response:
            assert response.status == 404
        await eventually(lambda: hub.log_bytes > 0)
    finally:
        await hub.aclose()
    assert "agentstream.access" not in hub.output
    assert "/healthz" not in hub.output


# -- agents -----------------------------------------------------------------------------


def test_agents_lists_name_version_display_name_and_description(tmp_path: Path) -> None:
    result = cli("agents")
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["NAME", "VERSION", "DISPLAY", "NAME", "DESCRIPTION"]
    row = next(r for r in rows if r.startswith("streaming-example "))
    assert row.split()[:4] == ["streaming-example", "0.0.3", "Streaming", "Example"]
    assert row.endswith("Demonstrates streaming agent runs.")
    write_agent(tmp_path, "mine", TEST_AGENTS["raiser"])
    result = cli("agents", "--agents", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1].split() == [
        "mine",
        "0.0.1",
        "mine",
        "test",
        "agent",
        "mine",
    ]


PARENT = """
async def run(env):
    await env.arun_agent("b-child", "What is virtue?", relay=True)
"""
CHILD = """
async def run(env):
    await env.aadd_reply("Virtue is knowledge.")
"""


def test_agent_task_resolves_child_runs_with_agents(tmp_path: Path) -> None:
    parent = str(write_agent(tmp_path / "main", "a-parent", PARENT))
    write_agent(tmp_path / "more", "b-child", CHILD)
    alone = cli("agent", "task", parent, QUESTION, "--model", MODEL)
    assert alone.returncode == 1
    assert "No agent named 'b-child'; agents: a-parent" in alone.stderr
    found = cli(
        "agent", "task", parent, QUESTION, "--stream", "--model", MODEL,
        "--agents", str(tmp_path / "more"),
    )  # fmt: skip
    assert found.returncode == 0, found.stderr
    assert "[child agent b-child]" in found.stdout and "Virtue is knowledge." in found.stdout


def test_no_agent_named_lists_the_closest_names_or_the_agents() -> None:
    catalog = AgentCatalog(discover_agents([bundled_examples_dir()]))
    with pytest.raises(NotFound) as close:
        catalog.get("streaming-exampel")
    assert close.value.message == (
        "No agent named 'streaming-exampel'; did you mean 'streaming-example' or 'async-example'?"
    )
    with pytest.raises(NotFound) as far:
        catalog.get("zzz")
    assert far.value.message == "No agent named 'zzz'; agents: async-example, streaming-example"


# -- Ctrl-C in agent interactive ----------------------------------------------------------

SLOW_START = simulated_text([SOCRATES, USER], tokens=5000)[:12]


def interrupted_reply(term: Pty) -> None:
    term.expect("> ")
    term.send(f"{QUESTION}\n")
    term.expect(SLOW_START)  # the reply is streaming
    term.proc.send_signal(signal.SIGINT)
    term.expect("run ended cancelled")
    term.expect("> ")  # back at the prompt


@pytest.mark.parametrize("then", ["ctrl-d", "ctrl-c"])
def test_ctrl_c_cancels_the_reply_and_returns_to_the_prompt(then: str) -> None:
    term = Pty("agent", "interactive", EXAMPLE, "--stream", "--model", SLOW)
    try:
        interrupted_reply(term)
        if then == "ctrl-d":
            term.send("\x04")
        else:
            term.proc.send_signal(signal.SIGINT)
    finally:
        code = term.close()
    output = term.output.decode()
    assert code == (0 if then == "ctrl-d" else 130), output
    assert "Traceback" not in output
