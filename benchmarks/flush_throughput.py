"""Batch write and load throughput against local Redis, vs naive redis-py usage.

N sessions of ~200 bytes with a TTL. Writes: actorsess's flusher (one Lua call
per batch) vs a redis-py pipeline of ``SET key value PX ttl`` and, for
reference, ``MSET`` (no TTL). Loads: actorsess's batched loader vs one
``GET`` per key and a pipeline of GETs.

    .venv/bin/python -m benchmarks.flush_throughput [--sessions 50000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import time

import redis.asyncio as redis_asyncio

from actorsess import RedisStorage, SessionConfig, SessionManager
from actorsess.testing import RedisServer
from benchmarks._common import flush_redis, machine, median, quiet_logs, table

TTL_MS = 3_600_000
PAYLOAD = "x" * 170  # with the key and header the record is ~200 bytes


def initial() -> dict[str, str | int]:
    return {"text": "", "n": 0}


async def actorsess_write(
    url: str, n: int, batch: int, freeze: bool = False, all_live: bool = False
) -> tuple[float, float, int]:
    """Returns (write sessions/s, load sessions/s, full garbage collections during the
    write). ``freeze`` moves every object alive before the write out of the
    collector's sight (``gc.freeze()``), as a bot may do after warming up.
    ``all_live`` keeps every session live (``max_live``); by default all but the
    1,024 most recent were pushed out while dirty and go back to bytes once written."""
    config = SessionConfig(
        flush_interval=3600,
        max_batch=batch,
        max_dirty=n + 1,
        ttl=TTL_MS / 1000,
        max_cached=n + 1,
        max_live=n + 1 if all_live else SessionConfig().max_live,
    )
    manager = SessionManager(RedisStorage.from_url(url), initial=initial, config=config)
    keys = [f"user:{i}" for i in range(n)]
    async with manager:
        await manager.get_many(keys)  # load (all absent): warm the cache
        for i, key in enumerate(keys):
            async with manager.session(key) as s:
                s["text"] = PAYLOAD
                s["n"] = i
        if freeze:
            gc.collect()
            gc.freeze()
        full_before = gc.get_stats()[2]["collections"]
        started = time.perf_counter()
        await manager.flush()
        write_rate = n / (time.perf_counter() - started)
        full_collections = gc.get_stats()[2]["collections"] - full_before
        gc.unfreeze()
    reader = SessionManager(
        RedisStorage.from_url(url),
        initial=initial,
        config=SessionConfig(max_batch=batch, max_cached=n + 1),
    )
    async with reader:
        started = time.perf_counter()
        values = await reader.get_many(keys)
        load_rate = n / (time.perf_counter() - started)
    assert all(v["text"] == PAYLOAD for v in values.values())
    return write_rate, load_rate, full_collections


async def actorsess_warm(url: str, n: int, batch: int) -> float:
    """``warm()`` the sessions ``actorsess_write`` stored: records straight to bytes."""
    config = SessionConfig(max_batch=batch, max_cached=n + 1)
    keys = [f"user:{i}" for i in range(n)]
    async with SessionManager(RedisStorage.from_url(url), initial=initial, config=config) as m:
        started = time.perf_counter()
        await m.warm(keys)
        rate = n / (time.perf_counter() - started)
        assert m.stats().cached == n and m.stats().sessions_loaded == n
        assert (await m.get(keys[-1]))["text"] == PAYLOAD
    return rate


def records(n: int) -> list[tuple[str, bytes]]:
    return [(f"naive:{i}", b'as1:1:{"text":"%s","n":%d}' % (PAYLOAD.encode(), i)) for i in range(n)]


async def naive_pipeline_set(url: str, n: int) -> float:
    client = redis_asyncio.Redis.from_url(url)
    data = records(n)
    started = time.perf_counter()
    pipe = client.pipeline(transaction=False)
    for key, value in data:
        pipe.set(key, value, px=TTL_MS)
    await pipe.execute()
    rate = n / (time.perf_counter() - started)
    await client.aclose()
    return rate


async def mset(url: str, n: int) -> float:
    client = redis_asyncio.Redis.from_url(url)
    data = dict(records(n))
    started = time.perf_counter()
    await client.mset(data)
    rate = n / (time.perf_counter() - started)
    await client.aclose()
    return rate


async def naive_gets(url: str, n: int, pipelined: bool) -> float:
    client = redis_asyncio.Redis.from_url(url)
    keys = [key for key, _ in records(n)]
    await client.mset(dict(records(n)))
    started = time.perf_counter()
    if pipelined:
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.get(key)
        await pipe.execute()
    else:
        for key in keys:
            await client.get(key)
    rate = n / (time.perf_counter() - started)
    await client.aclose()
    return rate


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sessions", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=1000, help="actorsess max_batch")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    quiet_logs()
    n = args.sessions
    results: dict[str, list[float]] = {}
    with RedisServer() as server:
        url = server.url
        for _ in range(args.rounds):
            flush_redis(url)
            ours_write, ours_load, full = await actorsess_write(url, n, args.batch)
            results.setdefault("w-ours", []).append(ours_write)
            results.setdefault("l-ours", []).append(ours_load)
            results.setdefault("l-warm", []).append(await actorsess_warm(url, n, args.batch))
            results.setdefault("full-gc", []).append(full)
            flush_redis(url)
            frozen_write, _, _ = await actorsess_write(url, n, args.batch, freeze=True)
            results.setdefault("w-frozen", []).append(frozen_write)
            flush_redis(url)
            live_write, _, live_full = await actorsess_write(url, n, args.batch, all_live=True)
            results.setdefault("w-live", []).append(live_write)
            results.setdefault("full-gc-live", []).append(live_full)
            flush_redis(url)
            results.setdefault("w-pipe", []).append(await naive_pipeline_set(url, n))
            flush_redis(url)
            results.setdefault("w-mset", []).append(await mset(url, n))
            flush_redis(url)
            results.setdefault("l-pipe", []).append(await naive_gets(url, n, pipelined=True))
            flush_redis(url)
            results.setdefault("l-get", []).append(
                await naive_gets(url, min(n, 10_000), pipelined=False)
            )
    m = {k: median(v) for k, v in results.items()}
    rows = [
        [
            "write",
            "actorsess flusher (Lua, SET PX per key)",
            m["w-ours"],
            "1.00x",
            f"{m['w-ours'] / m['w-pipe']:.1f}x",
        ],
        [
            "write",
            "actorsess flusher, gc.freeze() after warm-up",
            m["w-frozen"],
            f"{m['w-frozen'] / m['w-ours']:.2f}x",
            f"{m['w-frozen'] / m['w-pipe']:.1f}x",
        ],
        [
            "write",
            f"actorsess flusher, every session live (max_live={n + 1})",
            m["w-live"],
            f"{m['w-live'] / m['w-ours']:.2f}x",
            f"{m['w-live'] / m['w-pipe']:.1f}x",
        ],
        [
            "write",
            "redis-py pipeline of SET PX (naive)",
            m["w-pipe"],
            f"{m['w-pipe'] / m['w-ours']:.2f}x",
            "1.0x",
        ],
        [
            "write",
            "redis-py MSET (no TTL, reference)",
            m["w-mset"],
            f"{m['w-mset'] / m['w-ours']:.2f}x",
            f"{m['w-mset'] / m['w-pipe']:.1f}x",
        ],
        [
            "load",
            "actorsess get_many (batched Lua GET)",
            m["l-ours"],
            "1.00x",
            f"{m['l-ours'] / m['l-get']:.1f}x",
        ],
        [
            "load",
            "actorsess warm() (records kept as bytes)",
            m["l-warm"],
            f"{m['l-warm'] / m['l-ours']:.2f}x",
            f"{m['l-warm'] / m['l-get']:.1f}x",
        ],
        [
            "load",
            "redis-py pipeline of GET",
            m["l-pipe"],
            f"{m['l-pipe'] / m['l-ours']:.2f}x",
            f"{m['l-pipe'] / m['l-get']:.1f}x",
        ],
        [
            "load",
            "redis-py one GET per key (naive)",
            m["l-get"],
            f"{m['l-get'] / m['l-ours']:.2f}x",
            "1.0x",
        ],
    ]
    print(
        f"\n{n} sessions of ~200 bytes, TTL set, batches of {args.batch}, median of "
        f"{args.rounds}; {machine()}\n"
    )
    print(table(["op", "row", "sessions/s", "vs actorsess", "vs naive"], rows))
    print(
        "\nfull (generation 2) garbage collections during the actorsess write, per run: "
        f"default {results['full-gc']}, every session live {results['full-gc-live']}; "
        "each scans every live session object"
    )


if __name__ == "__main__":
    asyncio.run(main())
