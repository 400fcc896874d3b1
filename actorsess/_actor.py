"""SessionActor: one key's state, its versions, and the FIFO of blocks waiting for it.

An actor owns no task. Access is a turn: the first comer takes a free turn
with no allocation at all; later comers queue a future each, and ``release``
hands the turn straight to the oldest live waiter, so order is arrival order
and no one can barge in between. So an actor with waiters is always held:
``held`` alone says whether the turn is free.
"""

from __future__ import annotations

import asyncio
import enum
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Status(enum.Enum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


class SessionActor(Generic[T]):
    """State of one session key, touched only from the event loop thread."""

    __slots__ = (
        "blob",
        "deleted",
        "dirty_since",
        "error",
        "expires_at",
        "held",
        "key",
        "load_future",
        "parked",
        "persisted_version",
        "referenced",
        "status",
        "storage_key",
        "value",
        "version",
        "waiters",
    )

    def __init__(self, key: str, storage_key: str) -> None:
        self.key = key
        self.storage_key = storage_key
        #: The live value handed to the current holder; may hold uncommitted edits.
        self.value: T | None = None
        #: Encoded form of the last committed value: rollback source and what the
        #: flusher writes (so snapshots need no encoding and no await).
        self.blob: bytes = b""
        #: Bumped by every commit that changed the value.
        self.version = 0
        #: Highest version known to be in storage. Dirty <=> version > persisted_version.
        self.persisted_version = 0
        #: The committed state is "no record": the flusher deletes the key.
        self.deleted = False
        #: Clock time at which it last became dirty (set by the flusher, which keeps
        #: dirty sessions in that order): the age of the oldest unwritten change.
        self.dirty_since = 0.0
        #: Clock time after which the cached value counts as expired (ttl), or None.
        self.expires_at: float | None = None
        #: Falsy when the turn is free. When held: the SessionTurn that holds it, or
        #: True when that is not known (a hand-off not yet run, get() or delete()).
        #: Only the deadlock check (``_deadlock``) looks at who it is.
        self.held: object = False
        self.waiters: deque[asyncio.Future[None]] | None = None
        self.status = Status.LOADING
        self.load_future: asyncio.Future[None] | None = None
        self.error: BaseException | None = None
        #: Evicted from the LRU while busy or dirty; kept findable until clean and idle.
        self.parked = False
        #: Used since the LRU last looked at it (the second-chance bit, see _registry).
        self.referenced = False

    def __repr__(self) -> str:
        state = "dirty" if self.dirty else "clean"
        return f"<SessionActor {self.key!r} v{self.version} {self.status.value} {state}>"

    @property
    def dirty(self) -> bool:
        return self.version > self.persisted_version

    @property
    def droppable(self) -> bool:
        """Safe to forget: nobody uses it and storage already has its state."""
        return (
            not self.held
            and not self.waiters
            and self.version <= self.persisted_version
            and self.status is not Status.LOADING
        )

    # -- the turn ----------------------------------------------------------

    def hold(self, holder: object = True) -> None:
        """Mark the turn taken by ``holder`` (a free turn, or one just handed over)."""
        self.held = holder

    def hold_cached(self, holder: object) -> None:
        """Take the free turn of a cached session found without the registry (the
        fast path): a use the LRU must see."""
        self.held = holder
        self.referenced = True

    async def acquire(self) -> None:
        """Take the turn, waiting in FIFO order if someone holds it."""
        if not self.held:
            self.held = True
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self.waiters is None:
            self.waiters = deque()
        self.waiters.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                # The turn was handed to us just as we were cancelled: pass it on,
                # or the key would stay held forever.
                self.release()
            else:
                self._forget(waiter)
            raise

    def release(self) -> bool:
        """Hand the turn to the next waiter; True if the actor became idle."""
        waiters = self.waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                self.held = True  # the waiter's, once it runs; until then: unknown
                return False
        self.held = False
        return True

    # -- the committed state --------------------------------------------------

    def replace(self, value: T) -> None:
        """Give the holder a new live value (uncommitted until ``commit``)."""
        self.value = value

    def rollback(self, decode: Callable[[bytes], T]) -> None:
        """Drop the holder's uncommitted edits: the live value is the committed one again."""
        self.value = decode(self.blob)

    def commit(self, blob: bytes, deleted: bool, expires_at: float | None) -> bool:
        """Take ``blob`` as the committed state at the next version; True if this made
        the session dirty (the flusher must hear of it), False if it already was."""
        was_clean = self.version <= self.persisted_version
        self.blob = blob
        self.version += 1
        self.deleted = deleted
        self.expires_at = expires_at
        return was_clean

    def renew(self, value: T, blob: bytes) -> None:
        """Start again from ``initial()`` (the cached value expired): nothing stored
        changes, so the version stays."""
        self.value = value
        self.blob = blob
        self.expires_at = None

    def extend(self, expires_at: float | None) -> None:
        """Used again: the cached value expires later."""
        self.expires_at = expires_at

    def raise_version(self, version: int) -> None:
        """Versions never go back (a record restored at an older version, or removed):
        continue above ``version``, every one of which storage has seen."""
        if self.version < version:
            self.version = self.persisted_version = version

    # -- loading ---------------------------------------------------------------

    def start_loading(self, future: asyncio.Future[None]) -> None:
        """A load of this key is under way; ``future`` resolves when it ends."""
        self.status = Status.LOADING
        self.load_future = future

    def loaded(self, value: T, blob: bytes, version: int, expires_at: float | None) -> None:
        """The stored record arrived (``version`` 0: nothing stored)."""
        self.value = value
        self.blob = blob
        self.version = self.persisted_version = version
        self.expires_at = expires_at
        self.status = Status.READY

    def upgraded(self, deleted: bool) -> None:
        """The record just loaded was migrated: its new form is a change to write."""
        self.version += 1
        self.deleted = deleted

    def load_failed(self, error: BaseException) -> None:
        self.status = Status.FAILED
        self.error = error

    def end_loading(self) -> asyncio.Future[None] | None:
        """Detach the load's future (for the loader to resolve)."""
        future, self.load_future = self.load_future, None
        return future

    # -- writing ------------------------------------------------------------------

    def became_dirty(self, now: float) -> None:
        """Entered the flusher's dirty set at ``now``."""
        self.dirty_since = now

    def written(self, version: int) -> None:
        """Storage holds ``version`` (or a newer one of ours)."""
        if version > self.persisted_version:
            self.persisted_version = version

    def written_together(self, blob: bytes, deleted: bool) -> None:
        """A group write carrying ``blob`` at the next version has landed: that is now
        the committed and the stored state at once."""
        self.blob = blob
        self.version = self.persisted_version = self.version + 1
        self.deleted = deleted

    def skip_versions(self, count: int) -> None:
        """A write of unknown outcome may have used these versions: never reuse them."""
        self.version += count

    def refused(self, error: BaseException) -> None:
        """Storage refused the write (a newer version is stored): nothing more of this
        state can be written, and the next turn raises ``error`` or reloads."""
        self.error = error
        self.persisted_version = self.version

    def clear_error(self) -> None:
        self.error = None

    # -- the registry's bookkeeping ------------------------------------------------

    def park(self) -> None:
        """Pushed out of the LRU while busy or dirty: kept aside until it is not."""
        self.parked = True

    def unpark(self) -> None:
        self.parked = False

    def mark_used(self) -> None:
        self.referenced = True

    def second_chance(self) -> bool:
        """True (and the bit cleared) if used since the LRU last looked at it."""
        used = self.referenced
        self.referenced = False
        return used

    def _forget(self, waiter: asyncio.Future[None]) -> None:
        # O(1): a cancelled waiter is done, and ``release`` skips done waiters, so it
        # may stay where it is; only the ends are trimmed (searching the queue for it
        # would make cancelling n waiters of a hot key cost n^2).
        waiters = self.waiters
        if waiters:
            if waiters[0] is waiter:
                waiters.popleft()
            while waiters and waiters[-1].done():
                waiters.pop()

    def queued(self) -> int:
        """Blocks waiting for this actor's turn (cancelled ones not counted)."""
        return sum(not waiter.done() for waiter in self.waiters or ())
