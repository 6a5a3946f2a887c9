"""Runs: an agent executing on a thread, its lifecycle, and the events it publishes.

The package follows the run's seams:

* :mod:`.manager` — :class:`RunManager`: creates runs, tracks, cancels and ends them;
* :mod:`.context` — :class:`RunContext`: one live run's state and what it publishes;
* :mod:`.lifecycle` — its task: slot, agent, ending (exactly one terminal event);
* :mod:`.pump` — completions streamed into deltas and tool-call steps;
* :mod:`.replies` — what it writes to its thread;
* :mod:`.children` — child runs (``env.run_agent``);
* :mod:`.agent_thread` — a synchronous agent's thread;
* :mod:`.ports` — the interfaces a run needs and the one an agent sees.

Every event goes through :meth:`RunContext.publish`, which appends it to the run's broker
stream (never awaiting a subscriber) and records it in the run's
:class:`~agent_runtime.run_log.RunLog`, from which late-join and resume snapshots, and
the log the store keeps, are built. The events are named in :mod:`agent_runtime.protocol`
and described for clients in ``docs/protocol.md``.
"""

from .context import RunContext
from .manager import RunManager
from .ports import AgentPort, ChildRunResult, ClusterPort, NoCluster

__all__ = ["AgentPort", "ChildRunResult", "ClusterPort", "NoCluster", "RunContext", "RunManager"]
