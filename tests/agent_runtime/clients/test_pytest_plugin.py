"""The pytest plugin, used the way a user would: the documented example test file, copied
into a fresh directory and run by a separate pytest process (``pytester``), in both of
pytest-asyncio's modes; and a suite that does not use the plugin, which it must not touch."""

from __future__ import annotations

from importlib.metadata import entry_points
from pathlib import Path

import pytest

from ..conftest import UNIT

pytest_plugins = ["pytester"]

EXAMPLE = Path(__file__).resolve().parents[3] / "docs" / "examples" / "test_with_agentstream.py"
STRICT = (
    "-p",
    "no:cacheprovider",
    "-W",
    "error",
    "-o",
    "asyncio_default_fixture_loop_scope=function",
)


def test_the_plugin_is_registered_as_an_entry_point() -> None:
    plugins = {ep.name: ep.value for ep in entry_points(group="pytest11")}
    assert plugins.get("agentstream") == "agent_runtime.pytest_plugin", (
        "reinstall the package (pip install -e .) to register its pytest11 entry point"
    )


@pytest.mark.parametrize("mode", ["strict", "auto"])
def test_the_documented_example_passes(pytester: pytest.Pytester, mode: str) -> None:
    pytester.makepyfile(test_with_agentstream=EXAMPLE.read_text())
    result = pytester.runpytest_subprocess(*STRICT, "-o", f"asyncio_mode={mode}", timeout=60 * UNIT)
    result.assert_outcomes(passed=9)


def test_suites_that_do_not_use_it_are_untouched(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_plain="""
        import sys

        def test_plain(request):
            assert request.config.pluginmanager.has_plugin("agentstream")
            # The plugin is loaded, but agentstream itself is not imported until asked for.
            assert "agent_runtime.testing" not in sys.modules
            assert "aiohttp" not in sys.modules
        """
    )
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-W", "error", "-p", "no:asyncio", timeout=60 * UNIT
    )
    result.assert_outcomes(passed=1)
    listed = pytester.runpytest_subprocess("--fixtures", "-p", "no:cacheprovider")
    assert "agentstream_hub_factory" in listed.stdout.str()
    assert "scripted_model" in listed.stdout.str()
