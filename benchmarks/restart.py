"""A bot restarted with many active chats: every chat sends one message at once,
and nothing of theirs is cached yet. How long until every chat is answered?

Each chat already has a session in Redis (a counter at 1, written before the
"restart"); then a new process state (new storage, new dispatcher, empty cache)
takes one real Update per chat through a real aiogram ``Dispatcher``, 256 in
flight, each handler reading the counter and writing counter + 1. Rows:
aiogram's RedisStorage (default isolation, and with SimpleEventIsolation; on a
blocking pool of 100 connections, as in the end-to-end benchmark),
actorsess's middleware loading on demand (misses of one event-loop iteration
share one batched load), and actorsess warming the known active chats with
``warm()`` before taking updates (the warm-up is inside the time). Afterwards
every counter must read 2.

    .venv/bin/python -m benchmarks.restart [--chats 100000] [--rounds 1]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable

import redis.asyncio as redis_asyncio
from aiogram import Bot, Dispatcher
from aiogram.fsm.storage.base import DefaultKeyBuilder, StorageKey
from aiogram.fsm.storage.memory import SimpleEventIsolation
from aiogram.types import Update

import actorsess
from actorsess.aiogram import session_key
from actorsess.testing import RedisServer
from benchmarks._common import (
    flush_redis,
    machine,
    median,
    percentile,
    quiet_logs,
    redis_commands,
    table,
)
from benchmarks.e2e_aiogram import (
    BOT_ID,
    fsm_counts,
    fsm_dispatcher,
    message_update,
    middleware_dispatcher,
    peer_redis,
)

IN_FLIGHT = 256


def manager(url: str, chats: int) -> actorsess.SessionManager[dict[str, int]]:
    config = actorsess.SessionConfig(flush_interval=1.0, max_cached=chats + 1)
    return actorsess.SessionManager(
        actorsess.RedisStorage.from_url(url), initial=lambda: {"n": 0}, config=config
    )


def keys_of(chats: list[int]) -> list[str]:
    return [session_key(bot_id=BOT_ID, chat_id=c, user_id=c) for c in chats]


async def seed_actorsess(url: str, chats: list[int]) -> None:
    async with manager(url, len(chats)) as before_restart:
        for key in keys_of(chats):
            async with before_restart.session(key) as session:
                session["n"] = 1


async def seed_aiogram(url: str, chats: list[int]) -> None:
    client = redis_asyncio.Redis.from_url(url)
    builder = DefaultKeyBuilder()
    async with client.pipeline(transaction=False) as pipe:
        for chat in chats:
            key = StorageKey(bot_id=BOT_ID, chat_id=chat, user_id=chat)
            pipe.set(builder.build(key, "data"), b'{"n": 1}')
        await pipe.execute()
    await client.aclose()


async def answer_all(dp: Dispatcher, updates: list[Update]) -> tuple[list[float], Bot]:
    """Feed ``updates``, ``IN_FLIGHT`` at a time; the latency of each."""
    bot = Bot(f"{BOT_ID}:BENCH")
    limiter = asyncio.Semaphore(IN_FLIGHT)
    latencies: list[float] = []

    async def one(update: Update) -> None:
        async with limiter:
            started = time.perf_counter()
            await dp.feed_update(bot, update)
            latencies.append(time.perf_counter() - started)

    await dp.emit_startup()
    await asyncio.gather(*(one(update) for update in updates))
    await dp.emit_shutdown()
    return latencies, bot


#: Seconds until all answered, each update's latency, counters not at 2, Redis
#: commands while answering (scripts' inner ones included).
Row = tuple[float, list[float], int, int]


async def aiogram_row(url: str, chats: list[int], isolation: bool) -> Row:
    await seed_aiogram(url, chats)
    storage = peer_redis(url)
    events_isolation = SimpleEventIsolation() if isolation else None
    dp = fsm_dispatcher(storage, events_isolation)
    updates = [message_update(c) for c in chats]
    before = redis_commands(url)
    started = time.perf_counter()
    latencies, bot = await answer_all(dp, updates)
    elapsed = time.perf_counter() - started
    commands = redis_commands(url) - before - 1  # less the INFO that counted
    counts = await fsm_counts(storage, chats)
    await storage.close()
    await bot.session.close()
    return elapsed, latencies, sum(1 for n in counts if n != 2), commands


async def actorsess_row(url: str, chats: list[int], warm: bool) -> Row:
    await seed_actorsess(url, chats)
    after_restart = manager(url, len(chats))
    dp = middleware_dispatcher(after_restart)

    updates = [message_update(c) for c in chats]
    before = redis_commands(url)
    started = time.perf_counter()
    if warm:
        await after_restart.warm(keys_of(chats))
    latencies, bot = await answer_all(dp, updates)
    elapsed = time.perf_counter() - started
    await after_restart.close()  # the last changes written: part of the commands
    commands = redis_commands(url) - before - 1
    await bot.session.close()
    async with manager(url, len(chats)) as reader:
        values = await reader.get_many(keys_of(chats))
    return elapsed, latencies, sum(1 for v in values.values() if v["n"] != 2), commands


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--chats", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    quiet_logs()
    chats = list(range(1, args.chats + 1))
    rows: dict[str, Callable[[str], Awaitable[Row]]] = {
        "aiogram RedisStorage (default isolation)": lambda url: aiogram_row(url, chats, False),
        "aiogram RedisStorage + SimpleEventIsolation": lambda url: aiogram_row(url, chats, True),
        "actorsess SessionMiddleware, loads on demand": lambda url: actorsess_row(
            url, chats, False
        ),
        "actorsess SessionMiddleware, warm() first": lambda url: actorsess_row(url, chats, True),
    }
    results: dict[str, list[Row]] = {name: [] for name in rows}
    with RedisServer() as server:
        for _ in range(args.rounds):
            for name, run in rows.items():
                flush_redis(server.url)
                results[name].append(await run(server.url))
    base = median([row[0] for row in results["aiogram RedisStorage + SimpleEventIsolation"]])
    table_rows = []
    for name, runs in results.items():
        elapsed = median([row[0] for row in runs])
        latencies = sorted(runs, key=lambda row: row[0])[len(runs) // 2][1]
        wrong = max(row[2] for row in runs)
        commands = median([row[3] for row in runs]) / len(chats)
        table_rows.append(
            [
                name,
                f"{elapsed:.2f}",
                f"{base / elapsed:.2f}x",
                f"{len(chats) / elapsed:,.0f}",
                f"{percentile(latencies, 0.5) * 1000:.1f}",
                f"{percentile(latencies, 0.99) * 1000:.1f}",
                f"{commands:.2f}",
                wrong,
            ]
        )
    print(
        f"\nrestart with {len(chats):,} active chats, one message each, {IN_FLIGHT} in flight, "
        f"median of {args.rounds}; {machine()}\n"
    )
    headers = [
        "row",
        "s until all answered",
        "speed vs RedisStorage + isolation",
        "updates/s",
        "p50 ms",
        "p99 ms",
        "Redis cmds/update",
        "counters wrong",
    ]
    print(table(headers, table_rows))


if __name__ == "__main__":
    asyncio.run(main())
