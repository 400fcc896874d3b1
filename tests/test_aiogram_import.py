"""Switching a live bot from aiogram's RedisStorage: states and data written by aiogram
itself are imported, and the users' forms go on where they were."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import redis.asyncio as redis_asyncio
from aiogram import Bot, Dispatcher
from aiogram.filters import Command
from aiogram.fsm.context import FSMContext
from aiogram.fsm.state import State, StatesGroup
from aiogram.fsm.storage.base import BaseStorage, DefaultKeyBuilder, KeyBuilder, StorageKey
from aiogram.fsm.storage.redis import RedisStorage as AiogramRedisStorage
from aiogram.types import Message

from actorsess.aiogram import ActorFSMStorage, import_aiogram_fsm
from actorsess.aiogram._import import parse_key

from .aiogram_helpers import message_update

BOT_ID = 42


class Form(StatesGroup):
    name = State()
    age = State()


def form_bot(storage: BaseStorage, replies: list[str]) -> Dispatcher:
    dp = Dispatcher(storage=storage)

    @dp.message(Command("start"))
    async def start(message: Message, state: FSMContext) -> None:
        await state.set_state(Form.name)

    @dp.message(Form.name)
    async def name(message: Message, state: FSMContext) -> None:
        await state.update_data(name=message.text)
        await state.set_state(Form.age)

    @dp.message(Form.age)
    async def age(message: Message, state: FSMContext) -> None:
        data = await state.get_data()
        replies.append(f"{data['name']} is {message.text}")
        await state.clear()

    return dp


async def say(dp: Dispatcher, bot: Bot, user: int, text: str) -> None:
    await dp.feed_update(bot, message_update(user, text))


@pytest.mark.parametrize(
    "builder",
    [
        DefaultKeyBuilder(prefix=f"fsm-{uuid.uuid4().hex[:8]}"),
        DefaultKeyBuilder(
            prefix=f"old-{uuid.uuid4().hex[:8]}", with_bot_id=True, with_destiny=True
        ),
    ],
    ids=["default-builder", "bot-id-and-destiny"],
)
async def test_forms_started_under_aiogram_redis_storage_go_on_after_the_switch(
    redis_url: str, storage_factory: Any, builder: DefaultKeyBuilder
) -> None:
    bot = Bot(f"{BOT_ID}:TEST")
    replies: list[str] = []
    old_storage = AiogramRedisStorage(redis_asyncio.Redis.from_url(redis_url), key_builder=builder)
    old = form_bot(old_storage, replies)
    for user, text in [(1, "/start"), (1, "Ann"), (2, "/start"), (3, "/start"), (3, "Cy")]:
        await say(old, bot, user, text)
    await say(old, bot, 3, "30")
    assert replies == ["Cy is 30"]
    await old_storage.close()

    source = AiogramRedisStorage(redis_asyncio.Redis.from_url(redis_url), key_builder=builder)
    fsm = ActorFSMStorage(storage_factory())
    bot_id = None if builder.with_bot_id else BOT_ID
    report = await import_aiogram_fsm(fsm, source, bot_id=bot_id, delete=True)
    assert (report.imported, report.kept, report.unreadable) == (2, 0, 0)
    assert report.deleted == 3  # user 1's state and data, user 2's state
    again = await import_aiogram_fsm(fsm, source, bot_id=bot_id)
    assert (again.imported, again.deleted) == (0, 0)  # nothing left to import
    await fsm.close()
    await source.close()

    # Cold: the new bot starts on what the import stored.
    fsm = ActorFSMStorage(storage_factory())
    new = form_bot(fsm, replies)
    await say(new, bot, 1, "33")
    await say(new, bot, 2, "Bo")
    await say(new, bot, 2, "40")
    assert replies == ["Cy is 30", "Ann is 33", "Bo is 40"]
    await fsm.close()
    await bot.session.close()


async def test_an_existing_record_is_kept_and_bad_settings_are_refused(redis_url: str) -> None:
    from actorsess import MemoryStorage

    builder = DefaultKeyBuilder(prefix=f"fsm-{uuid.uuid4().hex[:8]}")
    source = AiogramRedisStorage(redis_asyncio.Redis.from_url(redis_url), key_builder=builder)
    key = StorageKey(bot_id=BOT_ID, chat_id=5, user_id=5)
    await source.set_state(key, "old:state")
    fsm = ActorFSMStorage(MemoryStorage())
    await fsm.set_state(key, "new:state")  # the new bot already moved this user on
    report = await import_aiogram_fsm(fsm, source, bot_id=BOT_ID)
    assert (report.imported, report.kept) == (0, 1)
    assert await fsm.get_state(key) == "new:state"
    with pytest.raises(ValueError, match="pass bot_id="):
        await import_aiogram_fsm(fsm, source)

    class Custom(KeyBuilder):
        def build(self, key: StorageKey, part: Any = None) -> str:
            return "x"

    with pytest.raises(TypeError, match="got Custom"):
        await import_aiogram_fsm(fsm, AiogramRedisStorage(source.redis, key_builder=Custom()))
    await fsm.close()
    await source.close()


@pytest.mark.parametrize("with_bot_id", [False, True])
@pytest.mark.parametrize("with_destiny", [False, True])
def test_every_state_and_data_key_reads_back(with_bot_id: bool, with_destiny: bool) -> None:
    builder = DefaultKeyBuilder(
        with_bot_id=with_bot_id, with_destiny=with_destiny, with_business_connection_id=True
    )
    keys = [
        StorageKey(bot_id=BOT_ID, chat_id=-100, user_id=7),
        StorageKey(bot_id=BOT_ID, chat_id=-100, user_id=7, thread_id=5),
        StorageKey(bot_id=BOT_ID, chat_id=9, user_id=9, business_connection_id="bc1"),
    ]
    if with_destiny:
        keys.append(StorageKey(bot_id=BOT_ID, chat_id=1, user_id=2, destiny="aiogd:stack:x"))
        keys.append(StorageKey(bot_id=BOT_ID, chat_id=1, user_id=2, thread_id=3, destiny="d"))
    for key in keys:
        for part in ("state", "data"):
            assert parse_key(builder, builder.build(key, part), BOT_ID) == key
    assert parse_key(builder, builder.build(keys[0], "lock"), BOT_ID) is None
