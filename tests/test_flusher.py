"""The flusher: coalescing, interval and batch triggers, retries, backpressure, TTL."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from typing import Any

import pytest
import redis.asyncio as redis_asyncio

from actorsess import (
    BackpressureTimeoutError,
    RedisStorage,
    SessionConfig,
    SessionManager,
    StorageError,
    WriteItem,
)
from actorsess.storage.base import Conflict
from actorsess.testing import FakeClock

from .conftest import Events
from .helpers import RecordingStorage, counter


async def bump(m: SessionManager[dict[str, int]], key: str) -> None:
    async with m.session(key) as s:
        s["n"] += 1


async def test_many_updates_to_one_key_cost_one_write() -> None:
    """1000 changes to one key between flushes are written once, with the last value."""
    storage = RecordingStorage()
    clock = FakeClock()
    config = SessionConfig(flush_interval=1.0)
    async with SessionManager(storage, initial=counter, config=config, clock=clock) as m:
        for _ in range(1000):
            await bump(m, "k")
        await clock.advance(0.5)
        assert storage.batches == []
        await clock.advance(0.6)
        assert [[(i.key, i.version) for i in b] for b in storage.batches] == [
            [("actorsess:k", 1000)]
        ]
        assert storage.raw("actorsess:k") == b'as1:1000:{"n":1000}'


async def test_max_batch_dirty_sessions_trigger_an_early_write() -> None:
    """Reaching max_batch dirty sessions writes before flush_interval has passed."""
    storage = RecordingStorage()
    clock = FakeClock()
    config = SessionConfig(flush_interval=3600, max_batch=10)
    async with SessionManager(storage, initial=counter, config=config, clock=clock) as m:
        for i in range(25):
            await bump(m, f"k{i}")
        await clock.advance(0)
        assert [len(b) for b in storage.batches] == [10, 10]
        assert m.stats().dirty == 5


async def test_change_during_write_keeps_the_session_dirty() -> None:
    """A change that lands while its older version is being written is written next round."""
    storage = RecordingStorage()
    storage.write_gate = asyncio.Event()
    config = SessionConfig(flush_interval=0.001)
    async with SessionManager(storage, initial=counter, config=config) as m:
        await bump(m, "k")
        await storage.write_started.wait()
        await bump(m, "k")  # version 2 while version 1 is in flight
        storage.write_gate.set()
        await m.flush()
        assert [[i.version for i in b] for b in storage.batches] == [[1], [2]]
        assert storage.raw("actorsess:k") == b'as1:2:{"n":2}'
        assert m.stats().dirty == 0


async def test_failed_writes_stay_dirty_and_retry_with_backoff(events: Events) -> None:
    """Failing writes are retried after growing, capped delays; nothing is lost."""
    storage = RecordingStorage()
    storage.fail_writes = 4
    clock = FakeClock()
    config = SessionConfig(flush_interval=0.1, retry_base_delay=1.0, retry_max_delay=4.0)
    m = SessionManager(
        storage,
        initial=counter,
        config=config,
        clock=clock,
        logger=events.logger,
        rng=random.Random(1),
    )
    async with m:
        await bump(m, "k")
        for _ in range(40):
            await clock.advance(0.25)
        failures = events.named("session.flush_failed")
        assert len(failures) == 4
        delays = [f["retry_in_s"] for f in failures]
        assert delays[0] <= 1.0 and delays[-1] <= 4.0 and delays[-1] >= 2.0
        assert {"error", "retry_in_s", "dirty"} <= set(failures[0])
        assert storage.raw("actorsess:k") == b'as1:1:{"n":1}'
        [flush] = events.named("session.flush")
        assert flush["attempt"] == 5 and flush["sessions"] == 1
        assert m.stats().errors == 4


async def test_persist_raises_when_the_write_fails_and_keeps_it_dirty() -> None:
    """persist() reports a failed write; the change stays dirty and lands later."""
    storage = RecordingStorage()
    storage.fail_writes = 1
    config = SessionConfig(flush_interval=3600, retry_base_delay=0.01, retry_max_delay=0.02)
    async with SessionManager(storage, initial=counter, config=config) as m:
        await bump(m, "k")
        with pytest.raises(StorageError, match="injected write failure"):
            await m.persist("k")
        assert m.stats().dirty == 1
        await m.persist("k")
        assert storage.raw("actorsess:k") == b'as1:1:{"n":1}'


async def test_timed_out_write_is_retried() -> None:
    """A write that exceeds write_timeout has an unknown outcome and is sent again."""
    storage = RecordingStorage()
    storage.write_gate = asyncio.Event()
    config = SessionConfig(
        flush_interval=0.001, write_timeout=0.05, retry_base_delay=0.01, retry_max_delay=0.02
    )
    async with SessionManager(storage, initial=counter, config=config) as m:
        await bump(m, "k")
        await asyncio.sleep(0.1)
        assert m.stats().errors >= 1 and m.stats().dirty == 1
        storage.write_gate.set()
        await m.flush()
        assert storage.raw("actorsess:k") == b'as1:1:{"n":1}'


async def test_backpressure_holds_new_work_at_max_dirty(events: Events) -> None:
    """With storage down, dirty sessions stop growing at max_dirty; work resumes after."""
    storage = RecordingStorage()
    storage.fail_writes = 10**9
    config = SessionConfig(
        flush_interval=0.01,
        max_dirty=20,
        max_batch=5,
        retry_base_delay=0.01,
        retry_max_delay=0.02,
        close_timeout=1,
    )
    m = SessionManager(storage, initial=counter, config=config, logger=events.logger)
    async with m:
        tasks = [asyncio.create_task(bump(m, f"k{i}")) for i in range(100)]
        await asyncio.sleep(0.2)
        assert m.stats().dirty == 20
        assert sum(t.done() for t in tasks) == 20
        assert events.named("session.backpressure")
        storage.fail_writes = 0
        await asyncio.gather(*tasks)
        await m.flush()
        assert len(storage._records) == 100


async def test_backpressure_gives_up_after_its_timeout() -> None:
    """A block waiting for room longer than backpressure_timeout gets a clear error."""
    storage = RecordingStorage()
    storage.fail_writes = 10**9
    config = SessionConfig(
        flush_interval=0.01,
        max_dirty=2,
        backpressure_timeout=0.1,
        retry_base_delay=0.01,
        retry_max_delay=0.02,
        close_timeout=0.2,
    )
    async with SessionManager(storage, initial=counter, config=config) as m:
        await bump(m, "a")
        await bump(m, "b")
        with pytest.raises(BackpressureTimeoutError, match="max_dirty=2"):
            await bump(m, "c")


async def test_ttl_is_applied_on_write_and_cached_values_expire() -> None:
    """Every write carries the TTL; a cached session unchanged for ttl reads as initial."""
    storage = RecordingStorage()
    clock = FakeClock()
    storage._timer = clock.now
    config = SessionConfig(flush_interval=1.0, ttl=60)
    async with SessionManager(storage, initial=counter, config=config, clock=clock) as m:
        await bump(m, "k")
        await clock.advance(1.1)
        assert storage.raw("actorsess:k") is not None
        await clock.advance(30)
        assert await m.get("k") == {"n": 1}
        await clock.advance(30)
        assert await m.get("k") == {"n": 0}
        # Expired: read as a tombstone of its version until that goes too.
        assert await storage.load_many(["actorsess:k"]) == [b"as1:1:"]


async def test_close_logs_what_could_not_be_written(events: Events) -> None:
    """If storage stays down past close_timeout, the unwritten keys are logged."""
    storage = RecordingStorage()
    storage.fail_writes = 10**9
    config = SessionConfig(
        flush_interval=0.01, close_timeout=0.2, retry_base_delay=0.01, retry_max_delay=0.02
    )
    m = SessionManager(storage, initial=counter, config=config, logger=events.logger)
    await bump(m, "lost-1")
    await m.close()
    [entry] = events.named("session.unflushed")
    assert entry["count"] == 1 and entry["keys"] == ["lost-1"]
    assert "injected write failure" in entry["error"]


async def test_flush_covers_everything_dirty_beyond_one_batch() -> None:
    """flush() returns only after all dirty sessions are written, across many batches."""
    storage = RecordingStorage()
    config = SessionConfig(flush_interval=3600, max_batch=7)
    async with SessionManager(storage, initial=counter, config=config) as m:
        await asyncio.gather(*(bump(m, f"k{i}") for i in range(6)))
        await asyncio.gather(*(bump(m, f"j{i}") for i in range(30)))
        await m.flush()
        assert m.stats().dirty == 0
        assert len(set(storage.written_keys)) == 36


async def test_flush_log_event_fields(events: Events) -> None:
    """session.flush carries sessions, bytes, duration_ms and attempt."""
    storage = RecordingStorage()
    m = SessionManager(storage, initial=counter, logger=events.logger)
    async with m:
        await bump(m, "k")
        await m.flush()
    [flush] = events.named("session.flush")
    assert flush["sessions"] == 1 and flush["bytes"] == len(b'as1:1:{"n":1}')
    assert flush["attempt"] == 1 and flush["duration_ms"] >= 0


async def test_two_rounds_in_flight_never_hold_the_same_session() -> None:
    """While writes stall, two rounds are in flight over disjoint sessions, no more."""
    storage = RecordingStorage()
    storage.write_gate = asyncio.Event()
    config = SessionConfig(flush_interval=3600, max_batch=3)
    async with SessionManager(storage, initial=counter, config=config) as m:
        for i in range(5):
            await bump(m, f"k{i}")  # 3 dirty start round one, the 4th round two
        in_flight = m._flusher._in_flight
        assert in_flight == {f"actorsess:k{i}" for i in range(4)}
        for i in range(5):
            await bump(m, f"k{i}")  # newer versions while the old ones are in flight
        assert len(in_flight) == 4  # still two rounds: k4 waits for a free slot
        storage.write_gate.set()
        await m.flush()
    written: dict[str, list[int]] = {}
    for batch in storage.batches:
        assert len({i.key for i in batch}) == len(batch)
        for item in batch:
            written.setdefault(item.key, []).append(item.version)
    assert all(versions == sorted(versions) for versions in written.values())
    assert all(storage.raw(f"actorsess:k{i}") == b'as1:2:{"n":2}' for i in range(5))


async def test_batches_are_bounded_by_bytes(redis_url: str, redis_client: Any) -> None:
    """Large sessions are written in batches of at most max_batch_bytes (a session larger
    than that alone), all landing in Redis."""
    sizes: list[tuple[int, int]] = []

    class Sizes(RedisStorage):
        async def write_many(
            self, items: Sequence[WriteItem], ttl_ms: int | None
        ) -> list[Conflict]:
            sizes.append((len(items), sum(len(i.blob or b"") for i in items)))
            return await super().write_many(items, ttl_ms)

    storage = Sizes(redis_asyncio.Redis.from_url(redis_url), owns_client=True)
    config = SessionConfig(
        flush_interval=3600, max_batch_bytes=1_000_000, max_session_bytes=2_000_000
    )
    async with SessionManager[dict[str, str]](storage, initial=dict, config=config) as m:
        for i in range(30):
            await m.update(f"big{i}", lambda d: d.update(x="y" * 200_000))
        await m.update("huge", lambda d: d.update(x="z" * 1_500_000))
        await m.flush()
    assert len(sizes) >= 7
    assert all(count == 1 or size <= 1_000_000 + 200_100 for count, size in sizes)
    assert sum(count for count, _ in sizes) == 31
    assert len(await redis_client.keys("actorsess:big*")) == 30


async def test_a_batch_that_times_out_is_split_until_it_lands(events: Events) -> None:
    """A batch too large to land within write_timeout is retried in halves (down to one
    session) instead of being re-sent whole forever; everything lands, nothing is left
    unflushed at close."""

    class SlowPerItem(RecordingStorage):
        # Storage that needs 10 ms per session: more than 40 sessions exceed 0.4 s.
        async def write_many(
            self, items: Sequence[WriteItem], ttl_ms: int | None
        ) -> list[Conflict]:
            await asyncio.sleep(0.01 * len(items))
            return await super().write_many(items, ttl_ms)

    storage = SlowPerItem()
    config = SessionConfig(
        flush_interval=3600, write_timeout=0.4, retry_base_delay=0.01, retry_max_delay=0.02
    )
    m = SessionManager(storage, initial=counter, config=config, logger=events.logger)
    async with m:
        for i in range(200):
            await bump(m, f"k{i}")
        async with asyncio.timeout(30):
            while True:
                try:
                    await m.flush()
                    break
                except StorageError:
                    continue
    assert all(storage.raw(f"actorsess:k{i}") == b'as1:1:{"n":1}' for i in range(200))
    assert not events.named("session.unflushed")
    assert max(len(batch) for batch in storage.batches) <= 40
