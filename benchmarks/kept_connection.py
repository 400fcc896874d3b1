"""CPU per small Redis call: a connection taken from redis-py's pool for each call,
against one kept between calls (``KeptConnection``, what partitioned mode's feeder
reads and forwarder batches use).

The call is the feeder's: an ``XREAD`` of 21 partitions' streams that finds
nothing (the share of 64 partitions one of 3 workers owns). CPU is this process's
(``time.process_time``), so the server's work is left out; rows interleaved.

    .venv/bin/python -m benchmarks.kept_connection [--calls 3000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from redis.asyncio import Redis

from actorsess import RedisStorage
from actorsess.storage._redis_script import Arg, KeptConnection, send_commands
from actorsess.testing import RedisServer
from benchmarks._common import machine, median, quiet_logs, table

COMMAND: list[list[Arg]] = [
    ["XREAD", "COUNT", 500, "STREAMS", *[f"s{p}" for p in range(21)], *["0-0"] * 21]
]


async def cpu_per_call(send: Callable[[], Awaitable[Any]], calls: int) -> float:
    """Microseconds of this process's CPU per call."""
    started = time.process_time()
    for _ in range(calls):
        await send()
    return (time.process_time() - started) / calls * 1e6


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    quiet_logs()
    print(machine())
    with RedisServer() as server:
        storage = RedisStorage.from_url(server.url)
        client = storage.client
        assert isinstance(client, Redis)
        kept = KeptConnection(client)
        rows: dict[str, list[float]] = {"a pooled connection per call": [], "a kept connection": []}
        try:
            for _ in range(args.rounds):
                rows["a pooled connection per call"].append(
                    await cpu_per_call(lambda: send_commands(client, COMMAND), args.calls)
                )
                rows["a kept connection"].append(
                    await cpu_per_call(lambda: kept.send(COMMAND), args.calls)
                )
        finally:
            await kept.release()
            await storage.close()
    pooled = median(rows["a pooled connection per call"])
    print(
        table(
            ["connection", "CPU µs per XREAD", "vs pooled"],
            [[name, f"{median(r):.0f}", f"{median(r) / pooled:.2f}x"] for name, r in rows.items()],
        )
    )


if __name__ == "__main__":
    asyncio.run(main())
