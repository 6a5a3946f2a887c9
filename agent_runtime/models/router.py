"""Which provider serves a model name.

The one home of the rule for which model wins (:meth:`ModelRouter.model_for_run`, then
:meth:`ModelRouter.resolve`). Rules of :meth:`ModelRouter.resolve`, first match wins:

1. ``force_model`` (the CLI's ``--model``) replaces the requested model and provider.
2. No model: ``default_model``.
2a. A name given to :meth:`ModelRouter.register`: that provider (for embedding code and
   tests, e.g. :class:`~agent_runtime.models.scripted.ScriptedModel`).
3. ``simulated`` or ``simulated:key=value,…``: the built-in simulated model (one cached
   instance per distinct configuration).
4. ``provider::model``: that provider, explicitly (``together::meta-llama/Llama-3-8b``).
5. Otherwise the ``provider`` argument (an agent's ``model_provider``) or
   ``default_provider``.

An unknown provider is an :class:`~agent_runtime.errors.InvalidRequest` that lists the
known ones; a provider without its API key is a
:class:`~agent_runtime.errors.ProviderError` naming the variable to set.
:meth:`ModelRouter.check` applies the same rules to a name a client picked, at the API
edge, and refuses (400) any provider that is not configured, ``local`` included.

Concurrency: :meth:`~ModelRouter.resolve` and :meth:`~ModelRouter.list_models` never
await, so on one event loop they are atomic. HTTP providers are created lazily, on their
first use, and then shared by every request; :meth:`~ModelRouter.aclose` closes their
connection pools (call it once, at shutdown, after the requests using them are done).
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from ..errors import InvalidRequest
from .base import ModelProvider
from .openai_compat import DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT, PROVIDERS, OpenAICompatProvider
from .simulated import SIMULATED, SimulatedConfig, SimulatedModel, is_simulated, parse_spec

__all__ = ["ModelRouter"]

logger = logging.getLogger(__name__)

_SIMULATED_CACHE_SIZE = 128
"""Distinct simulated configurations kept; names come from clients, so the cache is bounded."""


class ModelRouter:
    """Maps model names to providers; see the module docstring for the rules."""

    def __init__(
        self,
        default_model: str = SIMULATED,
        force_model: str | None = None,
        default_provider: str = "fireworks",
        env: Mapping[str, str] | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
    ) -> None:
        self.default_model = default_model.strip() or SIMULATED
        self.force_model = force_model.strip() if force_model and force_model.strip() else None
        self.default_provider = self._check_provider(default_provider)
        self._env = env
        self._timeout = timeout
        self._max_retries = max_retries
        self._providers: dict[str, OpenAICompatProvider] = {}
        self._simulated: OrderedDict[SimulatedConfig, SimulatedModel] = OrderedDict()
        self._registered: dict[str, ModelProvider] = {}

    def register(self, name: str, provider: ModelProvider) -> None:
        """Serve the model ``name`` (matched exactly) with ``provider``, before every other
        rule but ``force_model``. The caller owns ``provider``: :meth:`aclose` leaves it open."""
        if not name.strip() or name.strip() != name:
            raise InvalidRequest(f"invalid model name {name!r} to register", param="model")
        self._registered[name] = provider

    @property
    def env(self) -> Mapping[str, str]:
        return os.environ if self._env is None else self._env

    @staticmethod
    def known_providers() -> list[str]:
        """Every provider name :meth:`resolve` accepts."""
        return [SIMULATED, *PROVIDERS]

    def _check_provider(self, name: str) -> str:
        provider = name.strip().lower()
        if provider != SIMULATED and provider not in PROVIDERS:
            known = ", ".join(self.known_providers())
            raise InvalidRequest(
                f"unknown model provider {name!r}; known providers: {known}", param="model"
            )
        return provider

    def model_for_run(self, requested: str | None, agent_default: str | None) -> str:
        """The model a run records: ``force_model``, else the one requested, else the
        agent's default, else ``default_model``. (Its completions then go through
        :meth:`resolve`, where ``force_model`` wins the same way.)"""
        return self.force_model or requested or agent_default or self.default_model

    def resolve(self, model: str | None, provider: str | None = None) -> tuple[ModelProvider, str]:
        """The provider serving ``model`` and the model name to put in the request."""
        if self.force_model is not None:
            model, provider = self.force_model, None
        name = (model or "").strip() or self.default_model
        registered = self._registered.get(name)
        if registered is not None:
            return registered, name
        if is_simulated(name):
            return self._simulated_model(name), name
        if "::" in name:
            provider, _, name = name.partition("::")
            name = name.strip()
            if not name:
                raise InvalidRequest(
                    f"model {model!r} names a provider but no model: use '{provider}::<model>'",
                    param="model",
                )
        chosen = self._check_provider(provider or self.default_provider)
        if chosen == SIMULATED:
            spec = name if is_simulated(name) else SIMULATED
            return self._simulated_model(spec), spec
        http = self.provider(chosen)
        return http, http.model_name(name)

    def check(self, model: str, provider: str | None = None) -> None:
        """Refuse a model name a client picked unless this hub can serve it:
        :class:`~agent_runtime.errors.InvalidRequest` (400, ``param="model"``) for a
        simulated spec out of its ranges, an unknown provider, a provider with no model,
        or a provider that is not configured (no API key, or for ``local`` neither a key
        nor a base URL, in the environment), so no client can make the hub connect where
        its operator did not point it. A forced model replaces the name: nothing to check.
        Follows :meth:`resolve`'s rules without creating anything; never awaits."""
        if self.force_model is not None:
            return
        name = model.strip() or self.default_model
        if name in self._registered:
            return
        if is_simulated(name):
            parse_spec(name)
            return
        if "::" in name:
            provider, _, name = name.partition("::")
            if not name.strip():
                raise InvalidRequest(
                    f"model {model!r} names a provider but no model: use '{provider}::<model>'",
                    param="model",
                )
        chosen = self._check_provider(provider or self.default_provider)
        if chosen == SIMULATED:
            if is_simulated(name.strip()):
                parse_spec(name)
            return
        info = PROVIDERS[chosen]
        if not info.is_configured(self.env):
            needed = info.key_env
            if not info.key_required:
                needed = f"{info.base_url_env} (or {info.key_env})"
            raise InvalidRequest(
                f"model provider {chosen!r} is not configured on this hub: set {needed}",
                param="model",
                code="model_not_found",
            )

    def _simulated_model(self, spec: str) -> SimulatedModel:
        config = parse_spec(spec)
        cached = self._simulated.get(config)
        if cached is not None:
            self._simulated.move_to_end(config)
            return cached
        created = SimulatedModel(config)
        self._simulated[config] = created
        if len(self._simulated) > _SIMULATED_CACHE_SIZE:
            self._simulated.popitem(last=False)
        return created

    def provider(self, name: str) -> OpenAICompatProvider:
        """The HTTP provider ``name``, created on first use.

        Raises :class:`~agent_runtime.errors.ProviderError` if it has no API key.
        """
        provider = self._providers.get(name)
        if provider is None:
            provider = OpenAICompatProvider(
                name, env=self.env, timeout=self._timeout, max_retries=self._max_retries
            )
            self._providers[name] = provider
            logger.info("model provider %r at %s", name, provider.base_url)
        return provider

    def list_models(self) -> list[dict[str, Any]]:
        """OpenAI ``model`` objects for ``GET /v1/models``.

        ``simulated`` always; the default (and forced) model; and one ``<provider>::``
        entry per provider that is configured (has its key, or for ``local`` a key or a
        base URL), meaning "append any of that provider's model names".
        """
        env = self.env
        models: list[dict[str, Any]] = [_model(SIMULATED, "agentstream")]
        seen = {SIMULATED, *self._registered}
        models.extend(_model(name, "agentstream") for name in self._registered)
        for name in (self.force_model, self.default_model):
            if not name or name in seen:
                continue
            owner = self._owner(name)
            if owner is not None:
                models.append(_model(name, owner))
                seen.add(name)
        for info in PROVIDERS.values():
            if info.is_configured(env):
                models.append(_model(f"{info.name}::", info.name))
        return models

    def _owner(self, name: str) -> str | None:
        """The provider of a configured model name, or None if it is not usable."""
        if is_simulated(name):
            return "agentstream"
        provider = name.partition("::")[0] if "::" in name else self.default_provider
        if provider == SIMULATED:
            return "agentstream"
        info = PROVIDERS.get(provider.strip().lower())
        if info is None or not info.is_configured(self.env):
            return None
        return info.name

    async def aclose(self) -> None:
        """Close the HTTP clients of the providers created so far."""
        providers, self._providers = list(self._providers.values()), {}
        for provider in providers:
            try:
                await provider.aclose()
            except Exception:  # closing the others matters more
                logger.exception("closing model provider %r failed", provider.name)


def _model(model_id: str, owner: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": 0, "owned_by": owner}
