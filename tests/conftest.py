"""Fixtures shared by both test packages: a real Redis server (see ``redis_server``)."""

from .redis_server import redis_prefix, redis_server, redis_url

__all__ = ["redis_prefix", "redis_server", "redis_url"]
