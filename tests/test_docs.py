"""Every command and snippet of ``README.md`` and ``docs/*.md`` runs as written.

Each fenced block of a document is one of:

- **shown**: its language says it is output or data, not something to run (``console``,
  ``text``, ``json``);
- **not run**: marked ``<!-- not run: REASON -->`` on the line before its fence (set-up
  commands that create a virtual environment, ``apt-get``, a browser's JavaScript…);
- **a file**: marked ``<!-- file: PATH -->``: written to ``PATH`` (relative to the
  document's working directory) at its place in the document;
- **a server**: a ``bash`` block marked ``<!-- server: ... -->``, a command that runs until
  stopped (``agentstream serve``): started in the background at its place, and the
  document goes on once it logs ``listening on``;
- **run**: every other ``bash``/``sh``/``shell`` block runs in ``bash`` with ``set -euo
  pipefail``; a ``python`` block runs with the project's Python, except one that defines
  ``test_…`` functions, which runs with pytest in pytest-asyncio's strict mode (the
  default) from a directory of its own, warnings as errors.

Any other block fails the test: a new snippet is either run or says why not. Consecutive
runnable blocks of a document run in order in one shell (its variables carry from block to
block) until a server block; the servers and whatever the blocks started in the
background are stopped at the end of the document.

Each document runs in a fresh directory holding links to the repository's ``examples``,
``docs``, ``scripts`` and the project's ``.venv``, with the project's environment first on
``PATH``. Every ``$PORT``-like variable a runnable block names (``PORT``, ``REDIS_PORT``,
``PORT_A``…) is set to a free port, so documents write ``${PORT:-8080}`` and the test
needs no fixed port. The documents run concurrently (each waits on simulated models that
stream at a human pace, not on the CPU); each test waits for its own document.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UNIT = float(os.environ.get("AGENTSTREAM_TEST_UNIT", "1"))
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

SHOWN = {"console", "text", "json"}
SHELL = {"bash", "sh", "shell"}
PYTHON = {"python", "py"}
MARKER = re.compile(r"^<!--\s*(not run|file|server)\s*:\s*(.*?)\s*-->$")
PORT_VARIABLE = re.compile(r"\$\{?([A-Z][A-Z0-9_]*PORT[A-Z0-9_]*|PORT[A-Z0-9_]*)\b")
LINKED = ("examples", "docs", "scripts")


@dataclass
class Block:
    path: Path
    line: int  # of the opening fence, 1-based
    lang: str
    marker: tuple[str, str] | None
    body: str

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"

    @property
    def kind(self) -> str:
        """shown, skipped, file, server, shell, python or pytest; else a ValueError."""
        if self.marker is not None:
            what, arg = self.marker
            if not arg:
                raise ValueError(f"{self.where}: <!-- {what}: ... --> needs a reason or a path")
            if what == "not run":
                return "skipped"
            if what == "file":
                if arg.startswith("/") or ".." in Path(arg).parts:
                    raise ValueError(f"{self.where}: a file block's path must be relative")
                return "file"
            if self.lang not in SHELL:
                raise ValueError(f"{self.where}: a server block must be bash")
            return "server"
        if self.lang in SHOWN:
            return "shown"
        if self.lang in SHELL:
            return "shell"
        if self.lang in PYTHON:
            return "pytest" if re.search(r"^(async )?def test_", self.body, re.M) else "python"
        raise ValueError(
            f"{self.where}: a ```{self.lang or '(no language)'} block is neither run nor "
            "marked: run it (bash, python), tag its output (console, text, json) or put "
            "<!-- not run: REASON --> on the line before it"
        )


def blocks(path: Path) -> list[Block]:
    found: list[Block] = []
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        opening = re.match(r"^( *)```(.*)$", lines[i])
        if not opening:
            i += 1
            continue
        indent, lang = len(opening.group(1)), opening.group(2).strip()
        end = i + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        assert end < len(lines), f"{path.name}:{i + 1}: unclosed fence"
        body = "\n".join(line[indent:] for line in lines[i + 1 : end]) + "\n"
        marked = MARKER.match(lines[i - 1].strip()) if i > 0 else None
        marker = (marked.group(1), marked.group(2)) if marked else None
        found.append(Block(path, i + 1, lang, marker, body))
        i = end + 1
    return found


# -- running a document ----------------------------------------------------------------


@dataclass
class DocRun:
    returncode: int = 0
    elapsed: float = 0.0
    output: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return "".join(self.output)


def free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def script_of(block: Block, workdir: Path) -> str:
    kind = block.kind
    header = f"\n# ---- {block.where} ({kind})\n"
    if kind == "shell":
        return header + block.body
    if kind == "file":
        target = block.marker[1] if block.marker else ""
        return header + (
            f"mkdir -p \"$(dirname '{target}')\"\ncat > '{target}' <<'__DOC_FILE__'\n"
            f"{block.body}__DOC_FILE__\n"
        )
    if kind == "python":
        return header + f"python3 - <<'__DOC_PYTHON__'\n{block.body}__DOC_PYTHON__\n"
    assert kind == "pytest"
    folder = f"pytest-{block.line}"
    return header + (
        f"mkdir -p {folder}\n"
        f"printf '[pytest]\\nfilterwarnings = error\\n"
        f"asyncio_default_fixture_loop_scope = function\\n' > {folder}/pytest.ini\n"
        f"cat > {folder}/test_snippet.py <<'__DOC_PYTHON__'\n{block.body}__DOC_PYTHON__\n"
        # pytest-asyncio's default mode is strict: the ini file above leaves it so.
        f"(cd {folder} && python3 -m pytest -q -p no:cacheprovider test_snippet.py)\n"
    )


class DocRunner:
    """Runs one document's blocks in order; every process it starts is in a process group
    of its own, killed at the end."""

    def __init__(self, path: Path, workdir: Path, timeout: float) -> None:
        self.path, self.workdir = path, workdir
        self.deadline = time.monotonic() + timeout
        self.result = DocRun()
        self.groups: list[subprocess.Popen[str]] = []
        self.readers: list[threading.Thread] = []
        self.env = dict(os.environ)
        self.env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{self.env.get('PATH', '')}"
        self.env["PYTHONPATH"] = str(ROOT)
        self.env.pop("PYTEST_ADDOPTS", None)
        self.env.pop("PYTEST_CURRENT_TEST", None)

    def log(self, text: str) -> None:
        self.result.output.append(text)

    def left(self) -> float:
        return max(0.1, self.deadline - time.monotonic())

    def run(self) -> DocRun:
        started = time.monotonic()
        try:
            return self.run_blocks()
        finally:
            self.result.elapsed = time.monotonic() - started

    def run_blocks(self) -> DocRun:
        workdir = self.workdir
        workdir.mkdir(parents=True)
        for name in LINKED:
            (workdir / name).symlink_to(ROOT / name)
        (workdir / ".venv").symlink_to(Path(sys.prefix))
        doc_blocks = blocks(self.path)
        runnable = [b for b in doc_blocks if b.kind not in ("shown", "skipped")]
        names = sorted({m for b in runnable for m in PORT_VARIABLE.findall(b.body)})
        for name, port in zip(names, free_ports(len(names)), strict=True):
            self.env[name] = str(port)
            self.log(f"{name}={port}\n")
        pending: list[str] = []
        try:
            for block in runnable:
                if block.kind == "server":
                    if not self.run_script(pending):
                        return self.result
                    pending = []
                    if not self.start_server(block):
                        return self.result
                else:
                    pending.append(script_of(block, workdir))
            self.run_script(pending)
        finally:
            for proc in self.groups:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()
            for reader in self.readers:
                reader.join()
            for proc in self.groups:
                if proc.stdout is not None:
                    proc.stdout.close()
        return self.result

    def popen(self, script: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            ["bash", "-c", script],
            cwd=self.workdir,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,  # its own process group: what it starts goes with it
        )
        self.groups.append(proc)
        return proc

    def run_script(self, parts: list[str]) -> bool:
        if not parts:
            return True
        # Jobs the blocks leave in the background (a redis-server, hubs) are stopped at
        # the end: they hold the output pipe open otherwise.
        end = "\nkill $(jobs -p) 2>/dev/null || true\nwait\n"
        script = "set -euxo pipefail\n" + "".join(parts) + end
        proc = self.popen(script)
        try:
            out, _ = proc.communicate(timeout=self.left())
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
            out += "\n[timed out]\n"
            self.result.returncode = -1
        self.log(out)
        if proc.returncode != 0 and self.result.returncode == 0:
            self.result.returncode = proc.returncode
        return self.result.returncode == 0

    def start_server(self, block: Block) -> bool:
        self.log(f"\n# ---- {block.where} (server, in the background)\n{block.body}")
        proc = self.popen("set -euo pipefail\n" + block.body)
        listening = threading.Event()

        def read() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                self.log(line)
                if "listening on" in line:
                    listening.set()
            listening.set()  # it ended: the wait below sees it

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        self.readers.append(reader)
        listening.wait(min(self.left(), 60 * UNIT))
        if proc.poll() is not None or not listening.is_set():
            self.log(f"\n[server {block.where} is not listening]\n")
            self.result.returncode = -1
            return False
        return True


@pytest.fixture(scope="module")
def doc_runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Future[DocRun]]]:
    base = tmp_path_factory.mktemp("docs")
    with ThreadPoolExecutor(max_workers=len(DOCS)) as pool:
        yield {
            str(doc.relative_to(ROOT)): pool.submit(DocRunner(doc, base / doc.stem, 180 * UNIT).run)
            for doc in DOCS
        }


# -- the tests -------------------------------------------------------------------------


def test_every_block_is_run_or_marked() -> None:
    kinds: dict[str, int] = {}
    problems = []
    for doc in DOCS:
        for block in blocks(doc):
            try:
                kinds[block.kind] = kinds.get(block.kind, 0) + 1
            except ValueError as exc:
                problems.append(str(exc))
    assert not problems, "\n".join(problems)
    assert kinds.get("shell", 0) >= 10 and kinds.get("python", 0) >= 2
    assert kinds.get("pytest", 0) >= 1 and kinds.get("server", 0) >= 1


def test_the_classifier_refuses_an_unmarked_block(tmp_path: Path) -> None:
    doc = tmp_path / "x.md"
    doc.write_text("```js\nalert(1)\n```\n\n<!-- not run: a browser's -->\n```js\nalert(2)\n```\n")
    found = blocks(doc)
    found[0].path = found[1].path = ROOT / "x.md"
    with pytest.raises(ValueError, match="neither run nor marked"):
        _ = found[0].kind
    assert found[1].kind == "skipped"


def test_the_documents_speak_to_a_reader_of_the_repository() -> None:
    for doc in DOCS:
        text = doc.read_text()
        for phrase in ("product description", "the FAQ", "pip install agentstream", "../shared"):
            assert phrase not in text, f"{doc.name} mentions {phrase!r}"
        assert not re.search(r"(?<![\w.])/work/", text), doc.name
        # Commands take the port from a variable: they work on any port.
        for block in blocks(doc):
            if block.lang in SHELL | PYTHON:
                for line in block.body.splitlines():
                    assert "8080" not in line or "PORT" in line, f"{block.where}: {line}"


def test_the_readme_starts_with_the_two_commands_ci_runs() -> None:
    readme = ROOT / "README.md"
    first = [b for b in blocks(readme) if b.lang in SHELL][:2]
    assert "bash scripts/demo" in first[0].body and "bash scripts/test" in first[1].body
    assert "bash scripts/test" in (ROOT / ".ci" / "run").read_text()
    # Every document is linked from the README.
    for doc in DOCS[1:]:
        assert f"docs/{doc.name}" in readme.read_text(), f"README.md does not link {doc.name}"


@pytest.mark.slow
@pytest.mark.parametrize("doc", [str(doc.relative_to(ROOT)) for doc in DOCS])
def test_the_documents_snippets_run_as_written(
    doc_runs: dict[str, Future[DocRun]], doc: str
) -> None:
    runnable = [b.body for b in blocks(ROOT / doc) if b.kind not in ("shown", "skipped")]
    if any("redis-server" in body for body in runnable) and not shutil.which("redis-server"):
        if not os.environ.get("AGENTSTREAM_REQUIRE_REDIS"):
            pytest.skip("redis-server is not installed (scripts/test installs it as root)")
    done = doc_runs[doc].result(timeout=200 * UNIT)
    assert done.returncode == 0, done.text[-4000:]
    print(f"{doc}: {done.elapsed:.1f} s")
    lines = done.text.splitlines()
    if doc == "docs/protocol.md":
        assert "204" in lines, done.text[-3000:]  # a cursor at the end
        assert "cancelling" in lines  # the cancel's answer
        assert any('"thread.stream.gap"' in line for line in lines)  # the rebuilt stream
    if doc == "README.md":
        assert any("passed" in line for line in lines)  # the embedded hub's test ran
