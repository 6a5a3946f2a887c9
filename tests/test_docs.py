"""The documents' shell snippets work as written: every ```bash block of
``docs/protocol.md``, run in order in one shell (``set -e``), against the hubs the blocks
start themselves, with the project's environment first on ``PATH``. The hubs are stopped
with the shell's process group."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UNIT = float(os.environ.get("AGENTSTREAM_TEST_UNIT", "1"))


def bash_blocks(path: Path) -> list[str]:
    return re.findall(r"^```bash\n(.*?)^```", path.read_text(), re.S | re.M)


def run_blocks(path: Path, workdir: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    # The blocks leave their hubs running in the background: stop them at the end (they
    # hold the output pipe open otherwise).
    blocks = "\n".join(bash_blocks(path))
    script = f"set -euxo pipefail\n{blocks}\nkill $(jobs -p) 2>/dev/null || true\nwait\n"
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.Popen(
        ["bash", "-c", script],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # its own process group: the hubs it starts go with it
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        out += f"\n[timed out after {timeout:.0f}s]"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # anything its hubs left behind
        except ProcessLookupError:
            pass
        proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, "")


@pytest.mark.slow
def test_the_protocol_documents_snippets_run_as_written(tmp_path: Path) -> None:
    doc = ROOT / "docs" / "protocol.md"
    assert len(bash_blocks(doc)) >= 8
    done = run_blocks(doc, tmp_path, timeout=300 * UNIT)
    assert done.returncode == 0, done.stdout[-3000:]
    lines = done.stdout.splitlines()
    assert "204" in lines, done.stdout[-3000:]  # a cursor at the end
    assert "cancelling" in lines  # the cancel's answer
    assert any('"thread.stream.gap"' in line for line in lines)  # the rebuilt stream
