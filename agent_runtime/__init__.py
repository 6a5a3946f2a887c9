"""agentstream's agent runtime.

The test harness is re-exported here lazily (importing ``agent_runtime`` stays cheap):
``EmbeddedHub`` (``agent_runtime.testing.EmbeddedHub``), ``ScriptedModel`` and its steps ``Say``,
``Fail``, ``Stall``, ``Gate``, ``Finish``, and ``RunResult``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .testing import EmbeddedHub, Fail, Finish, Gate, RunResult, Say, ScriptedModel, Stall

__all__ = ["EmbeddedHub", "Fail", "Finish", "Gate", "RunResult", "Say", "ScriptedModel", "Stall"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import testing

        return getattr(testing, name)
    raise AttributeError(f"module 'agent_runtime' has no attribute {name!r}")
