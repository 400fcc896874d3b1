"""Real polling over HTTP against LocalBotAPI: keys by topic, concurrency, shutdown flush."""

from __future__ import annotations

import asyncio
import random

import pytest
from aiogram import Dispatcher
from aiogram.fsm.strategy import FSMStrategy
from aiogram.types import Message

from actorsess import MemoryStorage, SessionConfig, SessionManager
from actorsess.aiogram import SessionMiddleware
from actorsess.testing import LocalBotAPI

# Starts real processes, or private servers that it faults: -m 'not process' skips it.
pytestmark = pytest.mark.process


async def test_topic_sessions_under_real_polling() -> None:
    """CHAT_TOPIC sessions count per forum topic, across users, under real polling."""
    storage = MemoryStorage()
    manager = SessionManager(
        storage, initial=lambda: {"n": 0}, config=SessionConfig(flush_interval=3600)
    )
    dp = Dispatcher()
    SessionMiddleware(manager, key=FSMStrategy.CHAT_TOPIC).setup(dp)

    @dp.message()
    async def handler(message: Message, session: dict[str, int]) -> None:
        n = session["n"]
        await asyncio.sleep(0)
        session["n"] = n + 1
        await message.answer(f"topic {message.message_thread_id}: {session['n']}")

    async with LocalBotAPI() as api:
        plan = [(topic, user) for topic in (5, 6) for user in (1, 2, 3) for _ in range(20)]
        random.Random(2).shuffle(plan)
        for topic, user in plan:
            api.user_message(-100, "hi", user_id=user, chat_type="supergroup", thread_id=topic)
        polling = asyncio.create_task(
            dp.start_polling(api.bot(), handle_signals=False, polling_timeout=1)
        )
        await api.wait_sent(len(plan), timeout=60)
        await dp.stop_polling()
        await polling
    # the dispatcher's shutdown closed the manager: everything is in storage
    bot_id = api.bot_id
    assert storage.raw(f"actorsess:session:{bot_id}:-100:-100:t5") == b'as1:60:{"n":60}'
    assert storage.raw(f"actorsess:session:{bot_id}:-100:-100:t6") == b'as1:60:{"n":60}'
    assert {m["text"] for m in api.sent} >= {"topic 5: 60", "topic 6: 60"}
