"""The broker's public surface: ``__all__`` names what callers use, and every name resolves."""

from __future__ import annotations

import broker


def test_star_import_resolves_every_name() -> None:
    namespace: dict[str, object] = {}
    exec("from broker import *", namespace)
    missing = [name for name in broker.__all__ if name not in namespace]
    assert not missing
    assert len(set(broker.__all__)) == len(broker.__all__)


def test_all_holds_no_internals() -> None:
    internals = {"ByteBudget", "Gap", "ReplayBuffer", "Subscription", "SubState", "Sink"}
    assert not internals & set(broker.__all__)
