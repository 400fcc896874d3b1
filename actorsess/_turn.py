"""SessionTurn: the async context manager ``SessionManager.session(key)`` returns."""

from __future__ import annotations

from types import TracebackType
from typing import TYPE_CHECKING, Generic, TypeVar

from actorsess._actor import SessionActor

if TYPE_CHECKING:
    from actorsess._manager import SessionManager

T = TypeVar("T")


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
        actor = manager._enter_now(self._key) or await manager._enter(self._key)
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
        if exc_type is None and self._manager._commit_now(actor):
            return
        await self._manager._exit(actor, exc_type is None)
