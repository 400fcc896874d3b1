"""SessionManager.scan: every stored session under a prefix, paged, merged with the cache."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from actorsess import InvalidKeyError, MemoryStorage, SessionConfig, SessionManager
from actorsess.storage import Conflict, LoadResult, Storage, WriteItem

from .conftest import Events
from .helpers import counter, put_record

SLOW = SessionConfig(flush_interval=60)


async def collect(manager: SessionManager[Any], prefix: str = "", **kw: Any) -> dict[str, Any]:
    found: dict[str, Any] = {}
    async for key, value in manager.scan(prefix, **kw):
        assert key not in found or found[key] == value  # Redis SCAN may repeat a key
        found[key] = value
    return found


async def test_scan_walks_every_stored_session_under_a_prefix(storage_factory: Any) -> None:
    async with SessionManager(storage_factory(), initial=counter) as m:
        for i in range(250):
            async with m.session(f"chat:{i}") as session:
                session["n"] = i + 1
        for i in range(10):
            await m.update(f"user:{i}", lambda s: s.update(n=7))
        for i in range(5):
            await m.delete(f"chat:{i}")  # tombstones: no session
    # Cold: a fresh manager (a restart) finds everything in storage.
    async with SessionManager(storage_factory(), initial=counter) as again:
        chats = await collect(again, "chat:", batch=16)
        assert chats == {f"chat:{i}": {"n": i + 1} for i in range(5, 250)}
        assert len(await collect(again, batch=7)) == 255
        assert await collect(again, "nobody:") == {}
        assert again.stats().cached == 0  # a walk caches nothing


async def test_a_cached_change_wins_over_what_storage_holds(storage_factory: Any) -> None:
    """Unwritten changes come as they are now: changed, new, and deleted sessions."""
    async with SessionManager(storage_factory(), initial=counter, config=SLOW) as m:
        for key in ("k1", "k2", "k3"):
            await m.update(key, lambda s: s.update(n=1))
        await m.flush()
        await m.update("k1", lambda s: s.update(n=10))  # changed, not written
        await m.update("k4", lambda s: s.update(n=4))  # storage has no record yet
        turn = m.session("k2")
        async with turn:
            turn.delete()  # deleted, not written
        assert m.stats().dirty == 3
        assert await collect(m, "k") == {"k1": {"n": 10}, "k3": {"n": 1}, "k4": {"n": 4}}


async def test_a_prefix_is_literal_even_with_pattern_characters(storage_factory: Any) -> None:
    keys = ["a*b:1", "a*b:2", "axb:1", "a?b", "a[b]:1", "a\\b:1"]
    async with SessionManager(storage_factory(), initial=counter) as m:
        for key in keys:
            await m.update(key, lambda s: s.update(n=1))
    async with SessionManager(storage_factory(), initial=counter) as again:
        assert set(await collect(again, "a*b:")) == {"a*b:1", "a*b:2"}
        assert set(await collect(again, "a[b]")) == {"a[b]:1"}
        assert set(await collect(again, "a\\b")) == {"a\\b:1"}
        assert set(await collect(again, "a?")) == {"a?b"}


async def test_a_corrupt_record_is_skipped_and_logged(storage_factory: Any, events: Events) -> None:
    storage = storage_factory()
    await put_record(storage, "good", b'{"n":1}', 1)
    await put_record(storage, "bad", b"{not json", 1)
    async with SessionManager(storage, initial=counter, logger=events.logger) as m:
        assert await collect(m) == {"good": {"n": 1}}
        assert m.stats().errors == 1
    [corrupt] = events.named("session.corrupt")
    assert corrupt["key"] == "bad"


class NoScan(Storage):
    """A storage with only the required protocol: it cannot list its keys."""

    def __init__(self) -> None:
        self._records = MemoryStorage()

    async def load_many(self, keys: Sequence[str]) -> list[LoadResult]:
        return await self._records.load_many(keys)

    async def write_many(self, items: Sequence[WriteItem], ttl_ms: int | None) -> list[Conflict]:
        return await self._records.write_many(items, ttl_ms)

    async def delete_many(self, keys: Sequence[str]) -> None:
        await self._records.delete_many(keys)

    async def close(self) -> None:
        await self._records.close()


async def test_scan_refuses_what_it_cannot_do() -> None:
    async with SessionManager(MemoryStorage(), initial=counter) as m:
        with pytest.raises(InvalidKeyError, match="prefix"):
            await collect(m, 5)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="batch must be an integer >= 1, got 0"):
            await collect(m, batch=0)
    async with SessionManager(NoScan(), initial=counter) as m:
        with pytest.raises(TypeError, match="scan\\(\\) needs a storage that can list its keys"):
            await collect(m)
