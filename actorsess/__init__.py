"""actorsess: race-free, write-behind per-chat sessions for aiogram 3 bots."""

from actorsess._clock import Clock, MonotonicClock
from actorsess._codec import SessionCodec
from actorsess._config import SessionConfig
from actorsess._group import SessionGroup
from actorsess._keyspace import MigrationReport
from actorsess._manager import SessionManager
from actorsess._migrations import Migration
from actorsess._partitions import Partitions
from actorsess._stats import SessionStats
from actorsess._turn import SessionTurn
from actorsess.exceptions import (
    ActorSessError,
    BackpressureTimeoutError,
    ConfigError,
    CorruptSessionError,
    InvalidKeyError,
    KeySpaceInUseError,
    LeaseTimeoutError,
    ManagerClosedError,
    PartitionCountError,
    PartitionNotOwnedError,
    SessionConflictError,
    SessionDeadlockError,
    SessionEncodeError,
    SessionTooLargeError,
    StorageError,
)
from actorsess.storage import MemoryStorage, RedisStorage, SqliteStorage, Storage, WriteItem

__version__ = "0.1.0"

__all__ = [
    "ActorSessError",
    "BackpressureTimeoutError",
    "Clock",
    "ConfigError",
    "CorruptSessionError",
    "InvalidKeyError",
    "KeySpaceInUseError",
    "LeaseTimeoutError",
    "ManagerClosedError",
    "MemoryStorage",
    "Migration",
    "MigrationReport",
    "MonotonicClock",
    "PartitionCountError",
    "PartitionNotOwnedError",
    "Partitions",
    "RedisStorage",
    "SessionCodec",
    "SessionConfig",
    "SessionConflictError",
    "SessionDeadlockError",
    "SessionEncodeError",
    "SessionGroup",
    "SessionManager",
    "SessionStats",
    "SessionTooLargeError",
    "SessionTurn",
    "SqliteStorage",
    "Storage",
    "StorageError",
    "WriteItem",
    "__version__",
]
