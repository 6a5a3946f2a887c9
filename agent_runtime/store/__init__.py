"""Thread, message and run storage behind one interface."""

from .base import Page, Store
from .memory import MemoryStore

__all__ = ["MemoryStore", "Page", "Store"]
