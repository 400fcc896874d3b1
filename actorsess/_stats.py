"""Counters shared by the manager's parts, and the snapshot ``stats()`` returns."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(slots=True)
class Counters:
    """The running counts behind ``stats()``: each is the ``SessionStats`` field of
    the same name (documented there)."""

    loads: int = 0
    flushes: int = 0
    written: int = 0
    evictions: int = 0
    errors: int = 0
    conflicts: int = 0
    handovers: int = 0
    write_failures: int = 0
    write_timeouts: int = 0
    backpressure_waits: int = 0
    backpressure_timeouts: int = 0
    leases_renewed: int = 0
    leases_lost: int = 0
    sessions_loaded: int = 0
    turns: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class SessionStats:
    """A point-in-time view of a SessionManager.

    Attributes:
        cached: Sessions held in memory (LRU plus parked).
        dirty: Sessions changed but not yet written.
        loads: Batched load calls made to storage.
        flushes: Successful batched writes.
        written: Sessions written (or deleted) by those writes.
        evictions: Sessions that left the LRU.
        errors: Failed storage calls (loads and writes) and corrupt records met.
        parked: Sessions evicted from the LRU but kept until written or released.
        active: Session blocks currently inside or waiting for their turn.
        conflicts: Shared ownership: writes refused because another process owned the key.
        handovers: Shared ownership: sessions handed over to another process that asked for
            them.
        write_failures: Batched writes that failed (each is retried; ``errors`` counts them
            too).
        write_timeouts: Of those, writes that timed out: their outcome was unknown (writes are
            idempotent and fenced, so the retry is safe).
        backpressure_waits: Session blocks that had to wait for room (``max_dirty`` reached).
        backpressure_timeouts: Of those, blocks that gave up
            (``BackpressureTimeoutError``).
        leases_renewed: Shared ownership: leases extended by renewal.
        leases_lost: Shared ownership: leases found gone or taken at renewal (the session is let
            go).
        sessions_loaded: Sessions read from storage by those loads: the cache's misses.
        turns: Session blocks entered since ``observe_turns()`` (0 until then: counting them is
            kept off the cached turn's fast path unless asked for).
        oldest_unwritten: Seconds since the longest-dirty session became dirty (0.0 when nothing
            is): how old the acknowledged changes are that a crash right now would lose.
    """

    cached: int
    dirty: int
    loads: int
    flushes: int
    written: int
    evictions: int
    errors: int
    parked: int = 0
    active: int = 0
    conflicts: int = 0
    handovers: int = 0
    write_failures: int = 0
    write_timeouts: int = 0
    backpressure_waits: int = 0
    backpressure_timeouts: int = 0
    leases_renewed: int = 0
    leases_lost: int = 0
    sessions_loaded: int = 0
    turns: int = 0
    oldest_unwritten: float = 0.0
