"""Storage backends (in memory, SQLite, Redis and Redis Cluster) and the protocols a
storage implements."""

from actorsess.storage.base import (
    NEWER_VERSION,
    AtomicStorage,
    BadValue,
    Conflict,
    LoadResult,
    ScannableStorage,
    Storage,
    WriteItem,
)
from actorsess.storage.memory import MemoryStorage
from actorsess.storage.redis import RedisStorage
from actorsess.storage.sqlite import SqliteStorage

__all__ = [
    "NEWER_VERSION",
    "AtomicStorage",
    "BadValue",
    "Conflict",
    "LoadResult",
    "MemoryStorage",
    "RedisStorage",
    "ScannableStorage",
    "SqliteStorage",
    "Storage",
    "WriteItem",
]
