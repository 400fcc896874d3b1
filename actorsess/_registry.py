"""The registry: an LRU of actors bounded by ``max_cached``, plus a parking lot.

Every removal from the LRU passes through one choke point, ``popitem``. An
actor leaving the LRU is forgotten only when it is droppable (idle, clean,
loaded); otherwise it is parked, where lookups still find it, until the
flusher has written it or its holder has released it. So a dirty session is
never dropped, and there is never more than one actor per key.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import cachetools

from actorsess._actor import SessionActor

EvictHook = Callable[[SessionActor[Any]], None]


class _ActorLRU(cachetools.LRUCache[str, SessionActor[Any]]):
    def __init__(self, maxsize: int, on_evict: EvictHook) -> None:
        super().__init__(maxsize)
        self._on_evict = on_evict

    def popitem(self) -> tuple[str, SessionActor[Any]]:
        key, actor = super().popitem()
        self._on_evict(actor)
        return key, actor


class Registry:
    """Finds the one live actor of a key, creating none itself."""

    __slots__ = ("_cache", "_on_drop", "parked")

    def __init__(self, max_cached: int, on_evict: EvictHook) -> None:
        self._on_drop = on_evict
        self._cache = _ActorLRU(max_cached, self._leave_lru)
        self.parked: dict[str, SessionActor[Any]] = {}

    def __len__(self) -> int:
        return len(self._cache) + len(self.parked)

    def __iter__(self) -> Iterator[SessionActor[Any]]:
        yield from list(self._cache.values())
        yield from list(self.parked.values())

    def find(self, key: str) -> SessionActor[Any] | None:
        """The actor of ``key``, marked most recently used; None on a miss."""
        try:
            return self._cache[key]
        except KeyError:
            actor = self.parked.pop(key, None)
            if actor is not None:
                actor.parked = False
                self._cache[key] = actor
            return actor

    def peek(self, key: str) -> SessionActor[Any] | None:
        """The actor of ``key`` without touching LRU order."""
        actor = self._cache.get(key) if key in self._cache else None
        return actor if actor is not None else self.parked.get(key)

    def add(self, actor: SessionActor[Any]) -> None:
        self._cache[actor.key] = actor

    def discard(self, actor: SessionActor[Any]) -> None:
        """Forget ``actor`` if it is the registered one for its key (failed loads)."""
        if self.peek(actor.key) is actor:
            self._cache.pop(actor.key, None)
            self.parked.pop(actor.key, None)
            actor.parked = False

    def settle(self, actor: SessionActor[Any]) -> None:
        """Drop a parked actor once it is idle and clean."""
        if actor.parked and actor.droppable and self.parked.get(actor.key) is actor:
            del self.parked[actor.key]
            actor.parked = False

    def _leave_lru(self, actor: SessionActor[Any]) -> None:
        if not actor.droppable:
            actor.parked = True
            self.parked[actor.key] = actor
        self._on_drop(actor)
