"""One contract, three backends: memory, Redis and SQLite behave the same."""

from __future__ import annotations

from typing import Any

import pytest

from actorsess import SessionConfig, SessionManager, Storage, WriteItem
from actorsess.storage import BadValue
from actorsess.storage.base import NEWER_VERSION, Conflict


class TestStorageContract:
    async def test_missing_keys_load_as_none(self, storage_factory: Any) -> None:
        """Keys never written come back as None, in the order asked."""
        storage: Storage = storage_factory()
        assert await storage.load_many(["a", "b"]) == [None, None]
        assert await storage.load_many([]) == []

    async def test_write_then_load_round_trips_bytes(self, storage_factory: Any) -> None:
        """A written blob is read back byte for byte, by another storage object too."""
        storage: Storage = storage_factory()
        blob = b"as1:3:" + bytes(range(256))
        await storage.write_many([WriteItem("k1", blob, 3), WriteItem("k2", b"as1:1:{}", 1)], None)
        other: Storage = storage_factory()
        assert await other.load_many(["k2", "nope", "k1"]) == [b"as1:1:{}", None, blob]

    async def test_overwrite_and_delete_in_one_batch(self, storage_factory: Any) -> None:
        """A batch may overwrite some keys and delete others (blob=None): a deleted key
        loads as a tombstone carrying its version."""
        storage: Storage = storage_factory()
        await storage.write_many(
            [WriteItem("a", b"as1:1:1", 1), WriteItem("b", b"as1:1:2", 1)], None
        )
        await storage.write_many([WriteItem("a", b"as1:2:9", 2), WriteItem("b", None, 2)], None)
        assert await storage.load_many(["a", "b"]) == [b"as1:2:9", b"as1:2:"]

    async def test_writes_are_idempotent(self, storage_factory: Any) -> None:
        """Sending the same batch twice (unknown outcome, retried) leaves the same state."""
        storage: Storage = storage_factory()
        batch = [WriteItem(f"k{i}", b"as1:%d:{}" % i, i) for i in range(1, 51)]
        await storage.write_many(batch, None)
        await storage.write_many(batch, None)
        assert await storage.load_many([f"k{i}" for i in range(1, 51)]) == [i.blob for i in batch]

    async def test_older_versions_never_overwrite_newer(self, storage_factory: Any) -> None:
        """Every write and delete is fenced: an older one is refused and reported, the
        same version again is a replay (done), the rest of the batch lands."""
        storage: Storage = storage_factory()
        assert await storage.write_many([WriteItem("k", b"as1:5:new", 5)], None) == []
        refused = await storage.write_many(
            [WriteItem("j", b"as1:1:j", 1), WriteItem("k", b"as1:3:old", 3)], None
        )
        assert refused == [Conflict(1, NEWER_VERSION)]
        assert await storage.load_many(["k", "j"]) == [b"as1:5:new", b"as1:1:j"]
        assert await storage.write_many([WriteItem("k", None, 4)], None) == [
            Conflict(0, NEWER_VERSION)
        ]
        assert await storage.load_many(["k"]) == [b"as1:5:new"]
        assert await storage.write_many([WriteItem("k", b"as1:5:new", 5)], None) == []
        assert await storage.write_many([WriteItem("k", None, 6)], None) == []
        assert await storage.load_many(["k"]) == [b"as1:6:"]
        assert await storage.write_many([WriteItem("k", b"as1:5:new", 5)], None) == [
            Conflict(0, NEWER_VERSION)
        ]
        assert await storage.load_many(["k"]) == [b"as1:6:"]

    async def test_delete_many(self, storage_factory: Any) -> None:
        """delete_many removes present keys and ignores absent ones."""
        storage: Storage = storage_factory()
        await storage.write_many([WriteItem("a", b"as1:1:1", 1)], None)
        await storage.delete_many(["a", "never"])
        assert await storage.load_many(["a"]) == [None]

    async def test_large_batches(self, storage_factory: Any) -> None:
        """Batches larger than one statement's parameter limit still land whole."""
        storage: Storage = storage_factory()
        batch = [WriteItem(f"key:{i}", b"as1:1:" + b"x" * 200, 1) for i in range(3000)]
        await storage.write_many(batch, None)
        loaded = await storage.load_many([i.key for i in batch])
        assert loaded == [i.blob for i in batch]

    async def test_close_twice(self, storage_factory: Any) -> None:
        """close() is safe to call twice."""
        storage: Storage = storage_factory()
        await storage.close()
        await storage.close()

    async def test_manager_round_trip_through_each_storage(self, storage_factory: Any) -> None:
        """A session written by one manager is read back by a fresh one over new storage."""
        config = SessionConfig(flush_interval=60)
        async with SessionManager(storage_factory(), initial=lambda: {"n": 0}, config=config) as m:
            async with m.session("chat:1") as s:
                s["n"] = 41
            await m.update("chat:1", lambda s: s.update(n=s["n"] + 1))
        async with SessionManager(storage_factory(), initial=lambda: {"n": 0}, config=config) as m2:
            assert await m2.get("chat:1") == {"n": 42}


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
    from actorsess import RedisStorage, SessionManager
    from actorsess.storage.redis import PREPARED_CONNECTIONS

    await redis_client.script_flush()
    storage = RedisStorage.from_url(redis_url, client_name="prepared")
    async with SessionManager(storage, initial=dict):
        clients = await redis_client.client_list()
        assert sum(c["name"] == "prepared" for c in clients) == PREPARED_CONNECTIONS
        sources = storage.script_sources
        assert len(sources) == 10
        assert await redis_client.script_exists(*map(sha1_hex, sources)) == [True] * 10


async def test_unreachable_redis_at_start_is_logged_and_start_returns(events: Any) -> None:
    """start() does not fail (nor wait long) when Redis is down; loads then fail as usual."""
    from actorsess import RedisStorage, SessionManager, StorageError
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
