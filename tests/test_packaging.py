"""Packaging: building the project's metadata prints no setuptools warning (the licence in
SPDX form). The build runs as ``pip`` runs it for ``pip install -e .`` (an isolated build
environment from the configured index), on a copy of ``pyproject.toml`` with empty
packages, so nothing is written into the checkout."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
UNIT = float(os.environ.get("AGENTSTREAM_TEST_UNIT", "1"))


async def test_building_prints_no_setuptools_warning(tmp_path: Path) -> None:
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tmp_path / name)
    for package in ("agent_runtime", "broker"):
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "pip", "wheel", "--no-deps", "--verbose", "--wheel-dir", str(tmp_path / "w")),
        str(tmp_path),
        cwd=tmp_path,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    async with asyncio.timeout(120 * UNIT):
        out, _ = await proc.communicate()
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text
    assert list((tmp_path / "w").glob("agentstream-*.whl")), text
    warnings = [line for line in text.splitlines() if "Warning" in line]
    assert warnings == [], "\n".join(warnings)
    assert "License-Expression: MIT" in (tmp_path / "agentstream.egg-info" / "PKG-INFO").read_text()
