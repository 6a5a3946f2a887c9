"""Agent folders: loading, metadata validation, style detection, running, the nearai shim."""

from __future__ import annotations

import builtins
import importlib
import importlib.util
import json
import sys
import textwrap
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from agent_runtime import agents
from agent_runtime.agents import (
    Agent,
    AgentCatalog,
    AgentMetadata,
    bundled_examples_dir,
    discover_agents,
    load_agent,
)
from agent_runtime.api.errors import error_kind
from agent_runtime.errors import AgentLoadError, NotFound

SYNC_AGENT = """\
from nearai.agents.environment import Environment

class Agent:
    def __init__(self, env: Environment):
        self.env = env

    def run(self):
        result = self.env.completion([{"role": "user", "content": "hi"}], stream=True)
        self.env.add_reply(result)

if globals().get('env', None):
    agent = Agent(globals().get('env'))
    agent.run()
"""

ASYNC_FUNCTION_AGENT = """\
import threading

from nearai.agents.environment import Environment

if globals().get('env', None):
    raise RuntimeError("the guard ran in an async agent")

async def run(env: Environment) -> None:
    env.thread = threading.get_ident()
    reply = await env.acompletion([{"role": "user", "content": "hi"}], stream=True)
    await env.aadd_reply(reply)
"""

ASYNC_CLASS_AGENT = """\
from nearai.agents.environment import Environment

class Helper:
    def run(self):
        pass

class Agent:
    def __init__(self, env: Environment):
        self.env = env

    async def run(self):
        await self.env.aadd_reply("from a class")
"""


def make_agent(
    root: Path,
    folder: str = "agent",
    *,
    code: str = SYNC_AGENT,
    metadata: dict[str, Any] | str | None = None,
) -> Path:
    path = root / folder
    path.mkdir(parents=True)
    (path / "agent.py").write_text(code)
    if metadata is None:
        metadata = {"name": folder}
    text = metadata if isinstance(metadata, str) else json.dumps(metadata)
    (path / "metadata.json").write_text(text)
    return path


class StandInEnvironment:
    """Stands in for agent_runtime.environment.Environment where that is not importable."""


class RecordingEnv:
    """A stand-in env that records what the agent does."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.thread: int | None = None

    def list_messages(self) -> list[dict[str, Any]]:
        self.calls.append(("list_messages", None))
        return [{"role": "user", "content": "What is virtue?"}]

    def completion(self, messages: list[dict[str, Any]], stream: bool = False) -> str:
        self.calls.append(("completion", (messages, stream)))
        return f"reply {len(self.calls)}"

    def add_reply(self, message: str) -> None:
        self.calls.append(("add_reply", message))

    async def alist_messages(self) -> list[dict[str, Any]]:
        return self.list_messages()

    async def acompletion(self, messages: list[dict[str, Any]], stream: bool = False) -> Any:
        self.calls.append(("acompletion", (messages, stream)))
        return FakeStream(["Hel", "lo"])

    async def aadd_reply(self, message: Any) -> None:
        self.calls.append(("aadd_reply", message))


class FakeStream:
    def __init__(self, chunks: list[str]) -> None:
        self.chunks = chunks

    async def __aiter__(self) -> AsyncIterator[str]:
        for chunk in self.chunks:
            yield chunk


@pytest.fixture
def environment_class(monkeypatch: pytest.MonkeyPatch) -> type[Any]:
    """The class the shim must hand out as Environment."""
    if importlib.util.find_spec("agent_runtime.environment") is None:
        monkeypatch.setattr(agents, "_environment_class", lambda: StandInEnvironment)
        return StandInEnvironment
    from agent_runtime.environment import Environment

    return Environment


@pytest.fixture(autouse=True)
def no_nearai_leak() -> Iterator[None]:
    """Every test must leave sys.modules without any nearai module it did not find there."""
    before = {name for name in sys.modules if name.split(".")[0] == "nearai"}
    yield
    leaked = {name for name in sys.modules if name.split(".")[0] == "nearai"} - before
    for name in leaked:
        del sys.modules[name]


# -- metadata ----------------------------------------------------------------------------


def test_metadata_defaults_and_display_name_fallback(tmp_path: Path) -> None:
    agent = load_agent(make_agent(tmp_path, "plain", metadata={"name": "plain"}))
    assert (agent.name, agent.version, agent.id) == ("plain", "0.0.1", "plain/0.0.1")
    assert agent.display_name == "plain"
    assert agent.show_streaming_message is True
    assert agent.defaults.model is None
    assert agent.metadata.category == "agent"
    assert agent.metadata.tags == []
    assert agent.metadata.show_entry is True


def test_extra_fields_are_kept(tmp_path: Path) -> None:
    meta = {"name": "x", "custom": {"a": 1}, "details": {"agent": {"framework": "minimal"}}}
    agent = load_agent(make_agent(tmp_path, "x", metadata=meta))
    assert agent.metadata.model_extra == {"custom": {"a": 1}}
    assert agent.metadata.details.agent.model_extra == {"framework": "minimal"}
    assert agent.to_dict()["metadata"] == meta


def test_invalid_field_names_file_and_field(tmp_path: Path) -> None:
    meta = {"name": "x", "details": {"agent": {"show_streaming_message": "maybe"}}}
    path = make_agent(tmp_path, "x", metadata=meta)
    with pytest.raises(AgentLoadError) as info:
        load_agent(path)
    assert info.value.message == (
        f"{path / 'metadata.json'}: details.agent.show_streaming_message: "
        "Input should be a valid boolean, unable to interpret input"
    )


@pytest.mark.parametrize(
    ("meta", "field"),
    [
        ({}, "name: Field required"),
        ({"name": ""}, "name: Value error, must not be empty"),
        ({"name": "a b"}, "name: Value error, must not contain whitespace or '/'"),
        ({"name": "a/b"}, "name: Value error, must not contain whitespace or '/'"),
        ({"name": "a", "version": 3}, "version: Input should be a valid string"),
        ({"name": "a", "tags": ["ok", 1]}, "tags.1: Input should be a valid string"),
        (
            {"name": "a", "details": {"agent": {"defaults": {"model_max_tokens": "lots"}}}},
            "details.agent.defaults.model_max_tokens: Input should be a valid integer",
        ),
    ],
)
def test_invalid_metadata(tmp_path: Path, meta: dict[str, Any], field: str) -> None:
    path = make_agent(tmp_path, metadata=meta)
    with pytest.raises(AgentLoadError, match=r"metadata\.json: ") as info:
        load_agent(path)
    assert str(path / "metadata.json") in info.value.message
    assert field in info.value.message


def test_metadata_not_an_object(tmp_path: Path) -> None:
    path = make_agent(tmp_path, metadata="[1, 2]")
    with pytest.raises(AgentLoadError, match="expected a JSON object, got list"):
        load_agent(path)


def test_bad_json_names_line_and_column(tmp_path: Path) -> None:
    path = make_agent(tmp_path, metadata='{\n  "name": "x",\n  oops\n}')
    with pytest.raises(AgentLoadError) as info:
        load_agent(path)
    message = info.value.message
    assert message.startswith(f"{path / 'metadata.json'}: invalid JSON at line 3, column 3")


@pytest.mark.parametrize("missing", ["agent.py", "metadata.json"])
def test_missing_file(tmp_path: Path, missing: str) -> None:
    path = make_agent(tmp_path)
    (path / missing).unlink()
    with pytest.raises(AgentLoadError, match="file is missing") as info:
        load_agent(path)
    assert str(path / missing) in info.value.message


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(AgentLoadError, match="does not exist"):
        load_agent(tmp_path / "nowhere")
    (tmp_path / "file").write_text("")
    with pytest.raises(AgentLoadError, match="not a folder"):
        load_agent(tmp_path / "file")


def test_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = make_agent(tmp_path, code="x = 1\n\ndef broken(:\n    pass\n")
    with pytest.raises(AgentLoadError) as info:
        load_agent(path)
    assert info.value.message.startswith(f"{path / 'agent.py'}: line 3")
    assert "SyntaxError" in info.value.message


# -- style detection -------------------------------------------------------------------


def test_style_sync_description(tmp_path: Path) -> None:
    agent = load_agent(make_agent(tmp_path))
    assert agent.style == "sync"
    assert agent.entry_class is None


def test_style_async_function(tmp_path: Path) -> None:
    agent = load_agent(make_agent(tmp_path, code=ASYNC_FUNCTION_AGENT))
    assert (agent.style, agent.entry_class) == ("async", None)


def test_style_async_class(tmp_path: Path) -> None:
    agent = load_agent(make_agent(tmp_path, code=ASYNC_CLASS_AGENT))
    assert (agent.style, agent.entry_class) == ("async", "Agent")


def test_style_nested_async_run_is_not_detected(tmp_path: Path) -> None:
    code = "def outer():\n    async def run(env):\n        pass\n"
    assert load_agent(make_agent(tmp_path, code=code)).style == "sync"


# -- running ---------------------------------------------------------------------------


def test_run_sync_executes_with_env_in_globals(tmp_path: Path) -> None:
    agent = load_agent(make_agent(tmp_path))
    env = RecordingEnv()
    agent.run_sync(env)
    assert [name for name, _ in env.calls] == ["completion", "add_reply"]
    assert env.calls[1] == ("add_reply", "reply 1")


def test_run_sync_globals_are_fresh(tmp_path: Path) -> None:
    code = textwrap.dedent(
        """\
        counter = globals().get("counter", 0) + 1
        env.seen = (counter, __name__, __file__, sorted(k for k in globals() if k != "counter"))
        """
    )
    agent = load_agent(make_agent(tmp_path, code=code))
    env = RecordingEnv()
    agent.run_sync(env)
    agent.run_sync(env)
    counter, name, file, keys = env.seen  # type: ignore[attr-defined]
    assert (counter, name, file) == (1, "__agent__", str(agent.path / "agent.py"))
    assert keys == ["__builtins__", "__file__", "__name__", "env"]


def test_run_sync_guard_skips_body_without_env(tmp_path: Path) -> None:
    agent = load_agent(make_agent(tmp_path))
    agent.run_sync(None)  # the guard sees no env: nothing happens


def test_run_sync_runs_in_calling_thread_and_propagates(tmp_path: Path) -> None:
    code = "import threading\nenv.thread = threading.get_ident()\nraise ValueError('boom')\n"
    agent = load_agent(make_agent(tmp_path, code=code))
    env = RecordingEnv()
    with pytest.raises(ValueError, match="boom") as info:
        agent.run_sync(env)
    assert env.thread == threading.get_ident()
    assert info.traceback[-1].path == agent.path / "agent.py"


def test_agent_cannot_touch_real_builtins(tmp_path: Path) -> None:
    code = "__builtins__['len'] = None\n__builtins__['__import__'] = None\n"
    agent = load_agent(make_agent(tmp_path, code=code))
    real_import = builtins.__import__
    agent.run_sync(RecordingEnv())
    assert builtins.len is not None
    assert builtins.__import__ is real_import


def test_agent_imports_other_modules_normally(tmp_path: Path) -> None:
    code = "import json\nfrom collections import OrderedDict\nenv.dumped = json.dumps([1])\n"
    agent = load_agent(make_agent(tmp_path, code=code))
    env = RecordingEnv()
    agent.run_sync(env)
    assert env.dumped == "[1]"  # type: ignore[attr-defined]


def test_agent_code_does_not_inherit_the_loaders_future_flags(tmp_path: Path) -> None:
    code = "def f(x: int) -> None:\n    pass\n\nenv.annotations = f.__annotations__\n"
    agent = load_agent(make_agent(tmp_path, code=code))
    env = RecordingEnv()
    agent.run_sync(env)
    assert env.annotations == {"x": int, "return": None}  # type: ignore[attr-defined]


async def test_wrong_runner_for_style(tmp_path: Path) -> None:
    sync_agent = load_agent(make_agent(tmp_path, "s"))
    async_agent = load_agent(make_agent(tmp_path, "a", code=ASYNC_FUNCTION_AGENT))
    with pytest.raises(TypeError, match="use run_sync"):
        await sync_agent.run_async(RecordingEnv())
    with pytest.raises(TypeError, match="use run_async"):
        async_agent.run_sync(RecordingEnv())


async def test_run_async_awaits_run_on_the_calling_thread(tmp_path: Path) -> None:
    agent = load_agent(make_agent(tmp_path, code=ASYNC_FUNCTION_AGENT))
    env = RecordingEnv()
    await agent.run_async(env)
    assert env.thread == threading.get_ident()
    assert [name for name, _ in env.calls] == ["acompletion", "aadd_reply"]


async def test_run_async_class(tmp_path: Path) -> None:
    agent = load_agent(make_agent(tmp_path, code=ASYNC_CLASS_AGENT))
    env = RecordingEnv()
    await agent.run_async(env)
    assert env.calls == [("aadd_reply", "from a class")]


async def test_run_async_propagates(tmp_path: Path) -> None:
    code = "async def run(env):\n    raise KeyError('nope')\n"
    agent = load_agent(make_agent(tmp_path, code=code))
    with pytest.raises(KeyError, match="nope"):
        await agent.run_async(RecordingEnv())


# -- the nearai shim -------------------------------------------------------------------

SHIM_PROBE = """\
from nearai.agents.environment import Environment as E1
import nearai
from nearai.agents import environment
import nearai.agents.environment as e
from nearai.agents.environment import *

def later():
    from nearai.agents.environment import Environment
    return Environment

env.found = [E1, nearai.agents.environment.Environment, environment.Environment,
             e.Environment, Environment, later()]
"""


def test_shim_resolves_all_import_forms(tmp_path: Path, environment_class: type[Any]) -> None:
    agent = load_agent(make_agent(tmp_path, code=SHIM_PROBE))
    env = RecordingEnv()
    agent.run_sync(env)
    assert env.found == [environment_class] * 6  # type: ignore[attr-defined]
    assert "nearai" not in sys.modules
    assert not any(name.startswith("nearai.") for name in sys.modules)


def test_shim_unknown_attribute_and_submodule(tmp_path: Path, environment_class: type[Any]) -> None:
    agent = load_agent(make_agent(tmp_path, code="from nearai.agents.environment import Nope\n"))
    with pytest.raises(ImportError, match="Nope"):
        agent.run_sync(RecordingEnv())
    agent = load_agent(make_agent(tmp_path, "b", code="import nearai.shared.client_config\n"))
    if importlib.util.find_spec("nearai") is None:
        with pytest.raises(ModuleNotFoundError, match=r"provides only nearai\.agents\.environment"):
            agent.run_sync(RecordingEnv())


async def test_shim_in_async_agent(tmp_path: Path, environment_class: type[Any]) -> None:
    code = (
        "import nearai.agents.environment as e\n\n"
        "async def run(env):\n    env.found = e.Environment\n"
    )
    agent = load_agent(make_agent(tmp_path, code=code))
    env = RecordingEnv()
    await agent.run_async(env)
    assert env.found is environment_class  # type: ignore[attr-defined]
    assert "nearai" not in sys.modules


def test_real_nearai_package_is_undisturbed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, environment_class: type[Any]
) -> None:
    site = tmp_path / "site"
    pkg = site / "nearai" / "agents"
    pkg.mkdir(parents=True)
    (site / "nearai" / "__init__.py").write_text("REAL = True\n")
    (pkg / "__init__.py").write_text("")
    (pkg / "environment.py").write_text("class Environment:\n    real = True\n")
    monkeypatch.syspath_prepend(str(site))

    agent = load_agent(make_agent(tmp_path, code=SHIM_PROBE))
    env = RecordingEnv()
    agent.run_sync(env)
    assert env.found == [environment_class] * 6  # type: ignore[attr-defined]
    assert "nearai" not in sys.modules

    real = importlib.import_module("nearai.agents.environment")
    assert real.Environment.real is True
    assert sys.modules["nearai"].REAL is True

    agent.run_sync(env)  # the agent still gets the shim while the real one is imported
    assert env.found == [environment_class] * 6  # type: ignore[attr-defined]
    assert importlib.import_module("nearai.agents.environment") is real


# -- discovery and the catalog ---------------------------------------------------------


def test_discover_folder_of_folders_and_single_folder(tmp_path: Path) -> None:
    root = tmp_path / "agents"
    make_agent(root, "b-agent")
    make_agent(root, "a-agent", code=ASYNC_FUNCTION_AGENT)
    (root / "not-an-agent").mkdir()
    (root / "README.md").write_text("hi")
    single = make_agent(tmp_path, "single")
    found = discover_agents([root, single])
    assert [agent.name for agent in found] == ["a-agent", "b-agent", "single"]
    assert [agent.style for agent in found] == ["async", "sync", "sync"]


def test_discover_same_folder_twice_loads_once(tmp_path: Path) -> None:
    single = make_agent(tmp_path, "single")
    assert len(discover_agents([single, tmp_path])) == 1


def test_discover_rejects_other_paths(tmp_path: Path) -> None:
    with pytest.raises(AgentLoadError, match="does not exist"):
        discover_agents([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(AgentLoadError, match="neither an agent folder"):
        discover_agents([tmp_path / "empty"])


def test_discover_reports_broken_subfolder(tmp_path: Path) -> None:
    broken = tmp_path / "agents" / "broken"
    broken.mkdir(parents=True)
    (broken / "metadata.json").write_text('{"name": "broken"}')
    with pytest.raises(AgentLoadError, match=r"agent\.py: file is missing"):
        discover_agents([tmp_path / "agents"])


def test_discover_duplicates_name_both_folders(tmp_path: Path) -> None:
    one = make_agent(tmp_path / "one", "x", metadata={"name": "same", "version": "1"})
    two = make_agent(tmp_path / "two", "x", metadata={"name": "same", "version": "1"})
    with pytest.raises(AgentLoadError) as info:
        discover_agents([one, two])
    assert str(one) in info.value.message and str(two) in info.value.message
    assert "'same/1'" in info.value.message


def versions_catalog(tmp_path: Path, *versions: str) -> AgentCatalog:
    return AgentCatalog(
        load_agent(make_agent(tmp_path, f"v{i}", metadata={"name": "bot", "version": version}))
        for i, version in enumerate(versions)
    )


def test_catalog_lookup(tmp_path: Path) -> None:
    catalog = versions_catalog(tmp_path, "0.0.9", "0.0.10", "0.0.2")
    assert len(catalog) == 3
    assert catalog.get("bot").version == "0.0.10"
    assert catalog.get("bot/0.0.2").version == "0.0.2"
    assert [agent.version for agent in catalog.list()] == ["0.0.2", "0.0.9", "0.0.10"]


@pytest.mark.parametrize(
    ("versions", "latest"),
    [
        (("1.0rc1", "1.0", "1.0.dev3", "1.0a2"), "1.0"),
        (("1.0", "1.0.post1", "1.0.1.dev1"), "1.0.1.dev1"),
        (("2", "10", "1.9.9"), "10"),
        (("1.0.0", "1.0.1b1"), "1.0.1b1"),
        (("beta", "alpha", "1.0"), "beta"),  # not all parse: string order
    ],
)
def test_catalog_latest_version(tmp_path: Path, versions: tuple[str, ...], latest: str) -> None:
    assert versions_catalog(tmp_path, *versions).get("bot").version == latest


def test_version_key_ordering() -> None:
    ordered = ["1.0.dev1", "1.0a1.dev1", "1.0a1", "1.0a1.post1", "1.0rc1", "1.0", "1.0.post1.dev1"]
    ordered += ["1.0.post1", "1.0.1"]
    keys = [agents._version_key(v) for v in ordered]
    assert keys == sorted(keys)  # type: ignore[type-var]
    assert agents._version_key("1.0") == agents._version_key("1.0.0")


def test_catalog_unknown(tmp_path: Path) -> None:
    catalog = versions_catalog(tmp_path, "1.0")
    for unknown in ("nobody", "nobody/1.0", "bot/2.0", ""):
        with pytest.raises(NotFound) as info:
            catalog.get(unknown)
        assert info.value.message.startswith(f"No agent named '{unknown}'")
        assert info.value.param == "assistant_id"
        assert error_kind(info.value).status == 404


def test_catalog_rejects_duplicates(tmp_path: Path) -> None:
    agent = load_agent(make_agent(tmp_path))
    other = load_agent(make_agent(tmp_path, "copy", metadata={"name": "agent"}))
    with pytest.raises(AgentLoadError, match="two agents are named"):
        AgentCatalog([agent, other])


# -- to_dict and the bundled examples --------------------------------------------------


def test_bundled_examples(environment_class: type[Any]) -> None:
    root = bundled_examples_dir()
    assert root == Path(agents.__file__).parent / "examples"
    catalog = AgentCatalog(discover_agents([root]))
    streaming = catalog.get("streaming-example")
    assert (streaming.id, streaming.style) == ("streaming-example/0.0.3", "sync")
    assert streaming.display_name == "Streaming Example"
    assert streaming.defaults.model == "llama-v3p3-70b-instruct"
    assert streaming.defaults.model_max_tokens == 4000
    assert streaming.defaults.model_provider == "fireworks"
    example = catalog.get("async-example")
    assert (example.style, example.show_streaming_message) == ("async", True)
    assert example.metadata.details.agent.welcome is not None


def test_streaming_example_is_the_descriptions(environment_class: type[Any]) -> None:
    folder = bundled_examples_dir() / "streaming-example"
    source = (folder / "agent.py").read_text()
    lines = source.splitlines()
    assert lines[0] == "from nearai.agents.environment import Environment"
    for line in [
        "class Agent:",
        "    def __init__(self, env: Environment):",
        '        prompt = {"role": "system", "content": "respond as though you were Socrates"}',
        "        result = self.env.completion([prompt] + messages, stream=True)",
        '        prompt2 = {"role": "system", "content": "Now, respond as though you were Plato"}',
        "        result2 = self.env.completion([prompt2] + messages, stream=True)",
        "        self.env.add_reply(result2)",
        "if globals().get('env', None):",
        "    agent = Agent(globals().get('env'))",
        "    agent.run()",
    ]:
        assert line in lines
    metadata = json.loads((folder / "metadata.json").read_text())
    assert metadata["details"]["agent"]["show_streaming_message"] is True

    env = RecordingEnv()
    load_agent(folder).run_sync(env)
    assert [name for name, _ in env.calls] == [
        "list_messages",
        "completion",
        "add_reply",
        "completion",
        "add_reply",
    ]
    first, second = env.calls[1][1], env.calls[3][1]
    assert "Socrates" in first[0][0]["content"] and first[1] is True
    assert "Plato" in second[0][0]["content"] and second[1] is True


async def test_async_example_runs(environment_class: type[Any]) -> None:
    agent = load_agent(bundled_examples_dir() / "async-example")
    env = RecordingEnv()
    await agent.run_async(env)
    assert [name for name, _ in env.calls] == ["list_messages", "acompletion", "aadd_reply"]
    assert env.calls[1][1][1] is True
    assert isinstance(env.calls[2][1], FakeStream)


def test_to_dict(tmp_path: Path) -> None:
    meta = {
        "name": "shown",
        "version": "2.1",
        "description": "Says hi.",
        "details": {
            "display_name": "Shown",
            "agent": {"show_streaming_message": False, "welcome": {"title": "Hi"}},
        },
    }
    agent = load_agent(make_agent(tmp_path, metadata=meta))
    data = agent.to_dict()
    assert data == {
        "id": "shown/2.1",
        "object": "assistant",
        "name": "shown",
        "version": "2.1",
        "description": "Says hi.",
        "metadata": meta,
        "display_name": "Shown",
        "welcome": {"title": "Hi", "description": None},
        "show_streaming_message": False,
    }
    data["metadata"]["name"] = "changed"
    assert agent.to_dict()["metadata"]["name"] == "shown"
    json.dumps(data)


def test_to_dict_without_welcome(tmp_path: Path) -> None:
    agent = load_agent(make_agent(tmp_path))
    assert agent.to_dict()["welcome"] == {"title": None, "description": None}


def test_agent_is_a_dataclass_with_model(tmp_path: Path) -> None:
    agent = load_agent(make_agent(tmp_path))
    assert isinstance(agent, Agent)
    assert isinstance(agent.metadata, AgentMetadata)
    assert agent.path == tmp_path / "agent"
    assert "agent/0.0.1" in repr(agent)
