"""Idle cached sessions beyond ``max_live`` are kept as their encoded bytes only:
still cached (no load), invisible to the garbage collector, live again on use."""

from __future__ import annotations

import gc
from typing import Any

import pytest
import redis.asyncio as redis_asyncio

from actorsess import ConfigError, RedisStorage, SessionConfig, SessionManager
from actorsess.testing import FakeClock

from .helpers import RecordingStorage, counter


def loads(storage: RecordingStorage) -> int:
    return sum(len(batch) for batch in storage.load_batches)


async def bump(manager: SessionManager[dict[str, int]], key: str, by: int = 1) -> None:
    async with manager.session(key) as session:
        session["n"] += by


async def test_sessions_beyond_max_live_stay_cached_as_bytes_and_load_no_more() -> None:
    storage = RecordingStorage()
    config = SessionConfig(max_cached=100, max_live=10, flush_interval=3600)
    async with SessionManager(storage, initial=counter, config=config) as m:
        keys = [f"k{i}" for i in range(60)]
        for key in keys:
            await bump(m, key, 3)
        await m.flush()  # written: parked sessions become idle, and so bytes
        await bump(m, "k0")  # (a turn after the flush settles the parked ones)
        assert m._registry.idle >= 40
        assert m.stats().cached == 60
        loaded = loads(storage)
        for key in keys:
            await bump(m, key)  # from bytes back to live, in turn
        assert loads(storage) == loaded, "an idle session was loaded from storage again"
        assert [(await m.get(key))["n"] for key in keys] == [5] + [4] * 59
        await m.flush()
    assert storage.raw("actorsess:k1") == b'as1:2:{"n":4}'


async def test_past_max_cached_the_oldest_idle_sessions_leave_and_load_again(
    events: Any,
) -> None:
    storage = RecordingStorage()
    config = SessionConfig(max_cached=20, max_live=5, flush_interval=0.001)
    m = SessionManager(storage, initial=counter, config=config, logger=events.logger)
    async with m:
        for i in range(100):
            await bump(m, f"k{i}")
            await m.persist(f"k{i}")
        assert m.stats().cached <= 20
        assert m.stats().evictions >= 75
        assert {e["key"] for e in events.named("session.evict")} >= {"k0", "k1", "k2"}
        loaded = loads(storage)
        assert (await m.get("k0")) == {"n": 1}  # evicted: read from storage
        assert loads(storage) == loaded + 1
        assert (await m.get("k99")) == {"n": 1}  # the newest: still cached
        assert loads(storage) == loaded + 1


async def test_dirty_sessions_are_never_kept_as_bytes() -> None:
    storage = RecordingStorage()
    config = SessionConfig(max_cached=50, max_live=2, flush_interval=3600)
    async with SessionManager(storage, initial=counter, config=config) as m:
        for i in range(10):
            await bump(m, f"k{i}")
        assert m._registry.idle == 0
        assert m.stats().parked == 8  # pushed out of the live LRU while dirty: parked
        assert m.stats().dirty == 10
        await m.flush()
        await bump(m, "k0")
        assert m._registry.idle == 8
    stored = [storage.raw(f"actorsess:k{i}") for i in range(10)]
    assert stored == [b'as1:2:{"n":2}'] + [b'as1:1:{"n":1}'] * 9


async def test_an_idle_session_keeps_its_expiry() -> None:
    clock = FakeClock()
    storage = RecordingStorage()
    config = SessionConfig(max_cached=50, max_live=1, ttl=60, flush_interval=0.5)
    async with SessionManager(storage, initial=counter, config=config, clock=clock) as m:
        await bump(m, "old", 7)
        await clock.advance(1)  # written
        await bump(m, "other")  # pushes "old" out of the live LRU: bytes now
        await clock.advance(1)
        await bump(m, "third")
        assert "old" not in m._registry._index and "old" in m._registry
        await clock.advance(30)
        assert await m.get("old") == {"n": 7}  # still within its ttl
        await bump(m, "other")  # out again
        await clock.advance(61)
        assert await m.get("old") == {"n": 0}  # expired while kept as bytes


async def test_a_deleted_session_kept_as_bytes_comes_back_new_and_versions_go_on(
    redis_client: redis_asyncio.Redis, redis_url: str
) -> None:
    """Deleted and written, then idle: the next turn sees ``initial()`` and
    ``is_new``, and its write carries a version above the deletion's, which the
    fenced Redis write accepts."""
    config = SessionConfig(max_cached=50, max_live=1, flush_interval=0.001)
    storage = RedisStorage.from_url(redis_url)
    async with SessionManager(storage, initial=counter, config=config) as m:
        await bump(m, "idle-del", 5)
        await m.persist("idle-del")
        deleting = m.session("idle-del")
        async with deleting:
            deleting.delete()
        await m.persist("idle-del")
        tombstone = await redis_client.get("actorsess:idle-del")
        assert isinstance(tombstone, bytes) and tombstone[:6] == b"as1:2:"  # deleted at 2
        await bump(m, "idle-del:other")  # pushes it out of the live LRU
        await m.persist("idle-del:other")
        await bump(m, "idle-del:third")
        assert "idle-del" in m._registry and "idle-del" not in m._registry._index
        turn = m.session("idle-del")
        async with turn as session:
            assert session == {"n": 0}
            assert turn.is_new
            session["n"] += 1
        await m.persist("idle-del")
    assert await redis_client.get("actorsess:idle-del") == b'as1:3:{"n":1}'


async def test_evict_drops_a_session_kept_as_bytes() -> None:
    storage = RecordingStorage()
    config = SessionConfig(max_cached=50, max_live=1, flush_interval=0.001)
    async with SessionManager(storage, initial=counter, config=config) as m:
        await bump(m, "a")
        await m.persist("a")
        await bump(m, "b")
        await m.persist("b")
        await bump(m, "c")
        assert "a" in m._registry and "a" not in m._registry._index
        storage.put_raw("actorsess:a", b'as1:9:{"n":42}')  # edited outside the bot
        await m.evict("a")
        assert "a" not in m._registry
        assert await m.get("a") == {"n": 42}
        assert m.stats().evictions == 1


async def test_idle_sessions_add_no_objects_for_the_collector() -> None:
    """10,000 sessions kept as bytes add a handful of tracked objects; kept live (as
    before, and as ``max_live=max_cached`` does) they add one or more each."""

    async def tracked_after_caching(max_live: int) -> int:
        config = SessionConfig(max_cached=20_000, max_live=max_live, flush_interval=3600)
        async with SessionManager(RecordingStorage(), initial=counter, config=config) as m:
            await m.get_many([f"warm:{i}" for i in range(10)])
            gc.collect()
            before = len(gc.get_objects())
            for start in range(0, 10_000, 1000):
                await m.get_many([f"chat:{i}" for i in range(start, start + 1000)])
            gc.collect()
            assert m.stats().cached == 10_010
            return len(gc.get_objects()) - before

    as_bytes = await tracked_after_caching(max_live=16)
    live = await tracked_after_caching(max_live=20_000)
    assert as_bytes < 500, as_bytes
    assert live >= 10_000, live  # an actor each, at least


async def test_shared_ownership_keeps_every_cached_session_live(
    redis_client: redis_asyncio.Redis, redis_url: str
) -> None:
    config = SessionConfig(ownership="shared", max_cached=100, max_live=2, flush_interval=0.01)
    async with SessionManager(
        RedisStorage.from_url(redis_url), initial=counter, config=config
    ) as m:
        for i in range(20):
            await bump(m, f"idle-shared:{i}")
        await m.flush()
        await bump(m, "idle-shared:0")
        assert m._registry.idle == 0
        assert m.stats().cached == 20


def test_max_live_must_be_a_positive_integer() -> None:
    with pytest.raises(ConfigError, match="max_live"):
        SessionConfig(max_live=0)


async def test_warming_more_keys_than_stay_live_parks_them_silently(events: Any) -> None:
    """get_many() beyond max_live: each key is pushed out while its load is in
    flight and goes to bytes as its record lands; no session.park event for that
    (it is routine), and every key is cached afterwards."""
    storage = RecordingStorage()
    for i in range(50):
        storage.put_raw(f"actorsess:w{i}", b'as1:1:{"n":%d}' % i)
    config = SessionConfig(max_cached=100, max_live=5, max_batch=7)
    m = SessionManager(storage, initial=counter, config=config, logger=events.logger)
    async with m:
        values = await m.get_many([f"w{i}" for i in range(50)])
        assert values == {f"w{i}": {"n": i} for i in range(50)}
        assert events.named("session.park") == []
        assert m.stats().cached == 50 and m.stats().parked == 0
        assert m._registry.idle == 45
        await bump(m, "w0")  # a turn on a key kept as bytes: no load
        assert loads(storage) == 50
