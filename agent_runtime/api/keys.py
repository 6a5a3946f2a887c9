"""Application state keys (aiohttp ``AppKey``): state lives on the app, not in globals."""

from __future__ import annotations

from aiohttp import web

from ..hub import Hub

__all__ = ["HUB", "TOKEN_ROUTES"]

HUB = web.AppKey("agentstream.hub", Hub)

TOKEN_ROUTES = web.AppKey("agentstream.token_routes", frozenset[str])
"""Canonical paths of the routes that also take the API key as ``?token=``."""
