"""Thread, message and run storage behind one interface."""

from .base import Page, Store
from .memory import MemoryStore
from .sqlite import SQLiteStore

__all__ = ["MemoryStore", "Page", "SQLiteStore", "Store"]
