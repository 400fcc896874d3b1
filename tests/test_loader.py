"""Loading: batched, de-duplicated, failing fast, and strict about corrupt records."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from actorsess import (
    CorruptSessionError,
    MemoryStorage,
    SessionConfig,
    SessionManager,
    StorageError,
)

from .conftest import Events
from .helpers import RecordingStorage, counter


async def test_concurrent_misses_of_one_key_share_one_load() -> None:
    """Fifty blocks missing the same key cause a single load of it."""
    storage = RecordingStorage()
    async with SessionManager(storage, initial=counter) as m:

        async def bump() -> None:
            async with m.session("k") as s:
                s["n"] += 1

        await asyncio.gather(*(bump() for _ in range(50)))
        assert storage.load_batches == [["actorsess:k"]]
        assert await m.get("k") == {"n": 50}


async def test_many_misses_at_once_load_in_one_batch() -> None:
    """Misses of many keys in the same loop iteration ride in one load_many call."""
    storage = RecordingStorage()
    async with SessionManager(storage, initial=counter) as m:
        await asyncio.gather(*(m.get(f"k{i}") for i in range(200)))
        assert len(storage.load_batches) == 1
        assert len(storage.load_batches[0]) == 200


async def test_load_failure_fails_the_waiters_and_the_next_access_retries() -> None:
    """A failing load raises StorageError for those waiting; a later access loads again."""
    storage = RecordingStorage()
    storage.fail_loads = 1
    async with SessionManager(storage, initial=counter) as m:
        results = await asyncio.gather(*(m.get("k") for _ in range(3)), return_exceptions=True)
        assert all(isinstance(r, StorageError) for r in results)
        assert "could not load session 'k'" in str(results[0])
        assert await m.get("k") == {"n": 0}


async def test_load_timeout_is_a_clear_error() -> None:
    """A load slower than load_timeout fails with an error naming the timeout."""
    storage = RecordingStorage()
    storage.load_gate = asyncio.Event()
    async with SessionManager(
        storage, initial=counter, config=SessionConfig(load_timeout=0.05)
    ) as m:
        with pytest.raises(StorageError, match="timed out after 0.05s"):
            await m.get("k")
        storage.load_gate.set()


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"not json at all", "missing 'as1:' header"),
        (b"as1:3:{broken", "Invalid JSON|EOF"),
        (b"as1:x:{}", "no valid version"),
        (b"as9:1:{}", "newer than this actorsess understands"),
        (b"as1:1:[1,2]", "should be an object"),
        (b"as1:1:" + b"[" * 100_000 + b"]" * 100_000, "recursion limit"),
    ],
)
async def test_corrupt_records_raise_naming_the_key_and_are_kept(
    raw: bytes, reason: str, events: Events
) -> None:
    """Bad stored data raises CorruptSessionError; the record stays; other keys work."""
    storage = MemoryStorage()
    storage.put_raw("actorsess:bad", raw)
    config = SessionConfig(flush_interval=0.001, max_session_bytes=1_000_000)
    m = SessionManager(storage, initial=counter, config=config, logger=events.logger)
    async with m:
        with pytest.raises(CorruptSessionError, match=reason) as info:
            async with m.session("bad") as s:
                s["n"] = 1
        assert info.value.key == "bad"
        await m.update("good", lambda s: s.update(n=1))
        with pytest.raises(CorruptSessionError):
            await m.get("bad")
        await m.flush()
        assert storage.raw("actorsess:bad") == raw
        assert storage.raw("actorsess:good") == b'as1:1:{"n":1}'
        assert events.named("session.corrupt")[0]["key"] == "bad"


async def test_typed_session_with_wrong_shape_is_corrupt() -> None:
    """A stored object that does not validate against the typed session is refused."""
    import dataclasses

    @dataclasses.dataclass
    class Score:
        points: int = 0

    storage = MemoryStorage()
    storage.put_raw("actorsess:s", b'as1:1:{"points":"lots"}')
    async with SessionManager(storage, initial=Score) as m:
        with pytest.raises(CorruptSessionError, match="points"):
            await m.get("s")


async def test_wrong_redis_type_is_corrupt_and_untouched(
    redis_storage: Any, redis_client: Any
) -> None:
    """A Redis list under a session key is reported, not overwritten."""
    await redis_client.rpush("actorsess:chat", "a", "b")
    async with SessionManager(redis_storage, initial=counter) as m:
        with pytest.raises(CorruptSessionError, match="non-string type"):
            await m.update("chat", lambda s: s.update(n=1))
        await m.flush()
    assert await redis_client.lrange("actorsess:chat", 0, -1) == [b"a", b"b"]


async def test_delete_discards_a_corrupt_record() -> None:
    """delete() is the deliberate way out of a corrupt record."""
    storage = MemoryStorage()
    storage.put_raw("actorsess:bad", b"garbage")
    async with SessionManager(storage, initial=counter) as m:
        with pytest.raises(CorruptSessionError):
            await m.get("bad")
        await m.delete("bad")
        assert storage.raw("actorsess:bad") is None
        assert await m.update("bad", lambda s: s.update(n=2) or s["n"]) == 2


async def test_oversized_stored_record_is_corrupt() -> None:
    """A stored record far above max_session_bytes is refused rather than decoded."""
    storage = MemoryStorage()
    storage.put_raw("actorsess:big", b'as1:1:{"x":"' + b"a" * 5000 + b'"}')
    async with SessionManager(
        storage, initial=counter, config=SessionConfig(max_session_bytes=1000)
    ) as m:
        with pytest.raises(CorruptSessionError, match="over max_session_bytes=1000"):
            await m.get("big")


async def test_get_many_loads_in_batches_without_turns() -> None:
    """get_many() loads every missing key in max_batch chunks and returns copies."""
    storage = RecordingStorage()
    storage.put_raw("actorsess:k3", b'as1:4:{"n":3}')
    config = SessionConfig(max_batch=40)
    async with SessionManager(storage, initial=counter, config=config) as m:
        await m.update("k1", lambda s: s.update(n=1))
        values = await m.get_many([f"k{i}" for i in range(100)] + ["k3"])
        assert len(values) == 100
        assert values["k1"] == {"n": 1} and values["k3"] == {"n": 3} and values["k99"] == {"n": 0}
        assert [len(b) for b in storage.load_batches] == [1, 40, 40, 19]
        values["k1"]["n"] = 50
        assert await m.get("k1") == {"n": 1}


async def test_get_many_with_a_small_cache_leaves_nothing_parked() -> None:
    """Keys loaded by get_many beyond max_cached are dropped once loaded, not kept."""
    config = SessionConfig(max_cached=10)
    async with SessionManager(MemoryStorage(), initial=counter, config=config) as m:
        values = await m.get_many(f"k{i}" for i in range(200))
        assert len(values) == 200
        assert m.stats().cached == 10
        assert m.stats().parked == 0


async def test_an_initial_that_cannot_be_stored_fails_its_loads_instead_of_hanging() -> None:
    """``initial()`` giving a value the codec refuses (an int dict key) made the load
    task die with the error and every block on a new key wait forever. Now each
    caller gets ``SessionEncodeError`` naming the key and the problem, and the
    manager goes on (a stored session still loads)."""
    from actorsess import SessionEncodeError

    storage = MemoryStorage()
    storage.put_raw("actorsess:stored", b'as1:1:{"n":1}')
    unstorable: dict[Any, int] = {1: 2}
    async with SessionManager(storage, initial=lambda: dict(unstorable)) as m:
        for key in ("a", "b"):
            async with asyncio.timeout(5):
                with pytest.raises(SessionEncodeError, match=f"'{key}'.*initial\\(\\) gives"):
                    await m.get(key)
        async with asyncio.timeout(5):
            assert await m.get("stored") == {"n": 1}
