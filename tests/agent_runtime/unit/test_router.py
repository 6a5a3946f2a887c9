"""ModelRouter: which provider serves a model name. Offline: providers are never called."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from agent_runtime.errors import InvalidRequest, ProviderError
from agent_runtime.models.openai_compat import OpenAICompatProvider
from agent_runtime.models.router import ModelRouter
from agent_runtime.models.simulated import SimulatedConfig, SimulatedModel

KEYS = {
    "FIREWORKS_API_KEY": "fw",
    "OPENAI_API_KEY": "oa",
    "TOGETHER_API_KEY": "tg",
    "GROQ_API_KEY": "gq",
}


@pytest.fixture
async def router() -> AsyncIterator[ModelRouter]:
    models = ModelRouter(env=KEYS)
    yield models
    await models.aclose()


def test_default_is_simulated(router: ModelRouter) -> None:
    provider, model = router.resolve(None)
    assert isinstance(provider, SimulatedModel)
    assert model == "simulated"
    assert router.resolve("")[1] == "simulated"


def test_simulated_specs_are_cached_per_configuration(router: ModelRouter) -> None:
    a, name = router.resolve("simulated:tokens=12,rate=0")
    assert name == "simulated:tokens=12,rate=0"
    assert isinstance(a, SimulatedModel)
    assert a.config == SimulatedConfig(tokens=12, rate=0)
    assert router.resolve("simulated:tokens=12,rate=0")[0] is a
    assert router.resolve("simulated:rate=0,tokens=12")[0] is a  # same settings
    assert router.resolve("simulated:tokens=13,rate=0")[0] is not a
    assert router.resolve("simulated")[0] is router.resolve(None)[0]


def test_simulated_cache_is_bounded(router: ModelRouter) -> None:
    first = router.resolve("simulated:seed=0")[0]
    for seed in range(1, 400):
        router.resolve(f"simulated:seed={seed}")
    assert len(router._simulated) <= 128
    assert router.resolve("simulated:seed=0")[0] is not first


def test_bad_simulated_spec(router: ModelRouter) -> None:
    with pytest.raises(InvalidRequest, match="'speed'") as info:
        router.resolve("simulated:speed=3")
    assert info.value.param == "model"


def test_default_provider_and_fireworks_paths(router: ModelRouter) -> None:
    provider, model = router.resolve("llama-v3p3-70b-instruct")
    assert isinstance(provider, OpenAICompatProvider)
    assert provider.name == "fireworks"
    assert model == "accounts/fireworks/models/llama-v3p3-70b-instruct"
    assert router.resolve("accounts/x/models/y")[1] == "accounts/x/models/y"


def test_explicit_provider_syntax(router: ModelRouter) -> None:
    provider, model = router.resolve("together::meta-llama/Llama-3.3-70B-Instruct-Turbo")
    assert provider.name == "together"
    assert model == "meta-llama/Llama-3.3-70B-Instruct-Turbo"
    provider, model = router.resolve("Groq::llama-3.3-70b-versatile", provider="openai")
    assert provider.name == "groq"  # the explicit prefix beats the agent's provider
    assert model == "llama-3.3-70b-versatile"


def test_provider_argument(router: ModelRouter) -> None:
    provider, model = router.resolve("gpt-4o-mini", provider="openai")
    assert provider.name == "openai"
    assert model == "gpt-4o-mini"
    provider, model = router.resolve("anything", provider="simulated")
    assert isinstance(provider, SimulatedModel)
    assert model == "simulated"
    provider, model = router.resolve("simulated::simulated:tokens=3")
    assert isinstance(provider, SimulatedModel)
    assert provider.config.tokens == 3


def test_custom_default_provider() -> None:
    router = ModelRouter(default_model="llama-3.3-70b-versatile", default_provider="groq", env=KEYS)
    provider, model = router.resolve(None)
    assert provider.name == "groq"
    assert model == "llama-3.3-70b-versatile"


def test_force_model_overrides_everything() -> None:
    router = ModelRouter(force_model="simulated:tokens=3", env={})
    for model, provider in [
        ("llama-v3p3-70b-instruct", None),
        ("together::x", None),
        ("gpt-4o", "openai"),
        (None, "groq"),
    ]:
        chosen, name = router.resolve(model, provider)
        assert isinstance(chosen, SimulatedModel)
        assert name == "simulated:tokens=3"
    forced = ModelRouter(force_model="groq::llama-3.3-70b-versatile", env=KEYS)
    chosen, name = forced.resolve("simulated", "fireworks")
    assert chosen.name == "groq"
    assert name == "llama-3.3-70b-versatile"


def test_unknown_provider_lists_known_ones(router: ModelRouter) -> None:
    for model, provider in [("nope::m", None), ("m", "nope")]:
        with pytest.raises(InvalidRequest) as info:
            router.resolve(model, provider)
        message = info.value.message
        assert "'nope'" in message
        for known in ("simulated", "fireworks", "openai", "together", "groq", "local"):
            assert known in message
    with pytest.raises(InvalidRequest, match="'nope'"):
        ModelRouter(default_provider="nope")


def test_provider_without_model(router: ModelRouter) -> None:
    with pytest.raises(InvalidRequest, match="no model"):
        router.resolve("fireworks::")


def test_missing_key_names_the_variable() -> None:
    router = ModelRouter(env={})
    with pytest.raises(ProviderError, match="set FIREWORKS_API_KEY"):
        router.resolve("llama-v3p3-70b-instruct")
    with pytest.raises(ProviderError, match="set GROQ_API_KEY"):
        router.resolve("groq::x")
    provider, _ = router.resolve("local::my-model")  # the local server needs no key
    assert provider.name == "local"


async def test_providers_are_lazy_shared_and_closed(router: ModelRouter) -> None:
    assert router._providers == {}
    first = router.resolve("groq::a")[0]
    assert list(router._providers) == ["groq"]
    assert router.resolve("b", provider="groq")[0] is first
    assert isinstance(first, OpenAICompatProvider)
    await router.aclose()
    assert first._client.is_closed()
    assert router._providers == {}
    await router.aclose()  # twice is harmless


def test_list_models_without_keys() -> None:
    models = ModelRouter(env={}).list_models()
    simulated = {"id": "simulated", "object": "model", "created": 0, "owned_by": "agentstream"}
    assert models == [simulated]


def test_list_models_with_keys() -> None:
    env = {"FIREWORKS_API_KEY": "fw", "AGENTSTREAM_LOCAL_BASE_URL": "http://127.0.0.1:9/v1"}
    router = ModelRouter(default_model="llama-v3p3-70b-instruct", env=env)
    ids = [m["id"] for m in router.list_models()]
    assert ids == ["simulated", "llama-v3p3-70b-instruct", "fireworks::", "local::"]
    owners = {m["id"]: m["owned_by"] for m in router.list_models()}
    assert owners["llama-v3p3-70b-instruct"] == "fireworks"
    assert all(m["object"] == "model" for m in router.list_models())
    # A default model whose provider has no key is not offered.
    bare = ModelRouter(default_model="groq::llama-3.3-70b-versatile", env={})
    assert [m["id"] for m in bare.list_models()] == ["simulated"]
