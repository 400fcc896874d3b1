"""Hot path of the library: ``async with m.session(k)`` on cached keys vs a bare Lock + dict.

Both do the same increment on 100 keys; the bare baseline is an
``asyncio.Lock`` per key and a dict, with no persistence, no rollback, no LRU.

    .venv/bin/python -m benchmarks.hot_path [--ops 200000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable

from actorsess import MemoryStorage, SessionConfig, SessionManager
from benchmarks._common import machine, median, quiet_logs, table

KEYS = [f"chat:{i}" for i in range(100)]


async def bare_sequential(ops: int) -> float:
    locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
    data: dict[str, dict[str, int]] = {k: {"n": 0} for k in KEYS}
    started = time.perf_counter()
    for i in range(ops):
        key = KEYS[i % 100]
        async with locks[key]:
            data[key]["n"] += 1
    return ops / (time.perf_counter() - started)


async def bare_gather(ops: int) -> float:
    locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
    data: dict[str, dict[str, int]] = {k: {"n": 0} for k in KEYS}

    async def one(key: str) -> None:
        async with locks[key]:
            data[key]["n"] += 1

    started = time.perf_counter()
    for start in range(0, ops, 1000):
        await asyncio.gather(*(one(KEYS[i % 100]) for i in range(start, start + 1000)))
    return ops / (time.perf_counter() - started)


async def warm_manager() -> SessionManager[dict[str, int]]:
    manager = SessionManager(
        MemoryStorage(), initial=lambda: {"n": 0}, config=SessionConfig(flush_interval=0.5)
    )
    await manager.start()
    await asyncio.gather(*(manager.get(k) for k in KEYS))
    return manager


async def actorsess_sequential(ops: int) -> float:
    manager = await warm_manager()
    started = time.perf_counter()
    for i in range(ops):
        async with manager.session(KEYS[i % 100]) as s:
            s["n"] += 1
    rate = ops / (time.perf_counter() - started)
    await manager.close()
    return rate


async def actorsess_gather(ops: int) -> float:
    manager = await warm_manager()

    async def one(key: str) -> None:
        async with manager.session(key) as s:
            s["n"] += 1

    started = time.perf_counter()
    for start in range(0, ops, 1000):
        await asyncio.gather(*(one(KEYS[i % 100]) for i in range(start, start + 1000)))
    rate = ops / (time.perf_counter() - started)
    await manager.close()
    return rate


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ops", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    quiet_logs()
    shapes: list[
        tuple[str, Callable[[int], Awaitable[float]], Callable[[int], Awaitable[float]]]
    ] = [
        ("sequential", bare_sequential, actorsess_sequential),
        ("1000-way gather", bare_gather, actorsess_gather),
    ]
    rows = []
    for shape, bare, ours in shapes:
        bare_rates, our_rates = [], []
        for _ in range(args.rounds):
            bare_rates.append(await bare(args.ops))
            our_rates.append(await ours(args.ops))
        b, o = median(bare_rates), median(our_rates)
        rows.append([shape, b, o, f"{o / b:.2f}x"])
    print(f"\nhot path, cached keys, {args.ops} ops, median of {args.rounds}; {machine()}\n")
    print(table(["shape", "asyncio.Lock + dict ops/s", "actorsess session() ops/s", "ratio"], rows))


if __name__ == "__main__":
    asyncio.run(main())
