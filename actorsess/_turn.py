"""SessionTurn: the async context manager ``SessionManager.session(key)`` returns.

This is the library's hot path. A turn on a cached, free, loaded session takes
its turn, runs the block and commits with no await, no allocation beyond the
encoded bytes, and no method call of its own: the checks below are written out
inline because, at about a microsecond per turn, each Python call costs ~5% of
it. Everything else (loading, waiting in line, rollback, backpressure,
write-through, shared ownership) goes through the manager's ``_enter`` and
``_exit``, which keep the general rules.
"""

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
        """Made by ``manager.session(key)``, not by hand.

        Args:
            manager: The manager the session belongs to.
            key: The session key.
        """
        self._manager = manager
        self._key = key
        self._actor: SessionActor[T] | None = None

    @property
    def key(self) -> str:
        """The session key."""
        return self._key

    def _inside(self) -> SessionActor[T]:
        actor = self._actor
        if actor is None:
            raise RuntimeError("the session is only available inside its 'async with' block")
        return actor

    @property
    def value(self) -> T:
        """The live session value, inside the block only; assign to replace it."""
        actor = self._inside()
        return actor.value  # type: ignore[return-value]

    @value.setter
    def value(self, new: T) -> None:
        actor = self._inside()
        self._manager._check_value(new)
        actor.value = new

    @property
    def is_new(self) -> bool:
        """True while the session has nothing stored: its committed value is
        ``initial()`` (never written, deleted, or expired). Unchanged by edits the
        block has not committed yet."""
        actor = self._inside()
        return actor.blob == self._manager._empty_blob

    def delete(self) -> T:
        """Delete this session from inside its block (a ``/reset``), returning the fresh
        ``initial()`` value the block sees from then on.

        When the block ends normally the stored record is removed at the next flush
        (version-fenced, as every write); if it raises, the delete rolls back with
        everything else. Changes made after the delete are kept, as a new session.
        A dict session is emptied and refilled in place, so the value the block
        already holds is the fresh one; a typed session must use the returned value.
        """
        actor = self._inside()
        fresh: T = self._manager._codec.initial()
        current = actor.value
        if isinstance(current, dict) and isinstance(fresh, dict):
            # The commit finds the value equal to initial() and deletes the record.
            current.clear()
            current.update(fresh)
            return current
        self._manager._check_value(fresh)
        actor.value = fresh
        return fresh

    async def __aenter__(self) -> T:
        if self._actor is not None:
            raise RuntimeError(f"session {self._key!r}: this turn is already entered")
        manager = self._manager
        # Fast path: a free, loaded, unexpired cached session (in shared mode
        # ``_lookup`` also misses one whose lease is not good now).
        try:
            actor: SessionActor[T] | None = manager._lookup(self._key) if manager._running else None
        except TypeError:  # an unhashable key: _enter raises InvalidKeyError naming it
            actor = None
        if (
            actor is None
            or actor.held  # (a session with waiters is always held)
            or actor.status is not _READY
            or (actor.expires_at is not None and manager._clock.now() >= actor.expires_at)
        ):
            actor = await manager._enter(self._key)
            actor.held = self  # the holder, for the deadlock check
        else:
            actor.held = self  # the holder, for the deadlock check; free as True is
            actor.referenced = True
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
        if exc_type is not None or not manager._fast_commit:
            await manager._exit(actor, exc_type is None)
            return
        # Fast path: commit with no await. Whatever needs more (an unencodable or
        # too large value, room for a newly dirty session) goes to ``_exit``,
        # which encodes again and handles it.
        try:
            blob = manager._encode_common(actor.value, None, manager._encode_option)  # type: ignore[arg-type]
            # Also where the bytes did not change: a list replaced by an equal tuple
            # encodes the same, and a reload would still give back the list.
            read_back = manager._read_back
            if read_back is not None and read_back(blob) != actor.value:
                raise ValueError  # ``_exit`` encodes again and names what JSON changes
        except Exception:
            await manager._exit(actor, True)
            return
        if blob != actor.blob:
            if len(blob) > manager._max_bytes:
                await manager._exit(actor, True)
                return
            if actor.version > actor.persisted_version:
                # Already dirty, so already queued for the flusher (it leaves the
                # queue only once clean): only the new bytes and version to record.
                actor.blob = blob
                actor.version += 1
                actor.deleted = blob == manager._empty_blob
                if manager._ttl is not None:
                    actor.expires_at = manager._clock.now() + manager._ttl
            elif len(manager._flusher.dirty) < manager._max_dirty:
                manager._apply(actor, blob)
            else:
                await manager._exit(actor, True)
                return
        if actor.waiters or actor.parked:
            manager._release(actor)
        else:
            actor.held = False  # what release() does when nobody waits
            if manager._closing:
                manager._released.set()
