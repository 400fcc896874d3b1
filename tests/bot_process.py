"""A polling bot process for signal tests: it handles a burst, reports, then waits.

    python -m tests.bot_process REDIS_URL USERS MESSAGES FLUSH_INTERVAL

Sessions go to Redis. It prints ``HANDLED <n>`` once every reply is sent and
then keeps polling until a signal stops it (aiogram's own SIGTERM/SIGINT
handling), after which the dispatcher shutdown closes the session manager.
"""

from __future__ import annotations

import asyncio
import sys

from actorsess import RedisStorage, SessionConfig, SessionManager
from actorsess.testing import LocalBotAPI
from examples.apple_counter import build_dispatcher, new_session


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
