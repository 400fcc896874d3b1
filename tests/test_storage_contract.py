"""One contract, three backends: memory, Redis and SQLite behave the same."""

from __future__ import annotations

from typing import Any

import pytest

from actorsess import SessionConfig, SessionManager, Storage, WriteItem
from actorsess.storage import BadValue
from actorsess.testing.storage_contract import StorageContract


class TestStorageContract(StorageContract):
    """The shipped contract (``actorsess.testing.storage_contract``), run against memory,
    Redis, SQLite and Redis Cluster through the ``storage_factory`` fixture."""


@pytest.mark.parametrize("kind", ["redis", "sqlite"])
async def test_ttl_expires_stored_records(kind: str, redis_url: str, tmp_path: Any) -> None:
    """Records written with a TTL disappear after it (Redis PX; SQLite expiry column)."""
    import asyncio

    from actorsess import RedisStorage, SqliteStorage

    storage: Storage = (
        RedisStorage.from_url(redis_url) if kind == "redis" else SqliteStorage(tmp_path / "t.db")
    )
    await storage.write_many([WriteItem("ttl:k", b"as1:1:{}", 1)], ttl_ms=150)
    assert await storage.load_many(["ttl:k"]) == [b"as1:1:{}"]
    await asyncio.sleep(0.3)
    # Gone for readers; SQLite still knows the version, so it reads as a tombstone.
    assert await storage.load_many(["ttl:k"]) in ([None], [b"as1:1:"])
    await storage.close()


async def test_redis_reports_wrong_type_instead_of_missing(
    redis_storage: Any, redis_client: Any
) -> None:
    """A Redis list under a session key is reported as a bad value, not as absent."""
    await redis_client.rpush("actorsess:listkey", "x")
    [result] = await redis_storage.load_many(["actorsess:listkey"])
    assert isinstance(result, BadValue)
    await redis_storage.close()


async def test_cluster_reloads_scripts_after_a_script_cache_flush(redis_cluster: Any) -> None:
    """A node whose script cache was emptied (restart, failover) gets the script again."""
    import redis.asyncio as redis_asyncio

    from actorsess import RedisStorage

    storage = RedisStorage.from_url(redis_cluster.url, cluster=True)
    await storage.write_many([WriteItem(f"s:{i}", b"as1:1:{}", 1) for i in range(50)], None)
    for node in redis_cluster.nodes:
        direct = redis_asyncio.Redis(port=node.port)
        await direct.script_flush()
        await direct.aclose()
    await storage.write_many([WriteItem(f"s:{i}", b"as1:2:{}", 2) for i in range(50)], None)
    assert await storage.load_many([f"s:{i}" for i in range(50)]) == [b"as1:2:{}"] * 50
    await storage.close()


async def test_redis_prepare_opens_connections_and_loads_every_script(
    redis_url: str, redis_client: Any
) -> None:
    """A started manager has pooled connections open and the scripts loaded before
    its first load, so the first batches pay no connection set-up or NOSCRIPT."""
    from actorsess import RedisStorage
    from actorsess.storage.redis import PREPARED_CONNECTIONS

    await redis_client.script_flush()
    storage = RedisStorage.from_url(redis_url, client_name="prepared")
    async with SessionManager(storage, initial=dict):
        clients = await redis_client.client_list()
        assert sum(c["name"] == "prepared" for c in clients) == PREPARED_CONNECTIONS
        sources = storage.script_sources
        assert len(sources) == 10
        assert await redis_client.script_exists(*map(sha1_hex, sources)) == [True] * 10


async def test_sqlite_prepare_opens_the_file_before_the_first_load(tmp_path: Any) -> None:
    """A started manager over SQLite has the file open in WAL mode with its table,
    so the first loads after start do not wait for the file to be set up."""
    import sqlite3

    from actorsess import SqliteStorage

    path = tmp_path / "sessions.sqlite3"
    async with SessionManager(SqliteStorage(path), initial=dict):
        look = sqlite3.connect(path)
        try:
            [(mode,)] = look.execute("PRAGMA journal_mode").fetchall()
            tables = look.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            assert mode == "wal"
            assert [name for (name,) in tables] == ["actorsess_sessions"]
        finally:
            look.close()


async def test_unreachable_redis_at_start_is_logged_and_start_returns(events: Any) -> None:
    """start() does not fail (nor wait long) when Redis is down; loads then fail as usual."""
    from actorsess import RedisStorage, StorageError
    from actorsess.testing import free_port

    storage = RedisStorage.from_url(f"redis://127.0.0.1:{free_port()}")
    config = SessionConfig(load_timeout=1.0)
    m = SessionManager[dict[str, int]](storage, initial=dict, config=config, logger=events.logger)
    await m.start()
    [unprepared] = events.named("session.storage_unprepared")
    assert "ConnectionError" in unprepared["error"]
    [claim] = events.named("session.claim_failed")  # start() goes on without the check
    assert claim["space"] == "actorsess:" and "ConnectionError" in claim["error"]
    with pytest.raises(StorageError, match="could not load session 'k'"):
        await m.get("k")
    [failed] = events.named("session.load_failed")
    assert failed["keys"] == 1 and "ConnectionError" in failed["error"]
    await m.close()
    [unclaim] = events.named("session.unclaim_failed")
    assert "ConnectionError" in unclaim["error"]


def sha1_hex(text: str) -> str:
    import hashlib

    return hashlib.sha1(text.encode()).hexdigest()


async def test_the_shipped_contract_catches_a_storage_that_breaks_it() -> None:
    """A storage whose all-or-nothing write lands part of a refused batch fails it."""
    from actorsess import MemoryStorage

    class HalfAtomic(MemoryStorage):
        async def write_all(self, items: Any, ttl_ms: int | None) -> list[Any]:
            return await self.write_many(items, ttl_ms)  # the others land: broken

    shared = HalfAtomic()
    with pytest.raises(AssertionError):
        await StorageContract().test_write_all_is_all_or_nothing(lambda: shared)
