"""Storage backends: in-memory, Redis (and Redis Cluster later), SQLite."""

from actorsess.storage.base import (
    AtomicStorage,
    BadValue,
    LoadResult,
    ScannableStorage,
    Storage,
    WriteItem,
)
from actorsess.storage.memory import MemoryStorage
from actorsess.storage.redis import RedisStorage
from actorsess.storage.sqlite import SqliteStorage

__all__ = [
    "AtomicStorage",
    "BadValue",
    "LoadResult",
    "MemoryStorage",
    "RedisStorage",
    "ScannableStorage",
    "SqliteStorage",
    "Storage",
    "WriteItem",
]
