"""SessionTurn: the async context manager ``SessionManager.session(key)`` returns."""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING, Generic, TypeVar

from actorsess._actor import SessionActor, Status

if TYPE_CHECKING:
    from actorsess._manager import SessionManager

T = TypeVar("T")

_READY = Status.READY


class SessionTurn(Generic[T]):
    """Exclusive access to one session for the duration of an ``async with`` block.

    ``async with manager.session(key) as data`` yields the live value: mutate it
    in place. To replace it wholesale, keep the turn and assign ``turn.value``::

        turn = manager.session(key)
        async with turn:
            turn.value = {"apple": 0}

    Leaving the block normally commits; leaving it with an exception restores
    the value it had on entry.
    """

    __slots__ = ("_actor", "_key", "_manager")

    def __init__(self, manager: SessionManager[T], key: str) -> None:
        self._manager = manager
        self._key = key
        self._actor: SessionActor[T] | None = None

    @property
    def key(self) -> str:
        return self._key

    @property
    def value(self) -> T:
        actor = self._actor
        if actor is None:
            raise RuntimeError("the session is only available inside its 'async with' block")
        return actor.value  # type: ignore[return-value]

    @value.setter
    def value(self, new: T) -> None:
        actor = self._actor
        if actor is None:
            raise RuntimeError("the session is only available inside its 'async with' block")
        self._manager._check_value(new)
        actor.value = new

    async def __aenter__(self) -> T:
        if self._actor is not None:
            raise RuntimeError(f"session {self._key!r}: this turn is already entered")
        manager = self._manager
        # The hot path, inlined (this is most of a cached turn's cost): a free,
        # loaded, unexpired session in the LRU is taken with no await at all.
        actor = manager._lookup(self._key) if manager._running else None
        if (
            actor is not None
            and not actor.held
            and not actor.waiters
            and actor.status is _READY
            and (actor.expires_at is None or manager._clock.now() < actor.expires_at)
        ):
            actor.held = True
            actor.referenced = True
            manager._active += 1
        else:
            actor = await manager._enter(self._key)
        self._actor = actor
        return actor.value  # type: ignore[return-value]

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        actor = self._actor
        if actor is None:
            return
        self._actor = None
        manager = self._manager
        if exc_type is None and not manager._write_through:
            # The hot path, inlined: commit (if changed) and release without awaiting.
            # Anything unusual (encode error, oversize, backpressure, a waiter or a
            # parked actor) goes to the general path below.
            try:
                blob = manager._encode(actor.value)  # type: ignore[arg-type]
            except Exception:
                blob = None
            if blob is not None and not actor.waiters and not actor.parked:
                if blob != actor.blob:
                    if len(blob) > manager._max_bytes:
                        blob = None
                    elif actor.version > actor.persisted_version and manager._ttl is None:
                        # Already dirty, so already queued for the flusher: only the
                        # committed bytes and the version move on.
                        actor.blob = blob
                        actor.version += 1
                        actor.deleted = False
                    elif manager._has_room():
                        manager._apply(actor, blob)
                    else:
                        blob = None  # backpressure: wait in the general path
                if blob is not None:
                    actor.held = False
                    manager._active -= 1
                    if manager._closing and not manager._active:
                        manager._idle.set()
                    return
        await manager._exit(actor, exc_type is None)
