"""A group that becomes a supergroup: its sessions (every namespace, the FSM) follow."""

from __future__ import annotations

from typing import Any

import pytest
from aiogram import Bot, Dispatcher
from aiogram.filters import Command
from aiogram.fsm.context import FSMContext
from aiogram.fsm.strategy import FSMStrategy
from aiogram.types import Message

from actorsess import MemoryStorage, SessionManager
from actorsess.aiogram import ActorFSMStorage, SessionMiddleware

from .aiogram_helpers import message_update
from .conftest import Events
from .helpers import counter

OLD, NEW = -100, -1009


def build(storage: Any) -> tuple[Dispatcher, list[Any]]:
    """A bot with a per-user namespace, a chat-wide one and the FSM, on ``storage``."""
    users = SessionManager(storage, initial=counter)
    chats = SessionManager(storage, initial=counter)
    fsm = ActorFSMStorage(storage)
    dp = Dispatcher(storage=fsm, events_isolation=fsm.create_isolation())
    fsm.setup(dp)
    SessionMiddleware(users, name="user").setup(dp)
    SessionMiddleware(chats, name="chat", key=FSMStrategy.CHAT).setup(dp)

    @dp.message(Command("form"))
    async def form(message: Message, state: FSMContext, user: Any, chat: Any) -> None:
        await state.set_state("form:name")
        await state.update_data(started_in=message.chat.id)

    @dp.message()
    async def count(message: Message, state: FSMContext, user: Any, chat: Any) -> None:
        if message.text is None:
            return  # the service message itself
        user["n"] += 1
        chat["n"] += 1
        seen.append((message.from_user.id if message.from_user else 0, user["n"], chat["n"]))
        seen.append(await state.get_state())

    seen: list[Any] = []
    return dp, seen


async def test_a_group_upgraded_to_a_supergroup_keeps_its_sessions(storage_factory: Any) -> None:
    bot = Bot("42:TEST")
    dp, seen = build(storage_factory())
    await dp.emit_startup(bot=bot)
    for user in (7, 8, 7):
        await dp.feed_update(bot, message_update(OLD, "hi", user_id=user, chat_type="group"))
    await dp.feed_update(bot, message_update(OLD, "/form", user_id=8, chat_type="group"))
    migrate = message_update(OLD, user_id=7, chat_type="group", migrate_to_chat_id=NEW)
    await dp.feed_update(bot, migrate)
    seen.clear()
    await dp.feed_update(bot, message_update(NEW, "hi", user_id=8, chat_type="supergroup"))
    assert seen == [(8, 2, 4), "form:name"]  # user 8's count, the chat's, user 8's form
    await dp.emit_shutdown(bot=bot)

    # Cold: a restart finds everything under the new id, nothing under the old one.
    dp, seen = build(storage_factory())
    await dp.emit_startup(bot=bot)
    await dp.feed_update(bot, message_update(NEW, "hi", user_id=7, chat_type="supergroup"))
    await dp.feed_update(bot, message_update(OLD, "hi", user_id=8, chat_type="group"))
    assert seen == [(7, 3, 5), None, (8, 1, 1), None]
    await dp.emit_shutdown(bot=bot)
    await bot.session.close()


async def test_move_keeps_a_newer_session_and_moves_the_rest(
    storage_factory: Any, events: Events
) -> None:
    async with SessionManager(storage_factory(), initial=counter, logger=events.logger) as m:
        for key, n in (("a", 1), ("b", 2), ("b2", 20)):
            async with m.session(key) as session:
                session["n"] = n
        assert await m.move({"a": "a2", "b": "b2", "none": "none2"}) == 1
        assert await m.get_many(["a", "a2", "b", "b2", "none2"]) == {
            "a": {"n": 0},
            "a2": {"n": 1},
            "b": {"n": 2},  # b2 already had a session: both kept
            "b2": {"n": 20},
            "none2": {"n": 0},
        }
    [moved] = events.named("session.moved")
    assert (moved["moved"], moved["kept"]) == (1, 2)
    async with SessionManager(storage_factory(), initial=counter) as again:
        found = {key: value async for key, value in again.scan()}
        assert found == {"a2": {"n": 1}, "b": {"n": 2}, "b2": {"n": 20}}


async def test_move_refuses_overlapping_keys() -> None:
    async with SessionManager(MemoryStorage(), initial=counter) as m:
        with pytest.raises(ValueError, match="distinct and not an old key"):
            await m.move({"a": "b", "b": "c"})
        with pytest.raises(ValueError, match="distinct and not an old key"):
            await m.move({"a": "c", "b": "c"})
        assert await m.move({}) == 0
