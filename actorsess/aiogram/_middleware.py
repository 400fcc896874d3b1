"""SessionMiddleware: a session per update, injected into handlers by name."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from aiogram import BaseMiddleware, Dispatcher
from aiogram.fsm.strategy import FSMStrategy
from aiogram.types import TelegramObject

from actorsess._manager import SessionManager
from actorsess._turn import SessionTurn
from actorsess.aiogram._keys import KeyFunction, bot_id_of, namespaced, strategy_key
from actorsess.aiogram._migration import chat_prefix, migration_of, move_chat, moved_key
from actorsess.exceptions import ActorSessError

T = TypeVar("T")

Handler = Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]]

#: Seeds a session that has nothing stored from the update that first touches it
#: (GramIO's ``initial(context)``, Telegraf's ``defaultSession(ctx)``).
FirstTouch = Callable[[TelegramObject, dict[str, Any]], T]

#: Per update: the highest set-up rank whose session this update has opened.
_OPENED_KEY = "actorsess_opened_rank"
_ranks = itertools.count()


class SessionOrderError(ActorSessError, RuntimeError):
    """A lazy session was opened after one registered later: that order could deadlock."""


class LazySession(Generic[T]):
    """The session of one update, loaded only if the handler asks for it.

    ``value = await session.load()`` takes the key's turn (loading it if
    needed) and keeps it until the handler returns, when changes commit (or
    roll back if the handler raised). A handler that never calls ``load()``
    costs no load and holds no turn.
    """

    __slots__ = ("_data", "_key", "_manager", "_rank", "_seed", "_turn")

    def __init__(
        self,
        manager: SessionManager[T],
        key: str,
        rank: int,
        data: dict[str, Any],
        seed: Callable[[SessionTurn[T]], T],
    ) -> None:
        """Made by ``SessionMiddleware(lazy=True)`` for each update, not by hand.

        Args:
            manager: The namespace's manager.
            key: The session key of this update.
            rank: The middleware's place in set-up order (lazy sessions must be
                loaded in that order).
            data: The update's middleware data.
            seed: Seeds a session with nothing stored (``initial=`` of the middleware).
        """
        self._manager = manager
        self._key = key
        self._rank = rank
        self._data = data
        self._seed = seed
        self._turn: SessionTurn[T] | None = None

    @property
    def key(self) -> str:
        """The session key of this update."""
        return self._key

    @property
    def loaded(self) -> bool:
        """Whether ``load()`` has taken the turn."""
        return self._turn is not None

    async def load(self) -> T:
        """Take the session's turn (loading it if needed) and return its live value;
        later calls return the same value. Raises ``SessionOrderError`` when a lazy
        session of a middleware set up later is already loaded."""
        if self._turn is not None:
            return self._turn.value
        if self._data.get(_OPENED_KEY, -1) > self._rank:
            raise SessionOrderError(
                f"session {self._key!r} was opened after a session whose middleware was set up "
                "later; open lazy sessions in set-up order so updates cannot deadlock"
            )
        turn = self._manager.session(self._key)
        await turn.__aenter__()
        self._turn = turn
        self._data[_OPENED_KEY] = self._rank
        try:
            return self._seed(turn)
        except BaseException as exc:
            await self._finish(exc)
            raise

    @property
    def value(self) -> T:
        """The loaded value (after ``load()``); assign to replace it."""
        if self._turn is None:
            raise RuntimeError(f"session {self._key!r} is not loaded: await session.load() first")
        return self._turn.value

    @value.setter
    def value(self, new: T) -> None:
        if self._turn is None:
            raise RuntimeError(f"session {self._key!r} is not loaded: await session.load() first")
        self._turn.value = new

    async def delete(self) -> T:
        """Load the session if needed and delete it (see ``delete``);
        returns the fresh value the handler sees from then on."""
        await self.load()
        assert self._turn is not None
        return self._turn.delete()

    async def _finish(self, exc: BaseException | None) -> None:
        turn, self._turn = self._turn, None
        if turn is not None:
            await turn.__aexit__(type(exc) if exc else None, exc, None)


class SessionMiddleware(BaseMiddleware, Generic[T]):
    """Outer update middleware giving each handler its session by parameter name.

    Eager (default): the handler receives the session value itself (``name``)
    and its turn (``<name>_turn``, whose ``.value`` can be reassigned). Lazy:
    the handler receives a ``LazySession`` to ``await .load()``.

    Updates whose key function returns None (no chat and no user) get
    ``None`` under ``name``: never a shared session.

    When a group becomes a supergroup (the service message with
    ``migrate_to_chat_id``), the chat's sessions in this namespace move to the new
    chat id before the handler runs (keys by ``FSMStrategy`` only; with a custom
    key function, call ``manager.move`` yourself).

    ``initial``, if given, seeds a session that has nothing stored yet from the
    update that first touches it: ``initial(update, data)`` (``data`` holds
    aiogram's ``event_from_user``, ``event_chat``, ...) returns the session type
    and replaces the manager's ``initial()`` value before the handler runs.
    """

    def __init__(
        self,
        manager: SessionManager[T],
        *,
        name: str = "session",
        key: FSMStrategy | KeyFunction = FSMStrategy.USER_IN_CHAT,
        lazy: bool = False,
        initial: FirstTouch[T] | None = None,
    ) -> None:
        """Give handlers the sessions of ``manager``; ``.setup(dp)`` registers it.

        Args:
            manager: The namespace's ``SessionManager``.
            name: The handler argument (and key namespace) of the session; the turn
                is ``<name>_turn``. Must be a valid parameter name.
            key: An aiogram ``FSMStrategy`` (``USER_IN_CHAT``, ``CHAT``,
                ``GLOBAL_USER``, ``USER_IN_TOPIC``, ``CHAT_TOPIC``) or a function
                ``(event, data) -> str | None`` (None: no session for the update).
            lazy: Give handlers a ``LazySession`` that loads only when asked.
            initial: ``(update, data) -> value`` seeding a session with nothing
                stored from the update that first touches it.
        """
        if not name.isidentifier():
            raise ValueError(f"name must be a valid parameter name, got {name!r}")
        if initial is not None and not callable(initial):
            raise TypeError(
                "initial must be a function (update, data) -> session value, "
                f"got {type(initial).__name__}"
            )
        self.manager = manager
        self.initial = initial
        self.name = name
        self.lazy = lazy
        self._key_of: KeyFunction = strategy_key(key) if isinstance(key, FSMStrategy) else key
        #: Keys laid out by chat (a strategy): a chat migration can move them.
        self._chat_keys = isinstance(key, FSMStrategy)
        self._turn_name = f"{name}_turn"
        self._in_flight = 0
        self._drained = asyncio.Event()
        #: Dispatchers whose shutdown closes the manager (set up, or seen in an update).
        self._hooked: weakref.WeakSet[Dispatcher] = weakref.WeakSet()
        # Eager middlewares take turns in set-up order; lazy ones must be opened in
        # that order too. One global order for every update rules out deadlock.
        self._rank = next(_ranks)

    def setup(self, dp: Dispatcher) -> SessionMiddleware[T]:
        """Register on ``dp.update`` (after aiogram's context middleware) and hook the
        manager's start and close into the dispatcher's startup and shutdown."""
        dp.update.outer_middleware(self)
        dp.startup.register(self._on_startup)
        self._hook_shutdown(dp)
        return self

    def _hook_shutdown(self, dp: Dispatcher) -> None:
        if dp not in self._hooked:
            self._hooked.add(dp)
            dp.shutdown.register(self._on_shutdown)

    async def _on_startup(self) -> None:
        await self.manager.start()

    async def _on_shutdown(self) -> None:
        # Polling has stopped fetching, but updates it already fetched may still be
        # on their way to their session: let them finish before the manager stops
        # taking work, so no acknowledged update is turned away.
        # One close_timeout for both steps, not one each.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.manager.config.close_timeout
        if self._in_flight:
            self._drained.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(deadline):
                    await self._drained.wait()
        await self.manager.close(timeout=deadline - loop.time())

    def key_for(self, event: TelegramObject, data: dict[str, Any]) -> str | None:
        """The session key of ``event`` (``<name>:<bot id>:...``), or None when it
        has no session (no chat and no user)."""
        key = self._key_of(event, data)
        return None if key is None else namespaced(self.name, data, key)

    async def __call__(self, handler: Handler, event: TelegramObject, data: dict[str, Any]) -> Any:
        self._in_flight += 1
        dispatcher = data.get("dispatcher")
        if isinstance(dispatcher, Dispatcher) and dispatcher not in self._hooked:
            # Registered by hand (``dp.update.outer_middleware(...)``) rather than with
            # setup(): the dispatcher's shutdown must still write what is dirty.
            self._hook_shutdown(dispatcher)
        try:
            key = self.key_for(event, data)
            migration = migration_of(event) if self._chat_keys else None
            if migration is not None and key is not None:
                key = await self._follow_migration(key, data, *migration)
            if key is None:
                data[self.name] = None
                if not self.lazy:
                    data[self._turn_name] = None
                return await handler(event, data)
            if self.lazy:
                return await self._call_lazy(handler, event, data, key)
            data[_OPENED_KEY] = max(data.get(_OPENED_KEY, -1), self._rank)
            turn = self.manager.session(key)
            async with turn as value:
                # (Without a first-touch factory, the value as entered: no property call.)
                data[self.name] = value if self.initial is None else self._seeded(turn, event, data)
                data[self._turn_name] = turn
                return await handler(event, data)
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._drained.set()

    async def _follow_migration(self, key: str, data: dict[str, Any], old: int, new: int) -> str:
        """The group ``old`` became the supergroup ``new``: move this namespace's sessions
        of the chat there, and give this update its session under the new id."""
        bot_id = bot_id_of(data.get("bot"))
        await move_chat(self.manager, self.name, bot_id, old, new)
        old_prefix = chat_prefix(self.name, bot_id, old)
        if not key.startswith(old_prefix):
            return key
        return moved_key(key, old_prefix, chat_prefix(self.name, bot_id, new), old, new)

    def _seeded(self, turn: SessionTurn[T], event: TelegramObject, data: dict[str, Any]) -> T:
        """The turn's value, first seeded by ``initial`` if nothing is stored yet."""
        if self.initial is not None and turn.is_new:
            turn.value = self.initial(event, data)
        return turn.value

    async def _call_lazy(
        self, handler: Handler, event: TelegramObject, data: dict[str, Any], key: str
    ) -> Any:
        lazy = LazySession(
            self.manager, key, self._rank, data, lambda turn: self._seeded(turn, event, data)
        )
        data[self.name] = lazy
        try:
            result = await handler(event, data)
        except BaseException as exc:
            await lazy._finish(exc)
            raise
        await lazy._finish(None)
        return result
