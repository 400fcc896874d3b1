"""A polling bot process for signal tests and the crash-loss benchmark: it handles a
burst, reports, then waits.

    python -m harness.bot_process REDIS_URL USERS MESSAGES FLUSH_INTERVAL

Sessions go to Redis. It prints ``HANDLED <n>`` once every reply is sent and
then keeps polling until a signal stops it (aiogram's own SIGTERM/SIGINT
handling), after which the dispatcher shutdown closes the session manager.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import redis
from aiogram import Dispatcher, F
from aiogram.types import Message

from actorsess import RedisStorage, SessionConfig, SessionManager
from actorsess.aiogram import SessionMiddleware
from actorsess.testing import LocalBotAPI

ROOT = Path(__file__).resolve().parent.parent
BOT_ID = 123456789  # LocalBotAPI's default token


Apples = dict[str, int]


def new_session() -> Apples:
    return {"apple": 1}


def build_dispatcher(sessions: SessionManager[Apples]) -> Dispatcher:
    """The counter bot: one apple more per message, answered with the count."""
    dp = Dispatcher()
    SessionMiddleware(sessions, name="session").setup(dp)

    @dp.message(F.text)
    async def on_message(message: Message, session: Apples) -> None:
        session["apple"] += 1
        await message.answer(f"apples: {session['apple']}")

    return dp


def spawn(url: str, users: int, messages: int, flush_interval: float) -> subprocess.Popen[str]:
    """Start this script as a child process with piped, line-buffered output."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "harness.bot_process",
            url,
            str(users),
            str(messages),
            str(flush_interval),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def stored_gains(url: str, users: int) -> tuple[int, int]:
    """(users with a stored session, apples gained in total) read from Redis."""
    client = redis.Redis.from_url(url)
    keys = [f"actorsess:session:{BOT_ID}:{c}:{c}" for c in range(1, users + 1)]
    raw: list[bytes | None] = client.mget(keys)  # type: ignore[assignment]
    client.close()
    apples = [int(v.rsplit(b'"apple":', 1)[1].rstrip(b"}")) for v in raw if v]
    return len(apples), sum(apples) - len(apples)  # every session starts with 1 apple


async def main(url: str, users: int, messages: int, flush_interval: float) -> None:
    async with LocalBotAPI() as api:
        config = SessionConfig(flush_interval=flush_interval, close_timeout=30)
        sessions = SessionManager(RedisStorage.from_url(url), initial=new_session, config=config)
        dp = build_dispatcher(sessions)

        async def report() -> None:
            for chat in range(1, users + 1):
                for _ in range(messages):
                    api.user_message(chat, "apple")
            await api.wait_sent(users * messages, timeout=120)
            print(f"HANDLED {len(api.sent)}", flush=True)
            while True:  # keep the bot busy until the signal arrives
                await asyncio.sleep(0.005)
                api.user_message(1 + len(api.sent) % users, "apple")
                print(f"SENT {len(api.sent)}", flush=True)

        reporter = asyncio.create_task(report())
        await dp.start_polling(api.bot(), polling_timeout=1)
        reporter.cancel()
        print(f"STOPPED {len(api.sent)}", flush=True)


if __name__ == "__main__":
    url, users, messages, flush_interval = sys.argv[1:5]
    asyncio.run(main(url, int(users), int(messages), float(flush_interval)))
