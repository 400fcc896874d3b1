"""The apple counter bot: one apple more per message, per user in each chat.

Run against real Telegram with ``BOT_TOKEN=... python -m examples.apple_counter``
(sessions in ``data/apples.sqlite3``, or Redis when ``ACTORSESS_REDIS_URL`` is set).
"""

from __future__ import annotations

import asyncio
import os

from aiogram import Dispatcher, F
from aiogram.types import Message

from actorsess import RedisStorage, SessionConfig, SessionManager, SqliteStorage, Storage
from actorsess.aiogram import SessionMiddleware

Apples = dict[str, int]


def new_session() -> Apples:
    return {"apple": 1}


def make_storage(sqlite_path: str = "data/apples.sqlite3") -> Storage:
    """Redis when ``ACTORSESS_REDIS_URL`` is set, else the embedded SQLite file."""
    url = os.environ.get("ACTORSESS_REDIS_URL")
    return RedisStorage.from_url(url) if url else SqliteStorage(sqlite_path)


def build_dispatcher(sessions: SessionManager[Apples]) -> Dispatcher:
    dp = Dispatcher()
    SessionMiddleware(sessions, name="session").setup(dp)

    @dp.message(F.text)
    async def on_message(message: Message, session: Apples) -> None:
        session["apple"] += 1
        await message.answer(f"🍏 apples: {session['apple']}")

    return dp


async def main() -> None:
    from aiogram import Bot

    sessions = SessionManager(make_storage(), initial=new_session, config=SessionConfig.from_env())
    dp = build_dispatcher(sessions)
    await dp.start_polling(Bot(os.environ["BOT_TOKEN"]))


if __name__ == "__main__":
    asyncio.run(main())
