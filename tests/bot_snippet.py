"""Runs a documented bot (a code block that builds ``dp`` and starts polling only
under ``if __name__ == "__main__"``) against a local Bot API server: a user sends it
messages, and it must answer each.

Also a script, so that a fresh virtualenv holding only the installed wheel can run
the README's quick start: ``python tests/bot_snippet.py bot.py``.
"""

from __future__ import annotations

import asyncio
import sys
import types

from aiogram import Dispatcher

from actorsess.testing import LocalBotAPI

#: What a documented bot is sent; the first message is a command, as a user's is.
MESSAGES = ("/start", "apple", "apple")


def is_bot(code: str) -> bool:
    """A block that is a bot: it polls only when run as a script."""
    return 'if __name__ == "__main__":' in code and "start_polling(" in code


async def drive(dp: Dispatcher, messages: tuple[str, ...] = MESSAGES) -> list[str]:
    """Send ``messages`` from one user to ``dp`` under long polling; the replies.

    Every message must be answered: a documented bot that stays silent fails."""
    async with LocalBotAPI() as api:
        for text in messages:
            api.user_message(chat_id=42, text=text)
        polling = asyncio.create_task(
            dp.start_polling(api.bot(), handle_signals=False, polling_timeout=1)
        )
        try:
            await api.wait_sent(len(messages), timeout=30)
        finally:
            await dp.stop_polling()
            await polling
        return [str(sent["text"]) for sent in api.sent]


def run_bot_block(code: str, where: str) -> list[str]:
    """Execute a bot block as a module (not as ``__main__``) and drive its ``dp``."""
    module = types.ModuleType("documented_bot")
    sys.modules[module.__name__] = module  # dataclasses look their module up
    try:
        exec(compile(code, where, "exec"), module.__dict__)
    finally:
        del sys.modules[module.__name__]
    dp = module.__dict__.get("dp")
    if not isinstance(dp, Dispatcher):
        raise AssertionError(f"{where}: a bot block must define its Dispatcher as `dp`")
    return asyncio.run(drive(dp))


if __name__ == "__main__":
    path = sys.argv[1]
    with open(path, encoding="utf-8") as source:
        replies = run_bot_block(source.read(), path)
    for reply in replies:  # marked: the bot's own log lines go to stdout too
        print("REPLY", reply)
