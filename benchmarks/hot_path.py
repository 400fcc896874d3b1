"""Hot path of the library: ``async with m.session(k)`` on cached keys vs a bare Lock + dict.

Both do the same increment on 100 keys; the bare baseline is an
``asyncio.Lock`` per key and a dict, with no persistence, no rollback, no LRU.
actorsess runs twice, with ``strict_json=False`` (no read-back of the committed
bytes) and with the default ``strict_json=True``, to show what that check costs.
The last shape holds a typical 70-byte session instead of ``{"n": 0}``. The
last columns register a Prometheus collector (which counts every turn and times
one in 16) on the default configuration: what metrics cost when someone reads them.

    .venv/bin/python -m benchmarks.hot_path [--ops 200000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import CollectorRegistry

from actorsess import MemoryStorage, SessionConfig, SessionManager
from actorsess.prometheus import register_prometheus
from benchmarks._common import machine, median, quiet_logs, table

KEYS = [f"chat:{i}" for i in range(100)]


def small() -> dict[str, Any]:
    return {"n": 0}


def typical() -> dict[str, Any]:
    return {"n": 0, "name": "alice", "items": [1, 2, 3], "lang": "en", "step": "ask_name"}


async def bare_sequential(ops: int, initial: Callable[[], dict[str, Any]] = small) -> float:
    locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
    data: dict[str, dict[str, Any]] = {k: initial() for k in KEYS}
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


async def warm_manager(
    strict_json: bool, initial: Callable[[], dict[str, Any]] = small, observed: bool = False
) -> SessionManager[dict[str, Any]]:
    config = SessionConfig(flush_interval=0.5, strict_json=strict_json)
    manager = SessionManager(MemoryStorage(), initial=initial, config=config)
    if observed:
        register_prometheus(manager, registry=CollectorRegistry())
    await manager.start()
    await asyncio.gather(*(manager.get(k) for k in KEYS))
    return manager


async def actorsess_sequential(
    ops: int,
    strict_json: bool,
    initial: Callable[[], dict[str, Any]] = small,
    observed: bool = False,
) -> float:
    manager = await warm_manager(strict_json, initial, observed)
    started = time.perf_counter()
    for i in range(ops):
        async with manager.session(KEYS[i % 100]) as s:
            s["n"] += 1
    rate = ops / (time.perf_counter() - started)
    await manager.close()
    return rate


async def actorsess_gather(ops: int, strict_json: bool, observed: bool = False) -> float:
    manager = await warm_manager(strict_json, observed=observed)

    async def one(key: str) -> None:
        async with manager.session(key) as s:
            s["n"] += 1

    started = time.perf_counter()
    for start in range(0, ops, 1000):
        await asyncio.gather(*(one(KEYS[i % 100]) for i in range(start, start + 1000)))
    rate = ops / (time.perf_counter() - started)
    await manager.close()
    return rate


Bench = Callable[..., Awaitable[float]]


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ops", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    quiet_logs()
    shapes: list[tuple[str, Bench, Bench]] = [
        ("sequential", bare_sequential, actorsess_sequential),
        ("1000-way gather", bare_gather, actorsess_gather),
        (
            "sequential, 70-byte session",
            functools.partial(bare_sequential, initial=typical),
            functools.partial(actorsess_sequential, initial=typical),
        ),
    ]
    rows = []
    for shape, bare, ours in shapes:
        bare_rates: list[float] = []
        unchecked_rates: list[float] = []
        strict_rates: list[float] = []
        observed_rates: list[float] = []
        for _ in range(args.rounds):
            bare_rates.append(await bare(args.ops))
            unchecked_rates.append(await ours(args.ops, strict_json=False))
            strict_rates.append(await ours(args.ops, strict_json=True))
            observed_rates.append(await ours(args.ops, strict_json=True, observed=True))
        b, u, o = median(bare_rates), median(unchecked_rates), median(strict_rates)
        w = median(observed_rates)
        rows.append(
            [shape, b, u, f"{u / b:.2f}x", o, f"{o / b:.2f}x", f"{o / u:.2f}x", w, f"{w / o:.2f}x"]
        )
    print(f"\nhot path, cached keys, {args.ops} ops, median of {args.rounds}; {machine()}\n")
    headers = [
        "shape",
        "asyncio.Lock + dict ops/s",
        "actorsess, strict_json=False",
        "ratio",
        "actorsess (default)",
        "ratio",
        "default vs unchecked",
        "default + Prometheus collector",
        "collector vs default",
    ]
    print(table(headers, rows))


if __name__ == "__main__":
    asyncio.run(main())
