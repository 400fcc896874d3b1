"""Real faults on private redis-server processes: paused, connections killed, slowed."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest
import redis.asyncio as redis_asyncio

from actorsess import (
    BackpressureTimeoutError,
    RedisStorage,
    SessionConfig,
    SessionManager,
    StorageError,
)
from actorsess.testing import RedisServer

from .conftest import Events


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    with RedisServer(extra_args=["--enable-debug-command", "local"]) as server:
        yield server


def counter() -> dict[str, int]:
    return {"n": 0}


async def read_all(url: str, keys: list[str]) -> list[bytes | None]:
    client = redis_asyncio.Redis.from_url(url)
    values: list[bytes | None] = await client.mget([f"actorsess:{k}" for k in keys])  # type: ignore[assignment]
    await client.aclose()
    return values


async def test_paused_redis_cached_sessions_keep_working(
    private_redis: RedisServer, events: Events
) -> None:
    """SIGSTOPped Redis: cached handlers run, cold loads fail fast, nothing lost on resume."""
    config = SessionConfig(
        flush_interval=0.05,
        write_timeout=0.3,
        load_timeout=0.3,
        retry_base_delay=0.05,
        retry_max_delay=0.3,
        close_timeout=10,
    )
    storage = RedisStorage.from_url(private_redis.url, pool_timeout=2)
    keys = [f"chat:{i}" for i in range(30)]
    m = SessionManager(storage, initial=counter, config=config, logger=events.logger)
    async with m:
        await m.get_many(keys)
        private_redis.pause()
        try:
            rounds = 0
            started = time.monotonic()
            while time.monotonic() - started < 1.5:
                await asyncio.gather(*(m.update(k, lambda s: s.update(n=s["n"] + 1)) for k in keys))
                rounds += 1
                await asyncio.sleep(0.01)
            slowest_round = (time.monotonic() - started) / rounds
            cold_started = time.monotonic()
            with pytest.raises(StorageError, match="timed out after 0.3s"):
                await m.get("never-seen")
            cold_failure_s = time.monotonic() - cold_started
        finally:
            private_redis.resume()
        await m.flush()
    assert rounds > 20, "cached sessions must not wait for the paused server"
    assert slowest_round < 0.1 and cold_failure_s < 1.0
    assert any("timed out" in e["error"] for e in events.named("session.flush_failed"))
    values = await read_all(private_redis.url, keys)
    assert values == [b'as1:%d:{"n":%d}' % (rounds, rounds)] * len(keys)


async def test_connections_killed_during_writes_result_is_exact(private_redis: RedisServer) -> None:
    """CLIENT KILL while batches are written: outcomes unknown, retried, totals exact."""
    config = SessionConfig(
        flush_interval=0.001,
        max_batch=50,
        retry_base_delay=0.01,
        retry_max_delay=0.05,
        write_timeout=2,
    )
    storage = RedisStorage.from_url(private_redis.url)
    killer = redis_asyncio.Redis.from_url(private_redis.url)
    keys = [f"k{i}" for i in range(200)]
    kills = 0
    async with SessionManager(storage, initial=counter, config=config) as m:
        await m.get_many(keys)

        async def bump_all() -> None:
            await asyncio.gather(*(m.update(k, lambda s: s.update(n=s["n"] + 1)) for k in keys))

        for _ in range(30):
            await bump_all()
            await asyncio.sleep(0.002)
            kills += int(await killer.client_kill_filter(_type="normal", skipme=True))
        await m.flush()
    await killer.aclose()
    assert kills > 0
    values = await read_all(private_redis.url, keys)
    assert values == [b'as1:30:{"n":30}'] * len(keys)


async def test_slow_redis_backpressure_bounds_dirty_and_times_out(
    private_redis: RedisServer, events: Events
) -> None:
    """DEBUG SLEEP stalls Redis: dirty sessions stop at max_dirty and writers get a clear error."""
    config = SessionConfig(
        flush_interval=0.01,
        max_dirty=50,
        max_batch=10,
        write_timeout=5,
        backpressure_timeout=0.5,
        retry_base_delay=0.01,
        retry_max_delay=0.05,
    )
    storage = RedisStorage.from_url(private_redis.url)
    sleeper = redis_asyncio.Redis.from_url(private_redis.url)
    keys = [f"k{i}" for i in range(200)]
    m = SessionManager(storage, initial=counter, config=config, logger=events.logger)
    async with m:
        await m.get_many(keys)
        debug_sleep = sleeper.execute_command("DEBUG", "SLEEP", "2")  # type: ignore[no-untyped-call]
        stall = asyncio.create_task(debug_sleep)
        await asyncio.sleep(0.05)
        peak = 0

        async def bump(key: str) -> None:
            nonlocal peak
            await m.update(key, lambda s: s.update(n=s["n"] + 1))
            peak = max(peak, m.stats().dirty)

        results = await asyncio.gather(*(bump(k) for k in keys), return_exceptions=True)
        await stall
        await m.flush()
    await sleeper.aclose()
    timed_out = [r for r in results if isinstance(r, BackpressureTimeoutError)]
    assert peak <= config.max_dirty
    assert len(timed_out) == len(keys) - config.max_dirty
    assert "max_dirty=50" in str(timed_out[0])
    assert events.named("session.backpressure")
    values = await read_all(private_redis.url, keys)
    landed = sum(1 for v in values if v == b'as1:1:{"n":1}')
    assert landed == config.max_dirty  # refused changes were rolled back, accepted ones kept
