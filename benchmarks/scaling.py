"""Scaling curves: throughput vs number of chats and vs updates in flight, plus a PNG.

Rows: aiogram MemoryStorage (no persistence: the ceiling), aiogram
RedisStorage + SimpleEventIsolation (the lossless peer) and actorsess
SessionMiddleware on Redis, all through a real Dispatcher, the handler
reading, awaiting once and writing a counter.

    .venv/bin/python -m benchmarks.scaling [--updates 20000] [--png docs/img/scaling.png]
"""

from __future__ import annotations

import argparse
import asyncio
import random
from collections.abc import Awaitable, Callable

from aiogram.fsm.storage.memory import MemoryStorage, SimpleEventIsolation
from aiogram.types import Update

from actorsess.testing import RedisServer
from benchmarks._common import machine, quiet_logs, table
from benchmarks.e2e_aiogram import Result, message_update, peer_redis, run_actorsess, run_fsm

CHATS = [10, 100, 1_000, 10_000, 100_000]
IN_FLIGHT = [1, 16, 64, 256, 1024]


def spread_updates(total: int, chats: int, seed: int = 3) -> list[Update]:
    """``total`` updates, each from a chat drawn at random among ``chats``."""
    rng = random.Random(seed)
    return [message_update(rng.randrange(chats) + 1) for _ in range(total)]


Row = Callable[[str, list[Update], int], Awaitable[Result]]


def rows_for(url: str) -> dict[str, Row]:
    return {
        "aiogram MemoryStorage (ceiling)": lambda name, updates, in_flight: run_fsm(
            name, None, lambda: (MemoryStorage(), None), updates, in_flight, MemoryStorage
        ),
        "aiogram Redis + SimpleEventIsolation": lambda name, updates, in_flight: run_fsm(
            name,
            url,
            lambda: (peer_redis(url), SimpleEventIsolation()),
            updates,
            in_flight,
            lambda: peer_redis(url),
        ),
        "actorsess (Redis)": lambda name, updates, in_flight: run_actorsess(
            url, updates, in_flight
        ),
    }


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--updates", type=int, default=20_000)
    parser.add_argument("--png", default="docs/img/scaling.png")
    args = parser.parse_args()
    quiet_logs()
    by_chats: dict[str, list[float]] = {}
    by_flight: dict[str, list[float]] = {}
    with RedisServer() as server:
        rows = rows_for(server.url)
        for chats in CHATS:
            updates = spread_updates(args.updates, chats)
            for name, run in rows.items():
                result = await run(name, updates, 256)
                by_chats.setdefault(name, []).append(result.rate)
        updates = spread_updates(args.updates, 200)
        for in_flight in IN_FLIGHT:
            for name, run in rows.items():
                result = await run(name, updates, in_flight)
                by_flight.setdefault(name, []).append(result.rate)
    print(f"\nupdates/s, {args.updates} updates per point; {machine()}\n")
    print(
        table(
            ["row \\ chats (256 in flight)", *map(str, CHATS)],
            [[name, *rates] for name, rates in by_chats.items()],
        )
    )
    print()
    print(
        table(
            ["row \\ in flight (200 chats)", *map(str, IN_FLIGHT)],
            [[name, *rates] for name, rates in by_flight.items()],
        )
    )
    plot(args.png, by_chats, by_flight)
    print(f"\nplot written to {args.png}")


def plot(path: str, by_chats: dict[str, list[float]], by_flight: dict[str, list[float]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for name, rates in by_chats.items():
        left.plot(CHATS, rates, marker="o", label=name)
    left.set_xscale("log")
    left.set_xlabel("chats (256 updates in flight)")
    left.set_ylabel("updates/s")
    for name, rates in by_flight.items():
        right.plot(IN_FLIGHT, rates, marker="o", label=name)
    right.set_xscale("log")
    right.set_xlabel("updates in flight (200 chats)")
    for axis in (left, right):
        axis.grid(True, alpha=0.3)
        axis.set_ylim(bottom=0)
    left.legend(fontsize=8)
    fig.suptitle("aiogram Dispatcher end to end: handler reads, awaits, writes a counter")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    asyncio.run(main())
