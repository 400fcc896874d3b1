"""SessionGroup: ``async with manager.sessions(k1, k2) as (a, b)``, atomic across keys.

The turns are taken in one global order (sorted keys), so two groups over
overlapping keys queue instead of deadlocking. Leaving the block commits every
changed session in one all-or-nothing storage write (a Lua script on Redis, a
transaction on SQLite) before any of them takes its new state, so storage, and
every later reader, sees all the changes or none: a transfer between two users,
or a dialog stack and its context, never half done.
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import Generic, TypeVar

from actorsess._turn import SessionTurn, Turns

T = TypeVar("T")


class SessionGroup(Generic[T]):
    """Exclusive access to several sessions at once, committed together.

    ``async with manager.sessions(a, b) as (first, second)`` yields the live
    values in the order the keys were given; mutate them in place. ``turns``
    holds each key's SessionTurn, to replace a value (``.value = ...``) or
    delete it (``.delete()``). Leaving with an exception rolls every one back.
    """

    __slots__ = ("_held", "_keys", "_open", "_turns", "turns")

    def __init__(
        self,
        turns: Turns[T],
        open_turn: Callable[[str], SessionTurn[T]],
        keys: tuple[str, ...],
    ) -> None:
        """Made by ``manager.sessions(*keys)``, not by hand.

        Args:
            turns: The turn rules of the manager the sessions belong to.
            open_turn: Makes one key's turn (``manager.session``).
            keys: The session keys, in the order the values are yielded.
        """
        self._turns = turns
        self._open = open_turn
        self._keys = keys
        #: The turns, in the order of the keys given (set while the block runs).
        self.turns: tuple[SessionTurn[T], ...] = ()
        #: The turns taken so far, also while entering (for the deadlock check).
        self._held: list[SessionTurn[T]] = []

    def held_turns(self) -> list[SessionTurn[T]]:
        """The turns this group holds now (the deadlock check follows them)."""
        return self._held

    async def __aenter__(self) -> tuple[T, ...]:
        if self.turns:
            raise RuntimeError("this group of sessions is already entered")
        self._turns.check_group(self._keys)
        turns = {key: self._open(key) for key in self._keys}
        held = self._held = []
        try:
            for key in sorted(turns):  # one order for every group: no deadlock
                await turns[key].__aenter__()
                held.append(turns[key])
        except BaseException as exc:
            self._held = []
            for turn in reversed(held):
                await turn.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        self.turns = tuple(turns[key] for key in self._keys)
        return tuple(turn.value for turn in self.turns)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        turns, self.turns = self.turns, ()
        if not turns:
            return
        self._held = []
        if exc_type is not None:
            for turn in reversed(turns):
                await turn.__aexit__(exc_type, exc, tb)
            return
        await self._turns.commit_group(turns)
