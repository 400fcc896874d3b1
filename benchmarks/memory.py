"""Memory per cached idle session, and proof that idle sessions own no task.

Loads N sessions into a manager (no holders, all clean) and measures with
tracemalloc what the cache costs: with the default ``max_live`` (all but the
most recent 1,024 kept as their encoded bytes) against its encoded size, and
with every session live (``max_live=max_cached``) beyond the decoded values;
compares with aiogram's SimpleEventIsolation, which keeps one asyncio.Lock per
chat forever.

    .venv/bin/python -m benchmarks.memory [--sessions 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import tracemalloc
from collections import defaultdict
from collections.abc import Hashable

import orjson
from aiogram.fsm.storage.base import StorageKey

from actorsess import MemoryStorage, SessionConfig, SessionManager
from benchmarks._common import machine, quiet_logs, table


def value(i: int) -> dict[str, int | str]:
    return {"apple": i, "name": f"user {i}"}


async def actorsess_bytes(n: int, max_live: int) -> tuple[float, float, float, int, int]:
    """(bytes per session, beyond the decoded value, beyond the encoded session,
    tasks while idle, sessions cached)."""
    storage = MemoryStorage()
    config = SessionConfig(max_cached=n + 1, max_live=max_live, max_batch=5000)
    keys = [f"session:42:{i}:{i}" for i in range(n)]
    async with SessionManager(
        storage, initial=lambda: {"apple": 0, "name": ""}, config=config
    ) as w:
        for i, key in enumerate(keys):  # distinct data per session, written to storage
            async with w.session(key) as s:
                s.update(value(i))
    # A second manager loads them all: what it holds is only idle, clean sessions.
    async with SessionManager(
        storage, initial=lambda: {"apple": 0, "name": ""}, config=config
    ) as m:
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        await m.get_many(keys)
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        tasks = len(asyncio.all_tasks()) - 1  # not counting this benchmark's own task
        cached = m.stats().cached
    # What the values alone cost: the same dicts, measured the same way.
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    values = [value(i) for i in range(n)]
    data_bytes = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    del values
    encoded = sum(len(orjson.dumps(value(i))) for i in range(n)) / n
    per_session = (after - before) / n
    return per_session, per_session - data_bytes / n, per_session - encoded, tasks, cached


def simple_isolation_bytes(n: int) -> float:
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    locks: defaultdict[Hashable, asyncio.Lock] = defaultdict(asyncio.Lock)
    for i in range(n):
        _ = locks[StorageKey(bot_id=42, chat_id=i, user_id=i)]
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return (after - before) / n


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sessions", type=int, default=100_000)
    args = parser.parse_args()
    quiet_logs()
    n = args.sessions
    live, live_overhead, _, tasks, cached = await actorsess_bytes(n, max_live=n + 1)
    kept, _, kept_overhead, _, _ = await actorsess_bytes(n, max_live=1024)
    lock_bytes = simple_isolation_bytes(n)
    print(f"\n{n} cached idle sessions; {machine()}\n")
    print(
        table(
            ["what", "bytes per session", "notes"],
            [
                [
                    "actorsess default (max_live=1024), total per cached session",
                    kept,
                    "idle sessions as encoded bytes: key, entry, version + JSON",
                ],
                [
                    "actorsess default, beyond the encoded session",
                    kept_overhead,
                    "target <= 250",
                ],
                [
                    "actorsess, every session live, total",
                    live,
                    "actor + LRU entry + index + committed JSON + the value",
                ],
                ["actorsess, every session live, beyond the value", live_overhead, ""],
                [
                    "aiogram SimpleEventIsolation lock per chat",
                    lock_bytes,
                    "kept forever (no cleaner), no data",
                ],
                [
                    "asyncio tasks while idle",
                    float(tasks),
                    f"for {cached} cached sessions (the flusher is the one task)",
                ],
            ],
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
