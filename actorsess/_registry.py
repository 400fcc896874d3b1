"""The registry: an LRU of actors, a parking lot, and idle sessions kept as bytes.

Every removal from the LRU passes through one choke point, ``popitem``. An
actor leaving the LRU is forgotten only when it is droppable (idle, clean,
loaded); otherwise it is parked, where lookups still find it, until the
flusher has written it or its holder has released it. So a dirty session is
never dropped, and there is never more than one actor per key, nor an actor
and idle bytes for the same key.

With ``keep_idle`` (local ownership), the LRU of actors holds only
``max_live`` sessions and a forgotten actor's session stays cached as bytes
(``_idle``) up to ``max_cached`` in all; a lookup that finds it there makes
the actor again (``thaw``). Without it, the LRU holds ``max_cached`` actors
and a forgotten actor's session leaves memory.

Hits do not reorder the cachetools LRU (that costs more than the rest of a
cached turn): they set the actor's ``referenced`` bit, read from a plain dict
index. ``popitem`` gives a referenced actor a second chance by moving it to
the young end (the CLOCK approximation of LRU), so recently used sessions
still outlive idle ones.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import cachetools

from actorsess._actor import SessionActor, Status
from actorsess._idle import IdleSession, IdleSessions

EvictHook = Callable[[SessionActor[Any]], None]
#: Makes the actor of an idle session again: (key, what was kept) -> a READY actor.
Thaw = Callable[[str, IdleSession], SessionActor[Any]]


def _nothing(actor: SessionActor[Any]) -> None:
    pass


class _ActorLRU(cachetools.LRUCache[str, SessionActor[Any]]):
    def __init__(self, maxsize: int, on_evict: EvictHook) -> None:
        super().__init__(maxsize)
        self._on_evict = on_evict

    def popitem(self) -> tuple[str, SessionActor[Any]]:
        # Ends within len(self) + 1 rounds: each round clears one referenced bit.
        while True:
            key, actor = super().popitem()
            if not actor.second_chance():
                self._on_evict(actor)
                return key, actor
            # One slot is free now, so this re-insert evicts nothing.
            super().__setitem__(key, actor)


class Registry:
    """Finds the one live actor of a key, creating none itself."""

    __slots__ = (
        "_cache",
        "_forget",
        "_idle",
        "_index",
        "_max_cached",
        "_on_drop",
        "_on_park",
        "_thaw",
        "departures",
        "parked",
    )

    def __init__(
        self,
        max_cached: int,
        on_evict: Callable[[str], None],
        on_forget: EvictHook = _nothing,
        on_park: EvictHook = _nothing,
    ) -> None:
        #: Called with the key of every session that leaves memory because the cache
        #: pushed it out.
        self._on_drop = on_evict
        #: Called for a session the LRU pushed out that stays (busy or dirty): parked.
        self._on_park = on_park
        #: Called once for every actor that leaves the registry for good.
        self._forget = on_forget
        self._cache = _ActorLRU(max_cached, self._leave_lru)
        #: Same members as the LRU, for lookups at dict speed.
        self._index: dict[str, SessionActor[Any]] = {}
        self.parked: dict[str, SessionActor[Any]] = {}
        self._max_cached = max_cached
        #: Sessions that left memory so far. A load begun before one of them left may
        #: hold an older record than the departed session wrote: ``keep_loaded`` callers
        #: compare this across their storage call.
        self.departures = 0
        self._idle: IdleSessions | None = None
        self._thaw: Thaw | None = None

    def keep_idle(self, max_live: int, thaw: Thaw) -> None:
        """Keep only ``max_live`` sessions as actors and the rest of ``max_cached`` as
        bytes; ``thaw`` makes an actor again. Called once, before any use."""
        assert not self._index and not self.parked, "keep_idle() after use"
        if max_live >= self._max_cached:
            return  # every cached session is live: nothing to keep as bytes
        self._cache = _ActorLRU(max_live, self._leave_lru)
        # Up to max_cached in all: the room the live sessions leave (all of it
        # after a restart, before any turn, when warming fills the cache).
        self._idle = IdleSessions(self._max_cached, self._dropped)
        self._thaw = thaw

    def __len__(self) -> int:
        idle = 0 if self._idle is None else len(self._idle)
        return len(self._index) + len(self.parked) + idle

    def __contains__(self, key: object) -> bool:
        """Whether ``key``'s session is cached (live, parked or as bytes)."""
        return (
            key in self._index
            or key in self.parked
            or (self._idle is not None and key in self._idle)
        )

    @property
    def idle(self) -> int:
        """Cached sessions kept as bytes only."""
        return 0 if self._idle is None else len(self._idle)

    @property
    def lookup(self) -> Callable[[str], SessionActor[Any] | None]:
        """The index's ``get``: an actor in the LRU or None, without marking it used."""
        return self._index.get

    def find(self, key: str) -> SessionActor[Any] | None:
        """The actor of ``key`` (marked used), bringing a parked one back into the LRU."""
        actor = self._index.get(key)
        if actor is not None:
            actor.mark_used()
        else:
            actor = self.parked.pop(key, None)
            if actor is not None:
                actor.unpark()
                self.add(actor)
            else:
                actor = self._thawed(key)
        return actor

    def find_cached(self, key: str) -> SessionActor[Any] | None:
        """The actor of ``key``, marked used if it is in the LRU; a parked one stays
        parked."""
        actor = self._index.get(key)
        if actor is not None:
            actor.mark_used()
            return actor
        actor = self.parked.get(key)
        return actor if actor is not None else self._thawed(key)

    def _thawed(self, key: str) -> SessionActor[Any] | None:
        """``key``'s idle session as a live actor again (added to the LRU), or None."""
        idle = self._idle
        if idle is None:
            return None
        kept = idle.take(key)
        if kept is None:
            return None
        assert self._thaw is not None
        actor = self._thaw(key, kept)
        self.add(actor)
        return actor

    def discard_idle(self, key: str) -> bool:
        """Forget ``key``'s session if it is kept as bytes; True if it was."""
        if self._idle is not None and self._idle.discard(key):
            self.departures += 1
            return True
        return False

    @property
    def keeps_idle(self) -> bool:
        """Whether sessions are kept as bytes beyond the live ones."""
        return self._idle is not None

    def keep_loaded(self, key: str, version: int, blob: bytes, expires_at: float | None) -> bool:
        """Cache a record just read from storage as bytes, with no actor (warming);
        False, keeping nothing, if ``key`` is cached already or bytes are not kept."""
        if self._idle is None or key in self:
            return False
        self._idle.keep(key, version, blob, expires_at, self._max_cached - len(self._index))
        return True

    def peek(self, key: str) -> SessionActor[Any] | None:
        """The actor of ``key`` without marking it used."""
        actor = self._index.get(key)
        return actor if actor is not None else self.parked.get(key)

    def add(self, actor: SessionActor[Any]) -> None:
        self._cache[actor.key] = actor
        self._index[actor.key] = actor

    def actors(self) -> list[SessionActor[Any]]:
        """Every registered actor, cached or parked."""
        return [*self._index.values(), *self.parked.values()]

    def discard(self, actor: SessionActor[Any]) -> None:
        """Forget ``actor`` if it is the registered one for its key (failed loads)."""
        registered = False
        if self._index.get(actor.key) is actor:
            del self._index[actor.key]
            self._cache.pop(actor.key, None)
            registered = True
        if self.parked.get(actor.key) is actor:
            del self.parked[actor.key]
            registered = True
        actor.unpark()
        if registered:
            self.departures += 1
            self._forget(actor)

    def park(self, actor: SessionActor[Any]) -> None:
        """Take ``actor`` out of the LRU so that cached lookups miss it; forget it as soon
        as it is idle and clean (now, if it already is)."""
        if self._index.get(actor.key) is actor:
            del self._index[actor.key]
            self._cache.pop(actor.key, None)
            actor.park()
            self.parked[actor.key] = actor
        self.settle(actor)

    def settle(self, actor: SessionActor[Any]) -> None:
        """Drop a parked actor once it is idle and clean."""
        if actor.parked and actor.droppable and self.parked.get(actor.key) is actor:
            del self.parked[actor.key]
            actor.unpark()
            self._retire(actor, self._max_cached - len(self._index))

    def _leave_lru(self, actor: SessionActor[Any]) -> None:
        del self._index[actor.key]
        if actor.droppable:
            self._retire(actor, self._max_cached - int(self._cache.maxsize))
        else:
            actor.park()
            self.parked[actor.key] = actor
            self._on_park(actor)

    def _retire(self, actor: SessionActor[Any], room: int) -> None:
        """A droppable actor leaves for good: its session stays as bytes if idle
        sessions are kept, else it leaves memory. One whose write storage refused
        (``error``) holds what storage does not: it leaves, to be loaded again."""
        self._forget(actor)
        if self._idle is not None and actor.status is Status.READY and actor.error is None:
            self._idle.keep(actor.key, actor.version, actor.blob, actor.expires_at, room)
        else:
            self._dropped(actor.key)

    def _dropped(self, key: str) -> None:
        self.departures += 1
        self._on_drop(key)
