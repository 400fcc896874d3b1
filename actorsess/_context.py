"""The collaborators a manager's parts share: one object instead of the same seven
constructor arguments repeated for the loader, the flusher, the ownership and the
key space."""

from __future__ import annotations

import dataclasses
from typing import Any

from actorsess._backoff import Backoff
from actorsess._clock import Clock
from actorsess._config import SessionConfig
from actorsess._registry import Registry
from actorsess._stats import Counters
from actorsess._storage_keys import StorageKeys
from actorsess._timings import Timings
from actorsess.storage.base import Storage


@dataclasses.dataclass(frozen=True, slots=True)
class Context:
    """What every part of one manager works with. Parts copy the fields they use on
    a hot path into their own slots (one attribute lookup less per use)."""

    storage: Storage
    config: SessionConfig
    registry: Registry
    counters: Counters
    timings: Timings
    clock: Clock
    backoff: Backoff
    #: A structlog-style logger.
    log: Any
    #: Where each session's record is kept in storage.
    keys: StorageKeys
