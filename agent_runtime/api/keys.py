"""Application state keys (aiohttp ``AppKey``): state lives on the app, not in globals."""

from __future__ import annotations

from aiohttp import web

from ..hub import Hub

__all__ = ["HUB"]

HUB = web.AppKey("agentstream.hub", Hub)
