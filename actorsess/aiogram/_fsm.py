"""ActorFSMStorage: aiogram's FSM (states, data, scenes) on actorsess sessions.

State and data of one ``StorageKey`` live in one cached session
``{"state": ..., "data": {...}}``. With ``ActorEventIsolation``, the
update's key is held as one actor turn for the whole handler, and the FSM
calls made inside it read and write that held session directly (no second
turn, no I/O): the same cache serves both, and an update costs no Redis round
trip at all when the key is cached.
"""

from __future__ import annotations

import asyncio
import contextvars
import copy
import json
from collections.abc import AsyncGenerator, Mapping
from contextlib import asynccontextmanager
from typing import Any, NamedTuple

from aiogram import Dispatcher
from aiogram.exceptions import DataNotDictLikeError
from aiogram.fsm.state import State
from aiogram.fsm.storage.base import (
    BaseEventIsolation,
    BaseStorage,
    KeyBuilder,
    StateType,
    StorageKey,
)

from actorsess._config import SessionConfig
from actorsess._manager import SessionManager
from actorsess._turn import SessionTurn
from actorsess.aiogram._keys import escape_destiny, escape_part
from actorsess.aiogram._migration import ChatMigration
from actorsess.storage.base import Storage
from actorsess.storage.redis import RedisStorage

FSMRecord = dict[str, Any]


def _as_json(data: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``data`` as JSON keeps it, made where the handler can catch the error.

    Like aiogram's RedisStorage (``json.dumps``): tuples become lists and int keys
    strings, so what the handler reads back in the same update is what a reload
    gives; what JSON cannot hold (a datetime, NaN) raises TypeError / ValueError
    here, in ``set_data`` / ``update_data``, and the record keeps its last value.
    """
    copied: dict[str, Any] = json.loads(json.dumps(data, allow_nan=False))
    return copied


class _Held(NamedTuple):
    """The FSM turns one task holds through ActorEventIsolation."""

    task: asyncio.Task[Any] | None
    turns: dict[str, SessionTurn[FSMRecord]]


class _Lent(NamedTuple):
    """An isolation turn held by a task that was started, with a copy of its context,
    by a task holding turns of its own (its parent): the parent may act in it.

    aiogram_dialog's ``fg()`` is the case: the handler starts a task that takes the
    other user's turn, hands the handler that user's dialog manager and waits for
    the handler's block to end; the handler's writes belong to that turn, and
    waiting for it would never end.
    """

    turn: SessionTurn[FSMRecord]
    parent: asyncio.Task[Any]


def _empty_record() -> FSMRecord:
    return {"state": None, "data": {}}


class ActorFSMStorage(BaseStorage):
    """A drop-in aiogram ``BaseStorage`` (for ``RedisStorage``, ``MemoryStorage`` ...)."""

    def __init__(
        self,
        storage: Storage | SessionManager[FSMRecord],
        *,
        config: SessionConfig | None = None,
        key_builder: KeyBuilder | None = None,
    ) -> None:
        """Back aiogram's FSM by ``storage`` (a new manager is made), or share a manager.

        Args:
            storage: A ``Storage`` (``MemoryStorage()``, ``SqliteStorage(path)``,
                ``RedisStorage.from_url(url)``), or a ``SessionManager`` to share. A
                shared manager may start its sessions from any dict
                (``initial=dict`` works): missing ``state``/``data`` entries read as
                None and ``{}``.
            config: Settings of the manager made for ``storage`` (not allowed with
                a manager, which has its own).
            key_builder: An aiogram ``KeyBuilder`` laying out the session keys
                (``build(key)``, no part: state and data share one record), as for
                aiogram's own storages. The default never gives two StorageKeys one
                key; a custom one must not either. A group's move to a supergroup
                follows the default layout only.
        """
        if isinstance(storage, SessionManager):
            if config is not None:
                raise ValueError("pass config to the SessionManager, not to ActorFSMStorage")
            self.manager: SessionManager[FSMRecord] = storage
        else:
            self.manager = SessionManager(storage, initial=_empty_record, config=config)
        # The turns the current update holds through ActorEventIsolation, by key, with
        # the task that holds them: a task the handler spawns inherits this context
        # (asyncio copies it), but it is not the holder and must take turns of its own.
        self._held: contextvars.ContextVar[_Held | None] = contextvars.ContextVar(
            f"actorsess_fsm_held_{id(self)}", default=None
        )
        self.key_builder = key_builder
        #: Isolation turns whose holder's parent task may act in them, by key.
        self._lent: dict[str, _Lent] = {}

    @classmethod
    def from_url(cls, url: str, *, config: SessionConfig | None = None) -> ActorFSMStorage:
        """Like aiogram's ``RedisStorage.from_url``: sessions in the Redis at ``url``."""
        return cls(RedisStorage.from_url(url), config=config)

    def __repr__(self) -> str:
        return f"<ActorFSMStorage {self.manager!r}>"

    def create_isolation(self) -> ActorEventIsolation:
        """The events isolation to pass to ``Dispatcher(events_isolation=...)``."""
        return ActorEventIsolation(self)

    def setup(self, dp: Dispatcher) -> ActorFSMStorage:
        """Start with the dispatcher and flush everything when it shuts down; when a
        group becomes a supergroup, move its states and data to the new chat id."""
        dp.startup.register(self.manager.start)
        dp.shutdown.register(self.close)
        if self.key_builder is None:  # a custom layout cannot be moved by chat
            ChatMigration(self.manager, "fsm").setup_before_fsm(dp)
        return self

    def key_for(self, key: StorageKey) -> str:
        """The session key of ``key``: the key builder's, or ``session_key``'s."""
        if self.key_builder is not None:
            return self.key_builder.build(key)
        return self.session_key(key)

    @staticmethod
    def session_key(key: StorageKey) -> str:
        """``fsm:<bot>[:b<business connection>]:<chat>:<user>[:t<thread>]:<destiny>``;
        distinct storage keys never share a session key (see ``escape_destiny``)."""
        parts = ["fsm", str(key.bot_id)]
        if key.business_connection_id:
            parts.append("b" + escape_part(key.business_connection_id))
        parts += [str(key.chat_id), str(key.user_id)]
        if key.thread_id is not None:
            parts.append(f"t{key.thread_id}")
        parts.append(escape_destiny(key.destiny, after_thread=key.thread_id is not None))
        return ":".join(parts)

    # -- access: the held turn if this update has one, else a turn per call --

    def _held_record(self, key: str) -> FSMRecord | None:
        """The record of ``key`` if this very task holds its turn, or the task it
        started to hold it for it (see ``_Lent``); else None."""
        task = asyncio.current_task()
        held = self._held.get()
        if held is not None and held.task is task:
            turn = held.turns.get(key)
            if turn is not None:
                return turn.value
        lent = self._lent.get(key)
        if lent is not None and lent.parent is task:
            return lent.turn.value
        return None

    async def _read(self, key: StorageKey) -> FSMRecord:
        name = self.key_for(key)
        record = self._held_record(name)
        if record is not None:
            return record
        return await self.manager.get(name)

    async def _write(self, key: StorageKey, field: str, value: Any) -> None:
        name = self.key_for(key)
        record = self._held_record(name)
        if record is not None:
            record[field] = value
            return
        await self.manager.update(name, lambda r: r.__setitem__(field, value))

    # -- BaseStorage ---------------------------------------------------------

    async def set_state(self, key: StorageKey, state: StateType = None) -> None:
        await self._write(key, "state", state.state if isinstance(state, State) else state)

    async def get_state(self, key: StorageKey) -> str | None:
        state: str | None = (await self._read(key)).get("state")
        return state

    async def set_data(self, key: StorageKey, data: Mapping[str, Any]) -> None:
        if not isinstance(data, dict):
            msg = f"Data must be a dict or dict-like object, got {type(data).__name__}"
            raise DataNotDictLikeError(msg)
        await self._write(key, "data", _as_json(data))

    async def get_data(self, key: StorageKey) -> dict[str, Any]:
        data: dict[str, Any] = copy.deepcopy((await self._read(key)).get("data", {}))
        return data

    async def get_value(
        self, storage_key: StorageKey, dict_key: str, default: Any | None = None
    ) -> Any | None:
        """One value of the FSM data of ``storage_key``, or ``default``."""
        data = (await self._read(storage_key)).get("data", {})
        return copy.deepcopy(data.get(dict_key, default))

    async def update_data(self, key: StorageKey, data: Mapping[str, Any]) -> dict[str, Any]:
        """Merge ``data`` in one turn (atomic even without an events isolation)."""
        name = self.key_for(key)
        patch = _as_json(dict(data))
        record = self._held_record(name)
        if record is not None:
            record.setdefault("data", {}).update(patch)
            merged: dict[str, Any] = copy.deepcopy(record["data"])
            return merged

        def merge(r: FSMRecord) -> dict[str, Any]:
            r.setdefault("data", {}).update(patch)
            result: dict[str, Any] = copy.deepcopy(r["data"])
            return result

        return await self.manager.update(name, merge)

    async def close(self) -> None:
        """Close the manager: every change is written first."""
        await self.manager.close()


class ActorEventIsolation(BaseEventIsolation):
    """Serializes updates per FSM key on the storage's own actors (no extra locks).

    Unlike ``SimpleEventIsolation`` there is no lock object per chat kept
    forever (the actor is the lock and leaves with LRU eviction), and unlike
    ``RedisEventIsolation`` no Redis round trip per update. FSM changes are
    committed when the handler ends, also when it raises, as aiogram's own
    storages keep every ``set_state``/``set_data`` immediately.
    """

    def __init__(self, storage: ActorFSMStorage) -> None:
        """Made by ``ActorFSMStorage.create_isolation()``.

        Args:
            storage: The FSM storage whose keys it serializes.
        """
        self.storage = storage

    @asynccontextmanager
    async def lock(self, key: StorageKey) -> AsyncGenerator[None, None]:
        storage = self.storage
        name = storage.key_for(key)
        task = asyncio.current_task()
        outer = storage._held.get()
        parent = None
        if outer is not None and outer.task is not task:
            # Inherited from the task that started this one: not ours, but that task
            # may act in the turns this one takes (see _Lent).
            parent, outer = outer.task, None
        if outer is not None and name in outer.turns:
            yield  # already held by this update (nested dispatch)
            return
        turn = storage.manager.session(name)
        await turn.__aenter__()
        turns = dict(outer.turns) if outer is not None else {}
        turns[name] = turn
        token = storage._held.set(_Held(task, turns))
        lent = None if parent is None else _Lent(turn, parent)
        if lent is not None:
            storage._lent[name] = lent
        try:
            yield
        finally:
            storage._held.reset(token)
            if lent is not None and storage._lent.get(name) is lent:
                del storage._lent[name]
            await turn.__aexit__(None, None, None)

    async def close(self) -> None:
        """Nothing to release: the turns belong to the storage's manager."""
        return None
