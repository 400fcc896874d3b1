"""A webhook worker with aiogram's own RedisStorage, the peer in benchmarks/multi_process.py.

    python -m benchmarks._aiogram_worker --port 0 --isolation none|simple|redis [--memory]

The same handler as harness.webhook_bot (read the counter, await once,
write it + 1, reply in the webhook response), on aiogram's FSM data instead of
an actorsess session. Prints ``READY <port>``; exits cleanly on SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import os

from aiogram import Bot, Dispatcher, F
from aiogram.fsm.context import FSMContext
from aiogram.fsm.storage.base import BaseEventIsolation, BaseStorage
from aiogram.fsm.storage.memory import MemoryStorage, SimpleEventIsolation
from aiogram.methods import SendMessage
from aiogram.types import Message
from aiogram.webhook.aiohttp_server import SimpleRequestHandler, setup_application
from aiohttp import web

from benchmarks._common import quiet_logs
from benchmarks.e2e_aiogram import peer_redis
from harness.webhook_bot import OFFLINE_TOKEN, REPLY, WEBHOOK_PATH, freeze_start_up, serve


def build_app(redis_url: str, isolation_kind: str, in_memory: bool) -> web.Application:
    storage: BaseStorage
    if in_memory:
        storage = MemoryStorage()
        isolation: BaseEventIsolation | None = None
    else:
        redis_storage = peer_redis(redis_url)
        storage = redis_storage
        isolation = {
            "none": None,
            "simple": SimpleEventIsolation(),
            "redis": redis_storage.create_isolation(),
        }[isolation_kind]
    dp = (
        Dispatcher(storage=storage, events_isolation=isolation)
        if isolation
        else Dispatcher(storage=storage)
    )

    @dp.message(F.text)
    async def on_message(message: Message, state: FSMContext) -> SendMessage | None:
        apples = (await state.get_data()).get("apple", 0)
        await asyncio.sleep(0)
        await state.update_data(apple=apples + 1)
        if not REPLY:
            return None
        return message.answer(f"🍏 apples: {apples + 1}")

    app = web.Application()
    SimpleRequestHandler(
        dispatcher=dp, bot=Bot(OFFLINE_TOKEN), handle_in_background=False
    ).register(app, WEBHOOK_PATH)
    setup_application(app, dp)
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--isolation", choices=["none", "simple", "redis"], default="redis")
    parser.add_argument(
        "--memory", action="store_true", help="MemoryStorage: no persistence (the ceiling)"
    )
    args = parser.parse_args()
    quiet_logs()
    app = build_app(os.environ["ACTORSESS_REDIS_URL"], args.isolation, args.memory)
    freeze_start_up()
    asyncio.run(serve(app, "127.0.0.1", args.port))


if __name__ == "__main__":
    main()
