"""The LRU registry: bounded cache, eviction never loses a dirty session."""

from __future__ import annotations

import asyncio
import random
from typing import Any

from actorsess import MemoryStorage, SessionConfig, SessionManager

from .conftest import Events
from .helpers import RecordingStorage, counter, racy_increment


async def test_eviction_pressure_loses_nothing(storage_factory: Any) -> None:
    """With max_cached far below the key count, every increment still lands."""
    config = SessionConfig(max_cached=16, flush_interval=0.005, max_batch=32)
    keys = [f"user:{i}" for i in range(300)]
    rounds = 5
    async with SessionManager(storage_factory(), initial=counter, config=config) as m:
        jobs = [racy_increment(m, k) for k in keys for _ in range(rounds)]
        random.Random(3).shuffle(jobs)
        for start in range(0, len(jobs), 64):
            await asyncio.gather(*jobs[start : start + 64])
        assert m.stats().evictions > 0
    async with SessionManager(storage_factory(), initial=counter, config=config) as again:
        values = [(await again.get(k))["n"] for k in keys]
    assert values == [rounds] * len(keys)


async def test_dirty_evicted_session_is_parked_and_still_readable(events: Events) -> None:
    """A dirty session pushed out of the LRU stays findable with its latest value; the
    logs say it was parked, and evicted only once it really leaves memory."""
    storage = RecordingStorage()
    config = SessionConfig(max_cached=2, flush_interval=3600)
    m = SessionManager(storage, initial=counter, config=config, logger=events.logger)
    async with m:
        await m.update("a", lambda s: s.update(n=1))
        await m.update("b", lambda s: s.update(n=2))
        await m.update("c", lambda s: s.update(n=3))
        assert m.stats().parked == 1
        assert storage.load_batches.count(["actorsess:a"]) == 1
        assert await m.get("a") == {"n": 1}
        assert storage.load_batches.count(["actorsess:a"]) == 1, "read hit the parked actor"
        # Pushed out while dirty: parked (kept), not evicted.
        assert events.named("session.evict") == []
        assert events.named("session.park") == [
            {
                "event": "session.park",
                "key": "a",
                "was_dirty": True,
                "held": False,
                "log_level": "debug",
            }
        ]
        assert m.stats().evictions == 0
        await m.flush()
        assert m.stats().parked == 0
        assert m.stats().cached <= 2
        # Written, it leaves memory: now it is an eviction, and a clean one.
        [evicted] = events.named("session.evict")
        assert evicted["key"] == "a" and evicted["was_dirty"] is False
        assert m.stats().evictions == 1


async def test_clean_idle_sessions_are_dropped_at_the_bound() -> None:
    """Clean, idle sessions beyond max_cached are forgotten and reloaded on demand."""
    storage = RecordingStorage()
    config = SessionConfig(max_cached=10)
    async with SessionManager(storage, initial=counter, config=config) as m:
        for i in range(50):
            await m.get(f"k{i}")
        assert m.stats().cached == 10
        assert m.stats().evictions == 40


async def test_held_session_is_never_dropped() -> None:
    """An evicted session that is still held keeps serializing its key."""
    config = SessionConfig(max_cached=1)
    async with SessionManager(MemoryStorage(), initial=counter, config=config) as m:
        release = asyncio.Event()
        order: list[str] = []

        async def holder() -> None:
            async with m.session("x") as s:
                order.append("first-in")
                await release.wait()
                s["n"] = 1
                order.append("first-out")

        async def second() -> None:
            async with m.session("x") as s:
                order.append(f"second-sees-{s['n']}")

        t1 = asyncio.create_task(holder())
        await asyncio.sleep(0.01)
        await m.get("other")  # pushes "x" out of the one-slot LRU while held
        t2 = asyncio.create_task(second())
        await asyncio.sleep(0.01)
        release.set()
        await asyncio.gather(t1, t2)
        assert order == ["first-in", "first-out", "second-sees-1"]


async def test_recently_used_sessions_outlive_idle_ones() -> None:
    """The second-chance LRU keeps a session that is used between insertions."""
    storage = RecordingStorage()
    async with SessionManager(storage, initial=counter, config=SessionConfig(max_cached=4)) as m:
        await m.get_many(["hot", "a", "b", "c"])
        for key in ["d", "e", "f", "g", "h", "i"]:
            async with m.session("hot"):
                pass  # a read: the session stays clean, so only the LRU can keep it
            await m.get(key)
        loads_of_hot = sum(batch.count("actorsess:hot") for batch in storage.load_batches)
        assert loads_of_hot == 1
        assert m.stats().cached == 4


async def test_evictions_count_only_sessions_that_left_memory(events: Events) -> None:
    """With max_cached=10 and 5,000 turns over 50 keys at once, busy or dirty sessions
    pushed out are parked (session.park), not reported as evicted; every session.evict
    is a clean session leaving memory, and stats().evictions counts exactly those."""
    config = SessionConfig(max_cached=10, flush_interval=0.01)
    m = SessionManager(RecordingStorage(), initial=counter, config=config, logger=events.logger)
    async with m:
        keys = [f"k{i % 50}" for i in range(5000)]
        await asyncio.gather(*(m.update(k, lambda s: s.update(n=s["n"] + 1)) for k in keys))
        await m.flush()
        evicted = events.named("session.evict")
        assert all(e["was_dirty"] is False for e in evicted)
        assert len(evicted) == m.stats().evictions
        assert events.named("session.park")
        values = await m.get_many(sorted(set(keys)))
    assert all(v == {"n": 100} for v in values.values())
