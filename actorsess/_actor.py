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
