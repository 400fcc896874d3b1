"""Versions never repeat for a key, every write and delete is fenced by them, and a
write the fence refuses is reported, never counted as done (design rule 11)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as redis_asyncio

from actorsess import (
    RedisStorage,
    SessionConfig,
    SessionConflictError,
    SessionManager,
    SqliteStorage,
    Storage,
    WriteItem,
)
from actorsess.storage.base import Conflict

from .conftest import Events
from .helpers import counter

PREFIX = "actorsess:"


def increment(data: dict[str, int]) -> None:
    data["n"] += 1


async def stored(storage: Storage, key: str) -> bytes | None:
    [record] = await storage.load_many([PREFIX + key])
    assert not isinstance(record, tuple)
    return record


async def test_versions_continue_after_a_delete(storage_factory: Any) -> None:
    """A session deleted and written again gets versions above every earlier one, so a
    late copy of a write made before the delete cannot land over the new data."""
    config = SessionConfig(flush_interval=60)
    async with SessionManager(storage_factory(), initial=counter, config=config) as first:
        await first.update("k", increment)
        await first.update("k", increment)
        await first.persist("k")
        before_delete = await stored(first.storage, "k")
        assert before_delete == b'as1:2:{"n":2}'
        await first.delete("k")
    async with SessionManager(storage_factory(), initial=counter, config=config) as second:
        await second.update("k", increment)
        await second.persist("k")
    # The write of version 2 arrives late (it was held up on a congested connection).
    late = storage_factory()
    refused = await late.write_many([WriteItem(PREFIX + "k", before_delete, 2)], None)
    assert refused == [Conflict(0, "storage holds a newer version")]
    async with SessionManager(storage_factory(), initial=counter, config=config) as third:
        assert await third.get("k") == {"n": 1}
    assert await stored(late, "k") == b'as1:4:{"n":1}'


class _Recorder(RedisStorage):
    """A real RedisStorage that keeps a copy of every item the flusher sent."""

    sent: list[list[WriteItem]]

    async def write_many(self, items: Sequence[WriteItem], ttl_ms: int | None) -> list[Conflict]:
        self.sent.append(list(items))
        return await super().write_many(items, ttl_ms)


async def test_a_late_first_write_cannot_replace_newer_data(redis_url: str) -> None:
    """The very first write of a session, and a delete, are fenced like every other: when
    the bytes of an earlier write arrive late, storage keeps the newer state."""
    client = redis_asyncio.Redis.from_url(redis_url)
    await client.flushdb()
    storage = _Recorder(client)
    storage.sent = []
    async with SessionManager(
        storage, initial=counter, config=SessionConfig(flush_interval=60)
    ) as m:
        await m.update("k", increment)
        await m.flush()  # the session's first write: version 1
        await m.update("k", increment)
        await m.update("k", increment)
        await m.flush()  # version 3
        first_write = storage.sent[0]
        assert await storage.write_many(first_write, None) == [
            Conflict(0, "storage holds a newer version")
        ]
        assert await client.get(PREFIX + "k") == b'as1:3:{"n":3}'
        await m.delete("k")
        assert await storage.write_many(first_write, None) == [
            Conflict(0, "storage holds a newer version")
        ]
        assert await m.get("k") == {"n": 0}
    fresh = RedisStorage.from_url(redis_url)
    async with SessionManager(fresh, initial=counter) as again:
        assert await again.get("k") == {"n": 0}
    await client.aclose()


async def test_sqlite_session_reloaded_after_its_ttl_is_written(tmp_path: Path) -> None:
    """An expired SQLite row is gone for readers; a session started again after it
    is written and read back (it was skipped by the fence and reported as written)."""
    path = tmp_path / "ttl.sqlite3"
    config = SessionConfig(flush_interval=60, ttl=0.2)
    async with SessionManager(SqliteStorage(path), initial=counter, config=config) as m:
        for _ in range(20):
            await m.update("k", increment)
    await asyncio.sleep(0.3)
    async with SessionManager(SqliteStorage(path), initial=counter, config=config) as m:
        assert await m.get("k") == {"n": 0}
        for _ in range(3):
            await m.update("k", increment)
        await m.persist("k")
    async with SessionManager(SqliteStorage(path), initial=counter, config=config) as m:
        assert await m.get("k") == {"n": 3}


async def test_a_refused_write_is_reported_never_counted_as_done(
    storage_factory: Any, events: Events
) -> None:
    """When storage already holds a newer version (someone else wrote), the write is
    refused: persist() raises, session.conflict is logged, the stats count it, and the
    next turn works on what storage holds."""
    config = SessionConfig(flush_interval=60)
    m = SessionManager(storage_factory(), initial=counter, config=config, logger=events.logger)
    async with m:
        await m.update("k", increment)
        await m.persist("k")
        other = storage_factory()
        await other.write_many([WriteItem(PREFIX + "k", b'as1:100:{"n":100}', 100)], None)
        await m.update("k", increment)
        with pytest.raises(SessionConflictError, match="storage holds a newer version"):
            await m.persist("k")
        assert m.stats().conflicts == 1
        [conflict] = events.named("session.conflict")
        assert conflict["key"] == "k"
        assert await stored(other, "k") == b'as1:100:{"n":100}'
        assert await m.update("k", lambda d: d["n"]) == 100


@pytest.mark.parametrize("ownership", ["local", "shared"])
async def test_versions_above_2_53_compare_exactly(
    ownership: str, redis_client: redis_asyncio.Redis, redis_url: str
) -> None:
    """A stored version above 2**53 (written by something else) is compared exactly, so
    the next write is neither refused nor taken for a replay."""
    big = 2**53
    await redis_client.set(PREFIX + "k", b'as1:%d:{"n":5}' % big)
    config = SessionConfig(flush_interval=60, ownership=ownership)  # type: ignore[arg-type]
    async with SessionManager(
        RedisStorage.from_url(redis_url), initial=counter, config=config
    ) as m:
        await m.update("k", increment)
        await m.persist("k")
    assert await redis_client.get(PREFIX + "k") == b'as1:%d:{"n":6}' % (big + 1)
