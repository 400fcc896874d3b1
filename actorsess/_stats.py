"""Counters shared by the manager's parts, and the snapshot ``stats()`` returns."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(slots=True)
class Counters:
    loads: int = 0
    flushes: int = 0
    written: int = 0
    evictions: int = 0
    errors: int = 0
    conflicts: int = 0
    handovers: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class SessionStats:
    """A point-in-time view of a SessionManager."""

    #: Sessions held in memory (LRU plus parked).
    cached: int
    #: Sessions changed but not yet written.
    dirty: int
    #: Batched load calls made to storage.
    loads: int
    #: Successful batched writes.
    flushes: int
    #: Sessions written (or deleted) by those writes.
    written: int
    #: Sessions that left the LRU.
    evictions: int
    #: Failed storage calls (loads and writes) and corrupt records met.
    errors: int
    #: Sessions evicted from the LRU but kept until written or released.
    parked: int = 0
    #: Session blocks currently inside or waiting for their turn.
    active: int = 0
    #: Shared ownership: writes refused because another process owned the key.
    conflicts: int = 0
    #: Shared ownership: sessions handed over to another process that asked for them.
    handovers: int = 0
    #: Seconds since the longest-dirty session became dirty (0.0 when nothing is):
    #: how old the acknowledged changes are that a crash right now would lose.
    oldest_unwritten: float = 0.0
