"""The ``agentstream`` command line, driven as a subprocess: ``agent task`` (streamed or
not), ``agent interactive`` through a pipe and through a pseudo-terminal, and a failing
agent. Every subprocess is bounded by a timeout."""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent_runtime.models.simulated import simulated_text

from ..conftest import PLATO, SOCRATES, TEST_AGENTS, UNIT, write_agent

ROOT = Path(__file__).resolve().parents[3]
EXAMPLE = "agent_runtime/examples/streaming-example"
MODEL = "simulated:tokens=10,rate=0"
TIMEOUT = 20 * UNIT
AGENTSTREAM = Path(sys.executable).parent / "agentstream"

QUESTION = "What is virtue?"
USER = {"role": "user", "content": QUESTION}
SOCRATES_TEXT = simulated_text([SOCRATES, USER], tokens=10)
PLATO_TEXT = simulated_text([PLATO, USER], tokens=10)


def cli(
    *args: str,
    stdin: str | None = None,
    script: bool = False,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    command = [str(AGENTSTREAM)] if script else [sys.executable, "-m", "agent_runtime.cli"]
    return subprocess.run(
        [*command, *args],
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=TIMEOUT,
        check=False,
    )


def test_task_with_stream_true_prints_the_two_texts() -> None:
    result = cli("agent", "task", EXAMPLE, QUESTION, "--stream=True", "--model", MODEL, script=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{SOCRATES_TEXT}\n\n{PLATO_TEXT}\n"
    assert SOCRATES_TEXT != PLATO_TEXT


def test_task_without_stream_prints_the_final_messages() -> None:
    result = cli("agent", "task", EXAMPLE, QUESTION, "--model", MODEL)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{SOCRATES_TEXT}\n\n{PLATO_TEXT}\n"


def test_stream_flag_without_a_value() -> None:
    result = cli("agent", "task", EXAMPLE, QUESTION, "--stream", "--model", MODEL)
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{SOCRATES_TEXT}\n\n{PLATO_TEXT}\n"


def test_failing_agent_exits_non_zero_with_the_error_on_stderr(tmp_path: Path) -> None:
    agent = write_agent(tmp_path, "raiser", TEST_AGENTS["raiser"])
    result = cli("agent", "task", str(agent), QUESTION, "--stream=True", "--model", MODEL)
    assert result.returncode == 1
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line == "run failed: ValueError: the oracle is silent 42"
    assert result.stdout == "Let me think.\n"  # what it said before failing


def test_agent_that_does_not_stream_and_asks_the_user(tmp_path: Path) -> None:
    agent = write_agent(tmp_path, "asks-user", TEST_AGENTS["asks-user"])
    for flags in (["--stream"], []):
        result = cli("agent", "task", str(agent), QUESTION, *flags, "--model", MODEL)
        assert result.returncode == 0, result.stderr  # requires_action ends the turn
        assert result.stdout == "Which virtue do you mean?\n"


def test_missing_agent_folder_exits_non_zero(tmp_path: Path) -> None:
    result = cli("agent", "task", str(tmp_path / "nowhere"), QUESTION, "--model", MODEL)
    assert result.returncode != 0
    assert "nowhere" in result.stderr
    assert "Traceback" not in result.stderr


def test_interactive_through_stdin() -> None:
    result = cli(
        "--log-level",
        "WARNING",
        "agent",
        "interactive",
        EXAMPLE,
        "--stream=True",
        "--model",
        MODEL,
        stdin=f"{QUESTION}\nWhat is justice?\n",
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert out.startswith("Streaming Example")
    assert "I respond as Socrates then as Plato." in out
    turns = out.split("> ")
    assert len(turns) == 4, out  # three prompts: two questions, then EOF
    assert turns[1] == f"{SOCRATES_TEXT}\n\n{PLATO_TEXT}\n"
    second = turns[2].strip().split("\n\n")
    assert len(second) == 2 and all(second), turns[2]
    assert "justice" in turns[2]
    assert turns[3] == "\n"


class Pty:
    """A child process on a pseudo-terminal (stdin, stdout and stderr, as in a real
    terminal: ``input()`` writes its prompt to stderr when on a terminal); reads are
    bounded by a deadline."""

    def __init__(self, *args: str) -> None:
        self.master, slave = os.openpty()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agent_runtime.cli", *args],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            cwd=ROOT,
            close_fds=True,
        )
        os.close(slave)
        self.output = b""
        self.pos = 0

    def expect(self, text: str, timeout: float = TIMEOUT) -> str:
        """Read until ``text`` appears after what earlier calls consumed; the text up to
        and including it (which is then consumed)."""
        deadline = time.monotonic() + timeout
        needle = text.encode()
        while needle not in self.output[self.pos :]:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"{text!r} not seen; got {self.output[self.pos :]!r}"
            ready, _, _ = select.select([self.master], [], [], remaining)
            if ready:
                try:
                    data = os.read(self.master, 4096)
                except OSError:  # EIO: the child closed the terminal
                    data = b""
                assert data, f"{text!r} not seen before the end: {self.output[self.pos :]!r}"
                self.output += data
        end = self.output.index(needle, self.pos) + len(needle)
        seen = self.output[self.pos : end].decode()
        self.pos = end
        return seen

    def send(self, text: str) -> None:
        os.write(self.master, text.encode())

    def close(self) -> int:
        try:
            code = self.proc.wait(timeout=TIMEOUT)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            while select.select([self.master], [], [], 0)[0]:  # what is left to read
                try:
                    data = os.read(self.master, 4096)
                except OSError:
                    break
                if not data:
                    break
                self.output += data
            os.close(self.master)
        return code


@pytest.mark.parametrize("ending", ["eof", "exit"])
def test_interactive_through_a_terminal(ending: str) -> None:
    term = Pty("--log-level", "WARNING", "agent", "interactive", EXAMPLE, "--model", MODEL)
    try:
        term.expect("I respond as Socrates then as Plato.")
        term.expect("> ")
        term.send(f"{QUESTION}\n")
        reply = term.expect("> ")
        assert SOCRATES_TEXT in reply and PLATO_TEXT in reply
        assert reply.index(SOCRATES_TEXT) < reply.index(PLATO_TEXT)
        term.send("What is justice?\n")
        reply = term.expect("> ")
        assert "justice" in reply
        term.send("\x04" if ending == "eof" else "exit\n")
    finally:
        code = term.close()
    output = term.output.decode()
    assert code == 0, output
    assert "Traceback" not in output
