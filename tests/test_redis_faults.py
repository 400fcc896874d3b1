"""Real Redis faults: the server stopped and restarted mid-load loses nothing."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
import redis.asyncio as redis_asyncio

from actorsess import RedisStorage, SessionConfig, SessionManager
from actorsess.testing import RedisServer


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    with RedisServer(appendonly=True) as server:
        yield server


def counter() -> dict[str, int]:
    return {"n": 0}


async def test_redis_stopped_mid_run_then_restarted_loses_nothing(
    private_redis: RedisServer,
) -> None:
    """Writes fail while Redis is down, stay dirty, and all land after it returns."""
    config = SessionConfig(
        flush_interval=0.02,
        retry_base_delay=0.02,
        retry_max_delay=0.2,
        write_timeout=1.0,
        close_timeout=10,
    )
    storage = RedisStorage.from_url(private_redis.url, pool_timeout=1.0)
    keys = [f"chat:{i}" for i in range(50)]
    async with SessionManager(storage, initial=counter, config=config) as m:
        for key in keys:  # load everything while Redis is up
            await m.get(key)

        async def bump_all() -> None:
            await asyncio.gather(*(m.update(k, lambda s: s.update(n=s["n"] + 1)) for k in keys))

        await bump_all()
        await m.flush()
        private_redis.stop()
        for _ in range(10):  # cached sessions keep working while Redis is down
            await bump_all()
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)
        assert m.stats().dirty == len(keys)
        assert m.stats().errors > 0
        private_redis.start()
        await asyncio.sleep(0.5)
        await m.flush()
        assert m.stats().dirty == 0

    client = redis_asyncio.Redis.from_url(private_redis.url)
    values = await client.mget([f"actorsess:{k}" for k in keys])
    await client.aclose()
    assert values == [b'as1:11:{"n":11}'] * len(keys)


async def test_cluster_node_restart_mid_load_loses_nothing(redis_cluster: Any) -> None:
    """A cluster primary restarted (AOF) mid-load: its keys' writes retry and land."""
    config = SessionConfig(
        flush_interval=0.02,
        retry_base_delay=0.05,
        retry_max_delay=0.3,
        write_timeout=2.0,
        close_timeout=20,
    )
    storage = RedisStorage.from_url(redis_cluster.url, cluster=True)
    keys = [f"node-restart:{i}" for i in range(60)]
    async with SessionManager(storage, initial=counter, config=config) as m:
        await m.get_many(keys)

        async def bump_all() -> None:
            await asyncio.gather(*(m.update(k, lambda s: s.update(n=s["n"] + 1)) for k in keys))

        await bump_all()
        await m.flush()
        victim = redis_cluster.nodes[1]
        victim.stop()
        for _ in range(5):
            await bump_all()
            await asyncio.sleep(0.05)
        victim.start()
        await asyncio.sleep(0.5)
        for _ in range(20):  # the restarted node rejoins; retries land
            if m.stats().dirty == 0:
                break
            await asyncio.sleep(0.25)
        await m.flush()
    reader = SessionManager(RedisStorage.from_url(redis_cluster.url, cluster=True), initial=counter)
    async with reader:
        values = await reader.get_many(keys)
    assert [v["n"] for v in values.values()] == [6] * len(keys)
