"""What a turn on an idle session costs: the session kept as bytes is decoded and
given its actor again (``max_live``), against the same turn on a live session.

Turns go round-robin over ``--keys`` cached sessions of a typical small dict, so
with the default ``max_live`` (1024) every turn finds its session idle, as
bytes, and thaws it; with ``max_live`` at ``max_cached`` every session stays
live. The bare ``asyncio.Lock`` + dict over the same keys is the floor. The
difference between the two actorsess columns is the price of thawing, paid
once per session that comes back after more than ``max_live`` others were used.

    .venv/bin/python -m benchmarks.idle_turn [--keys 100000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import defaultdict
from typing import Any

from actorsess import MemoryStorage, SessionConfig, SessionManager
from benchmarks._common import machine, median, quiet_logs, table


def typical() -> dict[str, Any]:
    return {"n": 0, "name": "alice", "items": [1, 2, 3], "lang": "en", "step": "ask_name"}


async def bare(keys: list[str]) -> float:
    locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
    data = {key: typical() for key in keys}
    started = time.perf_counter()
    for key in keys:
        async with locks[key]:
            data[key]["n"] += 1
    return len(keys) / (time.perf_counter() - started)


async def actorsess(keys: list[str], max_live: int) -> float:
    config = SessionConfig(max_cached=len(keys) + 1, max_live=max_live, flush_interval=0.5)
    async with SessionManager(MemoryStorage(), initial=typical, config=config) as manager:
        for start in range(0, len(keys), 1000):
            await manager.get_many(keys[start : start + 1000])
        await manager.flush()  # written: the idle ones are kept as bytes
        started = time.perf_counter()
        for key in keys:
            async with manager.session(key) as session:
                session["n"] += 1
        rate = len(keys) / (time.perf_counter() - started)
        assert manager.stats().cached == len(keys)
    return rate


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--keys", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    quiet_logs()
    keys = [f"chat:{i}" for i in range(args.keys)]
    bare_rates: list[float] = []
    live_rates: list[float] = []
    idle_rates: list[float] = []
    for _ in range(args.rounds):
        bare_rates.append(await bare(keys))
        live_rates.append(await actorsess(keys, max_live=args.keys + 1))
        idle_rates.append(await actorsess(keys, max_live=1024))
    b, live, idle = median(bare_rates), median(live_rates), median(idle_rates)
    rows = [
        ["asyncio.Lock + dict (the floor)", b, f"{1e6 / b:.2f}", "1.00x", ""],
        ["actorsess, every session live", live, f"{1e6 / live:.2f}", f"{live / b:.2f}x", ""],
        [
            "actorsess default: every turn thaws its session",
            idle,
            f"{1e6 / idle:.2f}",
            f"{idle / b:.2f}x",
            f"{1e6 / idle - 1e6 / live:+.2f}",
        ],
    ]
    print(
        f"\none turn on each of {args.keys:,} cached sessions, median of {args.rounds}; "
        f"{machine()}\n"
    )
    headers = ["row", "turns/s", "µs per turn", "vs bare", "thaw µs (vs live)"]
    print(table(headers, rows))


if __name__ == "__main__":
    asyncio.run(main())
