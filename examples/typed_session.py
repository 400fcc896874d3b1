"""A typed session: ``initial`` returns a dataclass, so ``session`` is typed for mypy.

BOT_TOKEN=... python -m examples.typed_session
"""

from __future__ import annotations

import asyncio
import dataclasses
import os

from aiogram import Bot, Dispatcher, F
from aiogram.types import Message

from actorsess import SessionConfig, SessionManager, SqliteStorage
from actorsess.aiogram import SessionMiddleware


@dataclasses.dataclass
class Basket:
    apples: int = 0
    history: list[str] = dataclasses.field(default_factory=list)


def build_dispatcher(baskets: SessionManager[Basket]) -> Dispatcher:
    dp = Dispatcher()
    SessionMiddleware(baskets, name="basket").setup(dp)

    @dp.message(F.text)
    async def on_message(message: Message, basket: Basket) -> None:
        basket.apples += 1  # mypy knows basket.apples is an int
        basket.history = [*basket.history[-4:], message.text or ""]
        await message.answer(f"🍏 {basket.apples} apples; last words: {', '.join(basket.history)}")

    return dp


async def main() -> None:
    baskets = SessionManager(
        SqliteStorage("data/baskets.sqlite3"), initial=Basket, config=SessionConfig.from_env()
    )
    await build_dispatcher(baskets).start_polling(Bot(os.environ["BOT_TOKEN"]))


if __name__ == "__main__":
    asyncio.run(main())
