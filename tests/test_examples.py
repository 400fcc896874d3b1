"""Every example runs: the demo end to end, and each bot through real updates."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiogram import Bot
from aiohttp import web

from actorsess import MemoryStorage, SessionManager, SqliteStorage
from actorsess.aiogram import ActorFSMStorage
from actorsess.testing import LocalBotAPI, free_port
from examples import apple_counter, demo, fsm_bot, shared_demo, typed_session, webhook_bot

from .aiogram_helpers import message_update


async def test_demo_runs_and_nothing_is_lost(tmp_path: Path, capsys: Any) -> None:
    """The demo's real polling run ends with every apple accounted for, twice in a row."""
    args = argparse.Namespace(
        users=30,
        messages=8,
        db=str(tmp_path / "demo.sqlite3"),
        flush_interval=0.05,
        max_cached=10,
        timeout=120,
        metrics_port=0,
        debug=False,
    )
    assert await demo.run_demo(args) == 0
    assert await demo.run_demo(args) == 0  # the counts continue from storage
    out = capsys.readouterr().out
    assert out.count("RESULT: nothing lost") == 2
    assert "highest count" in out
    # It served /metrics while it ran, scraped it at the end, and logged no debug event.
    assert out.count("metrics for Prometheus: http://127.0.0.1:") == 2
    assert out.count("/metrics          turns 240,") == 2
    assert "session.flush" in out and "debug" not in out


async def test_typed_session_bot(tmp_path: Path) -> None:
    """The dataclass session example counts apples and keeps recent words."""
    async with LocalBotAPI() as api:
        baskets = SessionManager(SqliteStorage(tmp_path / "b.db"), initial=typed_session.Basket)
        dp = typed_session.build_dispatcher(baskets)
        bot = api.bot()
        for word in ["a", "b", "c"]:
            await dp.feed_update(bot, message_update(5, word))
        await dp.emit_shutdown()
        await bot.session.close()
        assert api.sent[-1]["text"] == "🍏 3 apples; last words: a, b, c"


async def test_fsm_bot_order_flow(tmp_path: Path) -> None:
    """The FSM example walks through its order form, validating the amount."""
    async with LocalBotAPI() as api:
        fsm = ActorFSMStorage(SqliteStorage(tmp_path / "f.db"))
        dp = fsm_bot.build_dispatcher(fsm)
        bot = api.bot()
        for text in ["/order", "pear", "many", "3"]:
            await dp.feed_update(bot, message_update(5, text))
        await dp.emit_shutdown()
        await bot.session.close()
        assert [m["text"] for m in api.sent] == [
            "Which fruit?",
            "How many?",
            "Please send a number.",
            "Ordered 3 x pear",
        ]


async def test_webhook_bot_serves_updates_over_http() -> None:
    """Updates POSTed to the webhook reach the session and the bot replies."""
    async with LocalBotAPI() as api:
        sessions = SessionManager(MemoryStorage(), initial=apple_counter.new_session)
        dp = apple_counter.build_dispatcher(sessions)
        bot: Bot = api.bot()
        app = webhook_bot.build_app(bot, dp, secret="s3cret")
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        url = f"http://127.0.0.1:{port}{webhook_bot.WEBHOOK_PATH}"
        async with aiohttp.ClientSession() as client:
            for _ in range(3):
                update = message_update(77).model_dump(mode="json", exclude_none=True)
                headers = {"X-Telegram-Bot-Api-Secret-Token": "s3cret"}
                async with client.post(url, json=update, headers=headers) as response:
                    assert response.status == 200
        await api.wait_sent(3, timeout=10)
        await runner.cleanup()
        assert [m["text"] for m in api.sent] == [f"🍏 apples: {n}" for n in (2, 3, 4)]
        assert sessions.stats().dirty == 0


@pytest.mark.parametrize("ownership", ["shared", "partitioned"])
async def test_shared_demo_runs_and_nothing_is_lost(ownership: str, capsys: Any) -> None:
    """Parts two and three of the demo: 2 worker processes, updates at random, every
    apple counted."""
    assert await shared_demo.run_shared_demo(2, users=20, messages=5, ownership=ownership) == 0
    assert "RESULT: nothing lost" in capsys.readouterr().out
