"""Where ``agentstream bench`` sends its load: the hub's URL, checked and resolved once."""

from __future__ import annotations

import asyncio

from .sse_client import Endpoint

__all__ = ["BenchError", "endpoint_of", "resolved"]


class BenchError(Exception):
    """The bench cannot run (unreachable hub, unknown agent, no run starts)."""


def endpoint_of(url: str) -> Endpoint:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise BenchError(f"--url must be an http:// URL of a hub (https is not supported): {url}")
    return Endpoint(parts.hostname, parts.port or 80, parts.path.rstrip("/"))


async def resolved(endpoint: Endpoint) -> Endpoint:
    """``endpoint`` with its host resolved to an address once: each subscriber's
    connection would otherwise resolve it again (``localhost``: a thread pool round trip
    per connection, hundreds of them queued at a burst's start)."""
    import dataclasses
    import socket

    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(endpoint.host, endpoint.port, type=socket.SOCK_STREAM)
    except OSError:
        return endpoint
    if not infos:
        return endpoint
    address = str(infos[0][4][0])
    return dataclasses.replace(endpoint, address=address)
