"""agentstream's pytest plugin: fixtures that start embedded hubs (``agent_runtime.testing``).

Installed with agentstream (the ``pytest11`` entry point ``agentstream``); nothing here is
autouse, and agentstream itself is only imported when a test asks for a fixture, so test
suites that do not use them pay nothing. The asynchronous fixtures need pytest-asyncio
(any mode: they are declared with ``pytest_asyncio.fixture``); without it, asking for one
fails with a message saying so. Disable the plugin with ``-p no:agentstream``.

Fixtures (function-scoped; each hub is stopped at the end of its test):

``agentstream_hub``
    A running :class:`agent_runtime.testing.EmbeddedHub` with the bundled example agents on the
    simulated model (``simulated:tokens=20,rate=0``).
``scripted_model``
    A fresh :class:`~agent_runtime.models.scripted.ScriptedModel` with no script: queue
    scripts with ``scripted_model.add_script(Say("Hi"), ...)`` or set
    ``scripted_model.script = [...]``, and pass it as a hub's ``model``.
``agentstream_hub_factory``
    ``await agentstream_hub_factory(agents=..., model=..., **settings)`` starts a hub with
    those arguments (those of :class:`agent_runtime.testing.EmbeddedHub`) and returns it.

The hubs run on the test's event loop: use them from the test (or other fixtures of the
same loop scope).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .models.scripted import ScriptedModel
    from .testing import EmbeddedHub

__all__ = ["HubFactory", "agentstream_hub", "agentstream_hub_factory", "scripted_model"]

HubFactory = Callable[..., Awaitable["EmbeddedHub"]]

_asyncio_fixture: Callable[..., Any] | None
try:
    from pytest_asyncio import fixture as _asyncio_fixture
except ImportError:  # the async fixtures then explain what is missing
    _asyncio_fixture = None


def _async_fixture(fn: Callable[..., Any]) -> Any:
    if _asyncio_fixture is not None:
        return _asyncio_fixture(fn)

    @pytest.fixture(name=fn.__name__)
    def missing() -> None:
        pytest.fail(
            f"the {fn.__name__!r} fixture needs pytest-asyncio: pip install pytest-asyncio",
            pytrace=False,
        )

    missing.__doc__ = fn.__doc__
    return missing


@_async_fixture
async def agentstream_hub_factory() -> AsyncIterator[HubFactory]:
    """``await agentstream_hub_factory(agents=None, model=..., models=None, **settings)``: a
    started :class:`agent_runtime.testing.EmbeddedHub`; every hub it started stops at teardown."""
    from .testing import EmbeddedHub

    started: list[EmbeddedHub] = []

    async def start(*args: Any, **kwargs: Any) -> EmbeddedHub:
        hub = EmbeddedHub(*args, **kwargs)
        await hub.start()
        started.append(hub)
        return hub

    try:
        yield start
    finally:
        for hub in reversed(started):
            await hub.aclose()


@_async_fixture
async def agentstream_hub(agentstream_hub_factory: HubFactory) -> EmbeddedHub:
    """A running hub with the bundled example agents on the fast simulated model."""
    return await agentstream_hub_factory()


@pytest.fixture
def scripted_model() -> ScriptedModel:
    """A fresh :class:`~agent_runtime.models.scripted.ScriptedModel` with no script yet."""
    from .models.scripted import ScriptedModel

    return ScriptedModel()
