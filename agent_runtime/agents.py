"""Agents: folders holding ``agent.py`` and ``metadata.json``, loaded once and run many times.

Loading (:func:`load_agent`, :func:`discover_agents`) reads and validates ``metadata.json``,
parses and compiles ``agent.py`` once, and decides the agent's *style* by static analysis:

- ``"async"`` when ``agent.py`` has a top-level ``async def run(env)`` or a top-level class
  with an ``async def run(self)`` method;
- ``"sync"`` otherwise: the style of ``examples/streaming-example``, module code that
  finds ``env`` in its globals (``if globals().get('env', None): ...``), usually a class
  taking ``env``.

Threads and the event loop:

- :meth:`Agent.run_sync` executes the module in the **calling thread** and blocks until the
  agent returns; callers run it in a worker thread, never on the event loop.
- :meth:`Agent.run_async` executes the module's top-level code **once per loaded agent**
  (one :class:`Agent` object is one agent version), in a daemon thread of its own, never on
  the event loop; every run then calls ``run(env)`` (or ``Cls(env).run()``) from that one
  namespace and awaits the coroutine on the calling thread, i.e. the event loop. A sync
  agent's module *is* its body: :meth:`Agent.run_sync` executes it per run, in the run's
  own thread.
- Loading does file I/O and compilation; it is meant for start-up (or a worker thread).

Every execution gets fresh globals (an async agent's module is executed once, so its
module-level state is shared by all its runs, like an imported module's) whose
``__builtins__`` is a private copy of the builtins with a scoped ``__import__``:
``nearai``, ``nearai.agents`` and ``nearai.agents.environment`` resolve to shim modules
whose ``Environment`` is agentstream's own. Nothing is installed and ``sys.modules`` is
never touched, so a real ``nearai`` package stays intact for other code.
"""

from __future__ import annotations

import ast
import asyncio
import builtins
import concurrent.futures
import contextvars
import copy
import difflib
import inspect
import json
import logging
import re
import threading
import types
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .errors import AgentLoadError, NotFound

__all__ = [
    "Agent",
    "AgentCatalog",
    "AgentDetails",
    "AgentMetadata",
    "AgentSettings",
    "ModelDefaults",
    "Style",
    "Welcome",
    "bundled_examples_dir",
    "discover_agents",
    "load_agent",
]

logger = logging.getLogger(__name__)

Style = Literal["sync", "async"]

AGENT_FILE = "agent.py"
METADATA_FILE = "metadata.json"

# -- metadata.json ---------------------------------------------------------------------


class ModelDefaults(BaseModel):
    model_config = ConfigDict(extra="allow", protected_namespaces=())

    model: str | None = None
    model_provider: str | None = None
    model_temperature: float | None = None
    model_max_tokens: int | None = None


class Welcome(BaseModel):
    model_config = ConfigDict(extra="allow")

    title: str | None = None
    description: str | None = None


class AgentSettings(BaseModel):
    model_config = ConfigDict(extra="allow")

    show_streaming_message: bool = True
    welcome: Welcome | None = None
    defaults: ModelDefaults = Field(default_factory=ModelDefaults)


class AgentDetails(BaseModel):
    model_config = ConfigDict(extra="allow")

    display_name: str | None = None
    icon: str | None = None
    agent: AgentSettings = Field(default_factory=AgentSettings)
    capabilities: list[Any] = Field(default_factory=list)


class AgentMetadata(BaseModel):
    """The validated ``metadata.json``. Unknown fields are kept (``model_extra``)."""

    model_config = ConfigDict(extra="allow")

    name: str
    version: str = "0.0.1"
    description: str = ""
    category: str = "agent"
    tags: list[str] = Field(default_factory=list)
    details: AgentDetails = Field(default_factory=AgentDetails)
    show_entry: bool = True

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not value:
            raise ValueError("must not be empty")
        if "/" in value or any(ch.isspace() for ch in value):
            raise ValueError("must not contain whitespace or '/'")
        return value

    @field_validator("version")
    @classmethod
    def _check_version(cls, value: str) -> str:
        if not value or any(ch.isspace() for ch in value):
            raise ValueError("must be non-empty and contain no whitespace")
        return value


def _validation_message(path: Path, exc: ValidationError) -> str:
    problems = []
    for err in exc.errors(include_url=False):
        where = ".".join(str(part) for part in err["loc"])
        problems.append(f"{where}: {err['msg']}" if where else str(err["msg"]))
    return f"{path}: " + "; ".join(problems)


def _read_metadata(path: Path) -> tuple[AgentMetadata, dict[str, Any]]:
    try:
        raw = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise AgentLoadError(f"{path}: file is missing") from None
    except json.JSONDecodeError as exc:
        raise AgentLoadError(
            f"{path}: invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise AgentLoadError(f"{path}: cannot read: {exc}") from None
    if not isinstance(raw, dict):
        raise AgentLoadError(f"{path}: expected a JSON object, got {type(raw).__name__}")
    try:
        return AgentMetadata.model_validate(raw), raw
    except ValidationError as exc:
        raise AgentLoadError(_validation_message(path, exc)) from None


# -- agent.py --------------------------------------------------------------------------


def _detect_entry(tree: ast.Module, agent_py: Path) -> tuple[Style, str | None]:
    """The style and, for an async class, the class's name."""
    for node in tree.body:
        if isinstance(node, ast.AsyncFunctionDef) and node.name == "run":
            return "async", None
    classes = [
        node.name
        for node in tree.body
        if isinstance(node, ast.ClassDef)
        and any(isinstance(item, ast.AsyncFunctionDef) and item.name == "run" for item in node.body)
    ]
    if not classes:
        return "sync", None
    chosen = "Agent" if "Agent" in classes else classes[0]
    if len(classes) > 1:
        logger.warning("%s: several classes have 'async def run'; using %s", agent_py, chosen)
    return "async", chosen


def _compile_agent(agent_py: Path) -> tuple[types.CodeType, Style, str | None]:
    try:
        source = agent_py.read_bytes()
    except FileNotFoundError:
        raise AgentLoadError(f"{agent_py}: file is missing") from None
    except OSError as exc:
        raise AgentLoadError(f"{agent_py}: cannot read: {exc}") from None
    try:
        tree = ast.parse(source, filename=str(agent_py))
        code = compile(tree, str(agent_py), "exec", dont_inherit=True)
    except SyntaxError as exc:
        where = f"line {exc.lineno}" + (f", column {exc.offset}" if exc.offset else "")
        raise AgentLoadError(f"{agent_py}: {where}: SyntaxError: {exc.msg}") from None
    except ValueError as exc:  # e.g. null bytes in the source
        raise AgentLoadError(f"{agent_py}: cannot compile: {exc}") from None
    style, entry_class = _detect_entry(tree, agent_py)
    return code, style, entry_class


# -- the nearai import shim ------------------------------------------------------------

_SHIM_NAMES = ("nearai", "nearai.agents", "nearai.agents.environment")
_shim_lock = threading.Lock()
_shims: dict[str, types.ModuleType] | None = None


def _environment_class() -> type[Any]:
    """The class agents see as ``nearai.agents.environment.Environment``."""
    from .environment import Environment  # type: ignore[import-not-found,unused-ignore]

    cls: type[Any] = Environment
    return cls


def _build_shims() -> dict[str, types.ModuleType]:
    doc = "agentstream's stand-in for {}, visible only to agents."
    top, sub, env = (types.ModuleType(name, doc.format(name)) for name in _SHIM_NAMES)
    vars(top).update(__path__=[], __package__="nearai", agents=sub)  # packages, as in nearai
    vars(sub).update(__path__=[], __package__="nearai.agents", environment=env)
    vars(env).update(__package__="nearai.agents")

    def __getattr__(attr: str) -> Any:  # PEP 562: resolved at each access
        if attr == "Environment":
            return _environment_class()
        raise AttributeError(f"module 'nearai.agents.environment' has no attribute {attr!r}")

    vars(env).update(__getattr__=__getattr__, __all__=["Environment"])
    return dict(zip(_SHIM_NAMES, (top, sub, env), strict=True))


def _shim_modules() -> dict[str, types.ModuleType]:
    global _shims
    shims = _shims
    if shims is None:
        with _shim_lock:
            if _shims is None:
                _shims = _build_shims()
            shims = _shims
    return shims


def _scoped_import(
    name: str,
    globals: Mapping[str, object] | None = None,
    locals: Mapping[str, object] | None = None,
    fromlist: Sequence[str] | None = (),
    level: int = 0,
) -> types.ModuleType:
    """``__import__`` for agents: the nearai names get shims, everything else the real one."""
    if level == 0 and name in _SHIM_NAMES:
        shims = _shim_modules()
        return shims[name] if fromlist else shims["nearai"]
    try:
        return builtins.__import__(name, globals, locals, fromlist or (), level)
    except ModuleNotFoundError as exc:
        if level == 0 and name.startswith("nearai.") and exc.name in ("nearai", name):
            raise ModuleNotFoundError(
                f"No module named {name!r}: agentstream provides only "
                "nearai.agents.environment (Environment) to agents",
                name=name,
            ) from None
        raise


def _agent_builtins() -> dict[str, Any]:
    scoped = dict(vars(builtins))
    scoped["__import__"] = _scoped_import
    return scoped


# -- agents ----------------------------------------------------------------------------
# -- agents ----------------------------------------------------------------------------


class _Module:
    """An async agent's module namespace: executed once, off the event loop, shared by
    every run of the agent (see :meth:`Agent.run_async`).

    Concurrency: the first run to ask starts the execution in a daemon thread; runs that
    ask meanwhile await the same :class:`concurrent.futures.Future` (loop-agnostic, unlike
    an :class:`asyncio.Lock`: one loaded agent may serve hubs on several loops). A waiting
    run that is cancelled stops waiting; the execution goes on for the others. A failed
    execution is forgotten once it has failed: the next run executes the module again
    (the failure may have been transient: a file, a network service).
    """

    __slots__ = ("_lock", "_future")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._future: concurrent.futures.Future[dict[str, Any]] | None = None

    def get(self, agent: Agent) -> concurrent.futures.Future[dict[str, Any]]:
        """The namespace, executed or being executed (starting it if need be)."""
        with self._lock:
            future = self._future
            if future is not None and not (future.done() and future.exception() is not None):
                return future
            future = concurrent.futures.Future()
            future.set_running_or_notify_cancel()  # a waiter's cancel must not cancel it
            self._future = future
        context = contextvars.copy_context()  # the first run's ids follow it (logs)
        thread = threading.Thread(
            target=context.run,
            args=(self._execute, agent, future),
            name=f"agent module {agent.id}",
            daemon=True,  # module code that never returns must not keep the process alive
        )
        thread.start()
        return future

    @staticmethod
    def _execute(agent: Agent, future: concurrent.futures.Future[dict[str, Any]]) -> None:
        scope = agent._globals(None, with_env=False)
        try:
            exec(agent.code, scope)
        except (SystemExit, KeyboardInterrupt) as exc:
            # Raised as itself on the loop it would stop it: carried as an ordinary error.
            from .runs.agent_thread import AgentExit  # runs imports this module

            future.set_exception(AgentExit(exc))
        except BaseException as exc:  # the runs awaiting it decide what it means
            future.set_exception(exc)
        else:
            future.set_result(scope)


@dataclass(frozen=True, eq=False)
class Agent:
    """One loaded agent. Immutable; run it any number of times, concurrently if it allows."""

    path: Path
    metadata: AgentMetadata
    style: Style
    code: types.CodeType = field(repr=False)
    raw_metadata: dict[str, Any] = field(repr=False)
    entry_class: str | None = None
    """For an async agent written as a class: the class to instantiate with ``env``."""
    _module: _Module = field(default_factory=_Module, init=False, repr=False)
    """An async agent's module namespace, executed once (:meth:`run_async`)."""

    name: str = field(init=False)
    version: str = field(init=False)
    id: str = field(init=False)
    display_name: str = field(init=False)
    show_streaming_message: bool = field(init=False)
    defaults: ModelDefaults = field(init=False, repr=False)

    def __post_init__(self) -> None:
        meta = self.metadata
        settings = meta.details.agent
        values = {
            "name": meta.name,
            "version": meta.version,
            "id": f"{meta.name}/{meta.version}",
            "display_name": meta.details.display_name or meta.name,
            "show_streaming_message": settings.show_streaming_message,
            "defaults": settings.defaults,
        }
        for key, value in values.items():
            object.__setattr__(self, key, value)

    @property
    def agent_py(self) -> Path:
        return self.path / AGENT_FILE

    def _globals(self, env: Any, *, with_env: bool) -> dict[str, Any]:
        scope: dict[str, Any] = {
            "__name__": "__agent__",
            "__file__": str(self.agent_py),
            "__builtins__": _agent_builtins(),
        }
        if with_env:
            scope["env"] = env
        return scope

    def run_sync(self, env: Any) -> None:
        """Execute ``agent.py`` with ``env`` in its globals, in the calling thread.

        Blocks until the module's code returns; its exceptions propagate.
        """
        if self.style != "sync":
            raise TypeError(f"{self.agent_py} is an async agent; use run_async")
        exec(self.code, self._globals(env, with_env=True))

    async def run_async(self, env: Any) -> None:
        """Call the agent's ``run(env)`` (or ``Cls(env).run()``) and await it here.

        The module's top-level code is executed once per :class:`Agent` (one agent
        version), in a daemon thread, never on the event loop: the first run starts it,
        concurrent first runs wait for that same execution, later runs reuse its
        namespace (without ``env`` in it). If the execution raises, every run waiting for
        it fails with that exception and the next run executes the module again.
        Cancelling this coroutine while the module executes stops only this wait.
        Exceptions of ``run`` propagate.
        """
        if self.style != "async":
            raise TypeError(f"{self.agent_py} is a sync agent; use run_sync")
        scope = await asyncio.wrap_future(self._module.get(self))
        if self.entry_class is None:
            target = scope.get("run")
            if not callable(target):
                raise TypeError(f"{self.agent_py}: no top-level run(env) after executing it")
            result = target(env)
        else:
            cls = scope.get(self.entry_class)
            if not callable(cls):
                raise TypeError(f"{self.agent_py}: class {self.entry_class} is gone")
            result = cls(env).run()
        if not inspect.isawaitable(result):
            raise TypeError(f"{self.agent_py}: run did not return an awaitable")
        await result

    def to_dict(self) -> dict[str, Any]:
        """The agent as listed by ``GET /v1/agents``."""
        welcome = self.metadata.details.agent.welcome or Welcome()
        return {
            "id": self.id,
            "object": "assistant",
            "name": self.name,
            "version": self.version,
            "description": self.metadata.description,
            "metadata": copy.deepcopy(self.raw_metadata),
            "display_name": self.display_name,
            "welcome": welcome.model_dump(),
            "show_streaming_message": self.show_streaming_message,
        }


def load_agent(path: Path) -> Agent:
    """Load the agent in folder ``path``; :class:`AgentLoadError` names the file at fault."""
    path = Path(path)
    if not path.exists():
        raise AgentLoadError(f"{path}: agent folder does not exist")
    if not path.is_dir():
        raise AgentLoadError(f"{path}: not a folder (an agent is a folder with {AGENT_FILE})")
    metadata, raw = _read_metadata(path / METADATA_FILE)
    code, style, entry_class = _compile_agent(path / AGENT_FILE)
    agent = Agent(path, metadata, style, code, raw, entry_class)
    logger.debug("loaded agent %s (%s) from %s", agent.id, style, path)
    return agent


def _is_agent_folder(path: Path) -> bool:
    return (path / AGENT_FILE).exists() or (path / METADATA_FILE).exists()


def _check_unique(agents: Iterable[Agent]) -> None:
    seen: dict[str, Agent] = {}
    for agent in agents:
        other = seen.setdefault(agent.id, agent)
        if other is not agent:
            raise AgentLoadError(
                f"two agents are named {agent.id!r}: {other.path} and {agent.path}",
                param="name",
            )


def discover_agents(paths: Sequence[Path]) -> list[Agent]:
    """Load every agent under ``paths``: each an agent folder or a folder of agent folders.

    Sub-folders holding neither ``agent.py`` nor ``metadata.json`` are skipped. A path that
    is neither kind, or two agents with the same ``name/version``, raise :class:`AgentLoadError`.
    """
    agents: list[Agent] = []
    loaded: set[Path] = set()
    for given in paths:
        root = Path(given)
        if not root.is_dir():
            raise AgentLoadError(f"{root}: agent path does not exist or is not a folder")
        if _is_agent_folder(root):
            folders = [root]
        else:
            folders = sorted(p for p in root.iterdir() if p.is_dir() and _is_agent_folder(p))
            if not folders:
                raise AgentLoadError(
                    f"{root}: neither an agent folder (no {AGENT_FILE}) "
                    "nor a folder of agent folders"
                )
        for folder in folders:
            real = folder.resolve()
            if real in loaded:
                logger.debug("%s: already loaded, skipped", folder)
                continue
            loaded.add(real)
            agents.append(load_agent(folder))
    _check_unique(agents)
    logger.info("loaded %d agent(s) from %s", len(agents), ", ".join(map(str, paths)))
    return agents


# -- the catalog -----------------------------------------------------------------------

_VERSION_RE = re.compile(
    r"v?(?P<release>\d+(?:\.\d+)*)"
    r"(?:[-_.]?(?P<pre_l>a|b|c|rc|alpha|beta|pre|preview)[-_.]?(?P<pre_n>\d*))?"
    r"(?:[-_.]?(?:post|rev|r)[-_.]?(?P<post_n>\d*))?"
    r"(?:[-_.]?dev[-_.]?(?P<dev_n>\d*))?",
    re.IGNORECASE,
)
_PRE_RANK = {"a": 0, "alpha": 0, "b": 1, "beta": 1, "c": 2, "rc": 2, "pre": 2, "preview": 2}

VersionKey = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[int, ...]]


def _version_key(version: str) -> VersionKey | None:
    """A PEP 440-like ordering key (release, pre, post, dev), or None if it does not parse."""
    m = _VERSION_RE.fullmatch(version.strip())
    if m is None:
        return None
    release = tuple(int(part) for part in m["release"].split("."))
    while len(release) > 1 and release[-1] == 0:
        release = release[:-1]
    post_n, dev_n = m["post_n"], m["dev_n"]
    has_post = m["post_n"] is not None
    has_dev = m["dev_n"] is not None
    if m["pre_l"] is not None:
        pre: tuple[int, ...] = (1, _PRE_RANK[m["pre_l"].lower()], int(m["pre_n"] or 0))
    elif has_dev and not has_post:
        pre = (0,)  # 1.0.dev1 sorts before 1.0a1
    else:
        pre = (2,)
    post = (1, int(post_n or 0)) if has_post else (0,)
    dev = (1, int(dev_n or 0)) if has_dev else (2,)
    return release, pre, post, dev


def _by_version(agents: Iterable[Agent]) -> list[Agent]:
    """``agents`` (of one name) oldest first; string order if any version does not parse."""
    items = list(agents)
    keys = [_version_key(agent.version) for agent in items]
    if all(key is not None for key in keys):
        order = sorted(zip(keys, items, strict=True), key=lambda pair: pair[0] or ())
        return [agent for _key, agent in order]
    return sorted(items, key=lambda agent: agent.version)


class AgentCatalog:
    """The agents a hub can run, looked up by ``name`` (latest version) or ``name/version``."""

    def __init__(self, agents: Iterable[Agent]) -> None:
        items = builtins.list(agents)
        _check_unique(items)
        by_name: dict[str, builtins.list[Agent]] = {}
        for agent in items:
            by_name.setdefault(agent.name, []).append(agent)
        self._versions = {name: _by_version(group) for name, group in sorted(by_name.items())}
        self._by_id = {agent.id: agent for agent in items}

    def get(self, assistant_id: str) -> Agent:
        """The agent ``name/version``, or the latest version of ``name``; else :class:`NotFound`
        naming the versions of ``name``, or the closest names, or the agents there are."""
        name, slash, _version = assistant_id.partition("/")
        versions = self._versions.get(name)
        if versions and not slash:
            return versions[-1]
        agent = self._by_id.get(assistant_id) if slash else None
        if agent is not None:
            return agent
        if versions:
            known = f" (versions: {', '.join(a.version for a in versions)})"
        else:
            close = difflib.get_close_matches(name, self._versions, n=3, cutoff=0.6)
            if close:
                known = f"; did you mean {' or '.join(repr(n) for n in close)}?"
            else:
                names = builtins.list(self._versions)
                more = f", … ({len(names)} in all)" if len(names) > 10 else ""
                known = f"; agents: {', '.join(names[:10]) or 'none'}{more}"
        raise NotFound(f"No agent named '{assistant_id}'{known}", param="assistant_id")

    def list(self) -> builtins.list[Agent]:
        """Every agent, by name, oldest version first."""
        return [agent for group in self._versions.values() for agent in group]

    def __len__(self) -> int:
        return len(self._by_id)


def bundled_examples_dir() -> Path:
    """The example agents shipped with the package (``agent_runtime/examples``)."""
    return Path(__file__).resolve().parent / "examples"
