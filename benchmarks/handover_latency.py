"""Shared ownership: what one handover costs, against the floor of forwarding instead;
and what a loan of partitioned mode costs (a session opened where its partition is
not held).

Two managers on one Redis (one event loop, so both clocks agree) take turns on
a key that the other owns and has just changed, so every turn is a handover:
ask the owner, the owner writes and passes the lease and the record. Against
it, the least that forwarding the work to the owner would cost: a request and
a reply over pub/sub (two hops), with no work done at all. A turn on a key the
manager already owns is shown for scale.

    .venv/bin/python -m benchmarks.handover_latency [--turns 500]
"""

from __future__ import annotations

import argparse
import asyncio
import time

import redis.asyncio as redis_asyncio
from aiogram import Bot, Dispatcher

import actorsess
from actorsess.aiogram import ForwardingRequestHandler
from actorsess.testing import RedisServer
from benchmarks._common import machine, percentile, quiet_logs, table
from harness.webhook_bot import OFFLINE_TOKEN


async def handovers(url: str, turns: int) -> tuple[list[float], list[float]]:
    config = actorsess.SessionConfig(ownership="shared")
    managers: list[actorsess.SessionManager[dict[str, int]]] = [
        actorsess.SessionManager(actorsess.RedisStorage.from_url(url), initial=dict, config=config)
        for _ in range(2)
    ]
    for manager in managers:
        await manager.start()
    moved: list[float] = []
    owned: list[float] = []
    for turn in range(turns):
        manager = managers[turn % 2]
        for times in (moved, owned):  # first a handover, then a turn it now owns
            started = time.perf_counter()
            async with manager.session("chat") as session:
                session["n"] = session.get("n", 0) + 1
            times.append(time.perf_counter() - started)
    for manager in managers:
        await manager.close()
    return moved, owned


async def loans(url: str, turns: int) -> list[float]:
    """Partitioned mode: a turn of a process that holds no partition, on a session its
    owner (a worker with its ForwardingRequestHandler, idle between loans) has just
    changed: each is a loan (a request in the partition's stream, the owner's turn
    with its change written, the change sent back and written by the owner)."""
    config = actorsess.SessionConfig(ownership="partitioned")
    storage = actorsess.RedisStorage.from_url(url)
    partitions = actorsess.Partitions(storage, count=1)
    owner: actorsess.SessionManager[dict[str, int]] = actorsess.SessionManager(
        storage, initial=dict, config=config, partitions=partitions
    )
    worker = ForwardingRequestHandler(Dispatcher(), Bot(OFFLINE_TOKEN), partitions)
    other = actorsess.RedisStorage.from_url(url)
    borrower: actorsess.SessionManager[dict[str, int]] = actorsess.SessionManager(
        other, initial=dict, config=config, partitions=actorsess.Partitions(other, count=1)
    )
    key = "session:1:2:2"
    times: list[float] = []
    async with owner, borrower:
        await worker.start()
        for _ in range(turns):
            async with owner.session(key) as session:  # changed at the owner, not written
                session["n"] = session.get("n", 0) + 1
            started = time.perf_counter()
            async with borrower.session(key) as session:
                session["n"] += 1
            times.append(time.perf_counter() - started)
        await worker.stop()
    return times


async def pubsub_round_trips(url: str, turns: int) -> list[float]:
    """Request to an 'owner' and its reply, each one PUBLISH through Redis."""
    client = redis_asyncio.Redis.from_url(url)
    owner, requester = client.pubsub(), client.pubsub()
    await owner.subscribe("owner")
    await requester.subscribe("requester")
    await owner.get_message(timeout=1)
    await requester.get_message(timeout=1)

    async def serve() -> None:
        while True:
            message = await owner.get_message(ignore_subscribe_messages=True, timeout=1)
            if message is not None:
                await client.publish("requester", message["data"])

    server = asyncio.create_task(serve())
    times: list[float] = []
    for turn in range(turns):
        started = time.perf_counter()
        await client.publish("owner", str(turn))
        while await requester.get_message(ignore_subscribe_messages=True, timeout=1) is None:
            pass
        times.append(time.perf_counter() - started)
    server.cancel()
    await owner.aclose()  # type: ignore[no-untyped-call]
    await requester.aclose()  # type: ignore[no-untyped-call]
    await client.aclose()
    return times


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--turns", type=int, default=500)
    args = parser.parse_args()
    quiet_logs()
    with RedisServer() as server:
        moved, owned = await handovers(server.url, args.turns)
        forwarding = await pubsub_round_trips(server.url, args.turns)
        lent = await loans(server.url, args.turns)
    rows: list[tuple[str, list[float]]] = [
        ("turn on a session another process owns (handover)", moved),
        ("partitioned: turn of a process holding no partition (a loan from the owner)", lent),
        ("forwarding's floor: request + reply over pub/sub, no work", forwarding),
        ("turn on a session this process owns", owned),
    ]
    print(f"\n{args.turns} turns each; {machine()}\n")
    print(
        table(
            ["what", "p50 ms", "p99 ms"],
            [[name, percentile(t, 0.5) * 1000, percentile(t, 0.99) * 1000] for name, t in rows],
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
