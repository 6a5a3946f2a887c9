"""Thread, message and run storage behind one interface."""

from .base import Page, Store, every_page
from .memory import MemoryStore
from .redis_store import RedisStore
from .sqlite import SQLiteStore

__all__ = ["MemoryStore", "Page", "RedisStore", "SQLiteStore", "Store", "every_page"]
