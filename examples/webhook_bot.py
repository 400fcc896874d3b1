"""The apple counter behind a webhook (aiohttp), as deployed behind a reverse proxy.

BOT_TOKEN=... WEBHOOK_URL=https://example.org/webhook python -m examples.webhook_bot
"""

from __future__ import annotations

import os

from aiogram import Bot, Dispatcher
from aiogram.webhook.aiohttp_server import SimpleRequestHandler, setup_application
from aiohttp import web

from actorsess import SessionConfig, SessionManager
from examples.apple_counter import build_dispatcher, make_storage, new_session

WEBHOOK_PATH = "/webhook"


def build_app(bot: Bot, dp: Dispatcher, *, secret: str | None = None) -> web.Application:
    """An aiohttp app serving the webhook; the dispatcher's startup/shutdown (and so the
    session manager's start and final flush) follow the app's lifecycle."""
    app = web.Application()
    SimpleRequestHandler(dispatcher=dp, bot=bot, secret_token=secret).register(app, WEBHOOK_PATH)
    setup_application(app, dp, bot=bot)
    return app


def main() -> None:
    bot = Bot(os.environ["BOT_TOKEN"])
    sessions = SessionManager(make_storage(), initial=new_session, config=SessionConfig.from_env())
    dp = build_dispatcher(sessions)
    webhook_url = os.environ["WEBHOOK_URL"]

    async def register_webhook() -> None:
        await bot.set_webhook(webhook_url, secret_token=os.environ.get("WEBHOOK_SECRET"))

    dp.startup.register(register_webhook)
    app = build_app(bot, dp, secret=os.environ.get("WEBHOOK_SECRET"))
    web.run_app(app, host="0.0.0.0", port=int(os.environ.get("PORT", "8080")))


if __name__ == "__main__":
    main()
