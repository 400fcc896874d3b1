"""The webhook worker of this project's multi-process tests, benchmarks and demo: the
apple counter on one Redis, ``ownership="shared"``, several of it behind a balancer.

    ACTORSESS_REDIS_URL=redis://127.0.0.1:6379/0 python -m harness.webhook_bot --port 0

One chat's updates may reach any worker, even several at once; each session is
owned by one worker at a time and handed over on demand (see the "Several
processes" page). The handler awaits once between reading and writing the
counter, as a real handler awaits a database or API call, so a lost update
would show.

Replies go back in the webhook response (no outgoing Bot API call), and the
response is sent once the handler is done, so a 200 means "handled".
The worker prints ``READY <port>`` once it serves, and on SIGTERM or SIGINT
writes every session and releases its leases before exiting.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal

import structlog
from aiogram import Bot, Dispatcher, F
from aiogram.methods import SendMessage
from aiogram.types import Message
from aiogram.webhook.aiohttp_server import SimpleRequestHandler, setup_application
from aiohttp import web

from actorsess import RedisStorage, SessionConfig, SessionManager
from actorsess.aiogram import SessionMiddleware

WEBHOOK_PATH = "/webhook"
#: A syntactically valid token for running without Telegram (tests, benchmarks).
OFFLINE_TOKEN = "123456789:LOCAL-actorsess-demo-token"

Apples = dict[str, int]


def new_session() -> Apples:
    return {"apple": 0}


def build_dispatcher(sessions: SessionManager[Apples]) -> Dispatcher:
    dp = Dispatcher()
    SessionMiddleware(sessions).setup(dp)

    @dp.message(F.text)
    async def on_message(message: Message, session: Apples) -> SendMessage:
        apples = session["apple"]
        await asyncio.sleep(0)  # stands for the database or API call a real handler awaits
        session["apple"] = apples + 1
        return message.answer(f"🍏 apples: {apples + 1}")

    return dp


def build_app(redis_url: str, token: str) -> web.Application:
    config = SessionConfig.from_env()
    sessions = SessionManager(RedisStorage.from_url(redis_url), initial=new_session, config=config)
    dp = build_dispatcher(sessions)
    app = web.Application()
    SimpleRequestHandler(dispatcher=dp, bot=Bot(token), handle_in_background=False).register(
        app, WEBHOOK_PATH
    )
    setup_application(app, dp)
    return app


async def serve(app: web.Application, host: str, port: int) -> None:
    """Serve ``app`` until SIGTERM or SIGINT, printing ``READY <port>`` once it listens;
    the app's cleanup then runs the dispatcher's shutdown (final flush, leases released)."""
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"READY {runner.addresses[0][1]}", flush=True)
    await stop.wait()
    await runner.cleanup()
    print("STOPPED", flush=True)


async def stored_apples(redis_url: str, chats: list[int]) -> dict[int, int]:
    """Apples per private chat as stored in Redis, read as an admin process does: with a
    shared-mode manager of its own, which the workers hand the sessions to."""
    bot_id = OFFLINE_TOKEN.split(":", 1)[0]
    keys = {chat: f"session:{bot_id}:{chat}:{chat}" for chat in chats}
    shared = SessionConfig(ownership="shared")
    storage = RedisStorage.from_url(redis_url)
    async with SessionManager(storage, initial=new_session, config=shared) as reader:
        values = await reader.get_many(keys.values())
    return {chat: values[key]["apple"] for chat, key in keys.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080, help="0 picks a free port")
    args = parser.parse_args()
    level = os.environ.get("LOG_LEVEL", "WARNING").upper()
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level))
    )
    os.environ.setdefault("ACTORSESS_OWNERSHIP", "shared")  # what this example is about
    redis_url = os.environ.get("ACTORSESS_REDIS_URL", "redis://127.0.0.1:6379/0")
    token = os.environ.get("BOT_TOKEN", OFFLINE_TOKEN)
    asyncio.run(serve(build_app(redis_url, token), args.host, args.port))


if __name__ == "__main__":
    main()
