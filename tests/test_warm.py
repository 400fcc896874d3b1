"""``warm()``: sessions read ahead of their turns straight into the idle tier as
bytes; what cannot go that way goes the usual load path, with its errors."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as redis_asyncio

from actorsess import CorruptSessionError, RedisStorage, SessionConfig, SessionManager

from .helpers import RecordingStorage, counter


def loads(storage: RecordingStorage) -> int:
    return sum(len(batch) for batch in storage.load_batches)


async def bump(manager: SessionManager[dict[str, int]], key: str) -> int:
    async with manager.session(key) as session:
        session["n"] += 1
        return session["n"]


async def test_warmed_sessions_are_cached_as_bytes_and_their_turns_load_nothing(
    redis_client: redis_asyncio.Redis, redis_url: str
) -> None:
    async with SessionManager(RedisStorage.from_url(redis_url), initial=counter) as before:
        for i in range(300):
            async with before.session(f"warm:{i}") as seeded:
                seeded["n"] = i
    config = SessionConfig(max_cached=1_000, max_live=16, max_batch=64)
    async with SessionManager(
        RedisStorage.from_url(redis_url), initial=counter, config=config
    ) as after:
        await after.warm([f"warm:{i}" for i in range(300)] + ["warm:absent"])
        stats = after.stats()
        assert stats.cached == 301 and after._registry.idle == 301
        assert stats.loads == 5  # batches of 64
        assert stats.sessions_loaded == 301
        assert [await bump(after, f"warm:{i}") for i in range(300)] == list(range(1, 301))
        turn = after.session("warm:absent")
        async with turn as session:
            assert session == {"n": 0} and turn.is_new
        assert after.stats().sessions_loaded == 301, "a warmed session was loaded again"
    assert await redis_client.get("actorsess:warm:7") == b'as1:2:{"n":8}'


async def test_warming_keys_already_cached_leaves_them_alone() -> None:
    storage = RecordingStorage()
    config = SessionConfig(max_cached=100, max_live=4, flush_interval=3600)
    async with SessionManager(storage, initial=counter, config=config) as m:
        await bump(m, "changed")  # dirty, live: storage holds nothing for it yet
        await m.warm(["changed", "new"])
        assert storage.load_batches == [["actorsess:changed"], ["actorsess:new"]]
        assert await m.get("changed") == {"n": 1}


async def test_a_corrupt_record_raises_after_the_others_are_warmed() -> None:
    storage = RecordingStorage()
    storage.put_raw("actorsess:good", b'as1:1:{"n":5}')
    storage.put_raw("actorsess:bad", b"as1:1:{not json")
    config = SessionConfig(max_cached=100, max_live=4)
    async with SessionManager(storage, initial=counter, config=config) as m:
        with pytest.raises(CorruptSessionError, match="bad"):
            await m.warm(["good", "bad"])
        assert "good" in m._registry and "bad" not in m._registry
        assert await m.get("good") == {"n": 5}


async def test_a_record_needing_a_migration_is_upgraded_and_written_back() -> None:
    storage = RecordingStorage()
    storage.put_raw("actorsess:old", b'as1:3:{"n":2}')  # schema 0

    def add_seen(data: dict[str, Any]) -> dict[str, Any]:
        return {**data, "seen": True}

    config = SessionConfig(max_cached=100, max_live=4, flush_interval=0.001)
    async with SessionManager(
        storage, initial=lambda: {"n": 0, "seen": False}, config=config, migrations=[add_seen]
    ) as m:
        await m.warm(["old"])
        await m.flush()
        assert await m.get("old") == {"n": 2, "seen": True}
    stored = storage.raw("actorsess:old")
    assert stored is not None and stored.startswith(b"as1:4:") and b'"seen":true' in stored


async def test_a_session_leaving_memory_during_the_read_sends_the_batch_the_usual_way() -> None:
    """The warm's read may predate a write of a session that then left memory: such
    a batch is not kept as read but loaded again, so the cache never goes back."""
    storage = RecordingStorage()
    storage.put_raw("actorsess:k", b'as1:1:{"n":1}')
    config = SessionConfig(max_cached=100, max_live=4, flush_interval=0.001)
    async with SessionManager(storage, initial=counter, config=config) as m:
        stale = await storage.load_many(["actorsess:k"])
        original = storage.load_many
        gate, reading = asyncio.Event(), asyncio.Event()

        async def read_then_stall(keys: Any) -> Any:
            storage.load_many = original  # type: ignore[method-assign]
            reading.set()
            await gate.wait()
            return stale  # what storage held when the read was made

        storage.load_many = read_then_stall  # type: ignore[method-assign]
        warming = asyncio.create_task(m.warm(["k"]))
        await reading.wait()
        assert await bump(m, "k") == 2  # loads on its own, changes, ...
        await m.persist("k")
        await m.evict("k")  # ... and leaves memory
        gate.set()
        await warming
        assert await m.get("k") == {"n": 2}


async def test_without_an_idle_tier_warm_loads_live_sessions(
    redis_url: str,
) -> None:
    config = SessionConfig(ownership="shared", max_cached=100, max_live=2)
    async with SessionManager(
        RedisStorage.from_url(redis_url), initial=counter, config=config
    ) as m:
        await m.warm([f"shared-warm:{i}" for i in range(10)])
        assert m.stats().cached == 10 and m._registry.idle == 0


async def test_warming_fills_the_whole_cache_and_no_more() -> None:
    """Before any turn the live sessions take no room: warming may fill all of
    ``max_cached`` with bytes; past it, the oldest make room."""
    storage = RecordingStorage()
    for i in range(150):
        storage.put_raw(f"actorsess:f{i}", b'as1:1:{"n":%d}' % i)
    config = SessionConfig(max_cached=100, max_live=16, max_batch=10)
    async with SessionManager(storage, initial=counter, config=config) as m:
        await m.warm([f"f{i}" for i in range(100)])
        assert m.stats().cached == 100 and m.stats().evictions == 0
        await m.warm([f"f{i}" for i in range(100, 150)])
        assert m.stats().cached <= 100
        assert "f149" in m._registry and "f0" not in m._registry
        for i in range(20):  # turns make live sessions: the bytes make room for them
            await bump(m, f"f{130 + i}")
        assert m.stats().cached <= 100
