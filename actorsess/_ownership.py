"""Ownership: the seam between the core and the way this process owns its keys.

The core calls it at the few points where ownership matters: to make a key's
actor, to find a cached session the turn's fast path may use, to take a turn
(``take``), to load (``fetch``), to write (``write`` / ``write_all``), to settle a
parked session, when storage refuses a write, and when the registry forgets an
actor. ``LocalOwnership`` (``ownership="local"``: this process alone serves its
key space) does nothing beyond the plain calls at any of them; the leased
implementation (``actorsess._leases.LeaseKeeper``, ``ownership="shared"``) takes,
renews and hands over a lease per key there. The loader, the flusher and the
manager never ask which one they have, and never import the leased one.

``LoaderPort`` and ``FlusherPort`` are what an ownership may call back: the
loader and the flusher are made after it (they are given it), so they are bound
to it with ``bind``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from actorsess._actor import SessionActor
from actorsess._context import Context
from actorsess.storage.base import AtomicStorage, Conflict, LoadResult, Owned, WriteItem

#: Takes ``key``'s turn in the registry: finds or makes its actor, waits in line,
#: waits for its load.
TakeTurn = Callable[[str], Awaitable[SessionActor[Any]]]
#: Gives a turn taken by ``TakeTurn`` back.
LeaveTurn = Callable[[SessionActor[Any]], None]


class LoaderPort(Protocol):
    """The loader, as an ownership sees it."""

    def fail(self, actor: SessionActor[Any], error: BaseException) -> None: ...

    def deliver(self, actor: SessionActor[Any], raw: LoadResult) -> None: ...

    def retry(self, actor: SessionActor[Any]) -> bool: ...


class FlusherPort(Protocol):
    """The flusher, as an ownership sees it."""

    @property
    def schema(self) -> int: ...

    def in_flight(self, storage_key: str) -> bool: ...

    def hold(self, storage_key: str) -> None: ...

    def unhold(self, storage_key: str) -> None: ...

    def drop(self, actor: SessionActor[Any]) -> None: ...

    def refuse(self, actor: SessionActor[Any], reason: str) -> None: ...

    async def wait_persisted(self, actor: SessionActor[Any], version: int) -> None: ...

    @property
    def dirty(self) -> dict[str, SessionActor[Any]]: ...


class Ownership(Protocol):
    """How this process owns the keys it serves (see the module docstring)."""

    #: Whether a written, idle session may stay cached with no actor (as bytes):
    #: True when nothing but the actor ties this process to the key.
    keeps_idle: bool

    def bind(self, loader: LoaderPort, flusher: FlusherPort) -> None:
        """Called once, right after the loader and the flusher are made."""

    def new_actor(self, key: str, storage_key: str) -> SessionActor[Any]:
        """A new actor for ``key`` (not loaded yet)."""

    def lookup(self) -> Callable[[str], SessionActor[Any] | None]:
        """For the turn's fast path: the cached actor of a key if a turn may start on
        it without asking anyone, else None."""

    def usable(self, actor: SessionActor[Any]) -> bool:
        """Whether the committed value of a loaded, cached ``actor`` is current here."""

    async def take(self, key: str, take_turn: TakeTurn, leave: LeaveTurn) -> SessionActor[Any]:
        """Take ``key``'s turn on an actor this process may use (the general path)."""

    async def fetch(self, actors: Sequence[SessionActor[Any]]) -> Sequence[LoadResult | Owned]:
        """Load the records of ``actors`` (``Owned``: another process has the key; it
        is delivered later through the loader)."""

    async def write(
        self, actors: Sequence[SessionActor[Any]], items: Sequence[WriteItem], ttl_ms: int | None
    ) -> list[Conflict]:
        """Write ``items`` (one per actor, in order); the refused ones."""

    async def write_all(
        self, actors: Sequence[SessionActor[Any]], items: Sequence[WriteItem], ttl_ms: int | None
    ) -> list[Conflict]:
        """``write``, all or nothing (``AtomicStorage.write_all``)."""

    def settle(self, actor: SessionActor[Any]) -> None:
        """A parked ``actor`` may have become idle or clean."""

    def refused(self, actor: SessionActor[Any]) -> None:
        """Storage refused ``actor``'s write: its next turn must work on what storage
        holds."""

    def forgotten(self, actor: SessionActor[Any]) -> None:
        """The registry forgot ``actor`` for good."""

    def allow_outside_edits(self, operation: str) -> None:
        """Raise ``ConfigError`` if ``operation`` (``refresh``, ``evict``) cannot work
        here."""

    async def check(self, timeout: float) -> None:
        """At start: raise ``ConfigError`` where this ownership cannot work safely."""

    def start(self) -> None:
        """Start the background work, if any."""

    async def stop(self, timeout: float) -> None:
        """After the final flush: let go of everything, within ``timeout``."""


class LocalOwnership:
    """``ownership="local"``: this process alone serves its key space (the claim in
    ``actorsess._claim`` makes sure), so every cached session is usable and every
    call goes straight to storage."""

    __slots__ = ("_registry", "_storage")

    def __init__(self, context: Context) -> None:
        self._storage = context.storage
        self._registry = context.registry

    def bind(self, loader: LoaderPort, flusher: FlusherPort) -> None:
        pass

    keeps_idle = True

    def new_actor(self, key: str, storage_key: str) -> SessionActor[Any]:
        return SessionActor(key, storage_key)

    def lookup(self) -> Callable[[str], SessionActor[Any] | None]:
        return self._registry.lookup

    def usable(self, actor: SessionActor[Any]) -> bool:
        return True

    async def take(self, key: str, take_turn: TakeTurn, leave: LeaveTurn) -> SessionActor[Any]:
        return await take_turn(key)

    async def fetch(self, actors: Sequence[SessionActor[Any]]) -> Sequence[LoadResult | Owned]:
        return await self._storage.load_many([actor.storage_key for actor in actors])

    async def write(
        self, actors: Sequence[SessionActor[Any]], items: Sequence[WriteItem], ttl_ms: int | None
    ) -> list[Conflict]:
        # A storage written before writes could be refused returns None: all landed.
        return await self._storage.write_many(items, ttl_ms) or []

    async def write_all(
        self, actors: Sequence[SessionActor[Any]], items: Sequence[WriteItem], ttl_ms: int | None
    ) -> list[Conflict]:
        storage = self._storage
        assert isinstance(storage, AtomicStorage)  # checked by SessionManager.sessions()
        return await storage.write_all(items, ttl_ms)

    def settle(self, actor: SessionActor[Any]) -> None:
        self._registry.settle(actor)

    def refused(self, actor: SessionActor[Any]) -> None:
        # Out of the cached lookups: the next turn finds it parked, or reloads.
        self._registry.park(actor)

    def forgotten(self, actor: SessionActor[Any]) -> None:
        pass

    def allow_outside_edits(self, operation: str) -> None:
        pass

    async def check(self, timeout: float) -> None:
        pass

    def start(self) -> None:
        pass

    async def stop(self, timeout: float) -> None:
        pass
