"""An FSM form bot on ActorFSMStorage: existing aiogram FSM code, unchanged, on actorsess.

BOT_TOKEN=... ACTORSESS_REDIS_URL=redis://localhost:6379/0 python -m examples.fsm_bot
"""

from __future__ import annotations

import asyncio
import os

from aiogram import Bot, Dispatcher, F
from aiogram.filters import Command
from aiogram.fsm.context import FSMContext
from aiogram.fsm.state import State, StatesGroup
from aiogram.types import Message

from actorsess import SessionConfig
from actorsess.aiogram import ActorFSMStorage
from examples.apple_counter import make_storage


class Order(StatesGroup):
    fruit = State()
    amount = State()


def build_dispatcher(fsm: ActorFSMStorage) -> Dispatcher:
    dp = Dispatcher(storage=fsm, events_isolation=fsm.create_isolation())
    fsm.setup(dp)

    @dp.message(Command("order"))
    async def start(message: Message, state: FSMContext) -> None:
        await state.set_state(Order.fruit)
        await message.answer("Which fruit?")

    @dp.message(Order.fruit, F.text)
    async def fruit(message: Message, state: FSMContext) -> None:
        await state.update_data(fruit=message.text)
        await state.set_state(Order.amount)
        await message.answer("How many?")

    @dp.message(Order.amount, F.text.regexp(r"^\d+$"))
    async def amount(message: Message, state: FSMContext) -> None:
        data = await state.get_data()
        await state.clear()
        await message.answer(f"Ordered {message.text} x {data['fruit']}")

    @dp.message(Order.amount)
    async def not_a_number(message: Message) -> None:
        await message.answer("Please send a number.")

    return dp


async def main() -> None:
    fsm = ActorFSMStorage(make_storage("data/fsm.sqlite3"), config=SessionConfig.from_env())
    await build_dispatcher(fsm).start_polling(Bot(os.environ["BOT_TOKEN"]))


if __name__ == "__main__":
    asyncio.run(main())
