"""The storage contract as a test suite that any storage can run (see ``StorageContract``).

Every rule the core relies on, checked against a real instance: loads in order,
byte-exact round trips, tombstones, idempotent and version-fenced writes,
deletes, large batches, ``close()`` twice, a manager's round trip, and the
optional all-or-nothing writes and key scans.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NoReturn

from actorsess._config import SessionConfig
from actorsess._manager import SessionManager
from actorsess.storage.base import (
    NEWER_VERSION,
    AtomicStorage,
    Conflict,
    ScannableStorage,
    Storage,
    WriteItem,
)

__all__ = ["StorageContract"]

#: Makes a new storage object over the same data at each call.
Factory = Callable[[], Storage]


class StorageContract:
    """The storage contract as pytest tests: subclass it in a test module and give it a
    ``storage_factory`` fixture, a callable that returns a new storage object over
    the same data each time it is called (as a second process would see it)::

        class TestMyStorage(StorageContract):
            @pytest.fixture
            def storage_factory(self, tmp_path):
                return lambda: MyStorage(tmp_path / "db")

    Needs pytest with pytest-asyncio in auto mode (the tests are coroutines).
    Storages without the optional abilities (``AtomicStorage``,
    ``ScannableStorage``) have those tests skipped, saying so.
    """

    async def test_missing_keys_load_as_none(self, storage_factory: Factory) -> None:
        """Keys never written come back as None, in the order asked."""
        storage: Storage = storage_factory()
        assert await storage.load_many(["a", "b"]) == [None, None]
        assert await storage.load_many([]) == []

    async def test_write_then_load_round_trips_bytes(self, storage_factory: Factory) -> None:
        """A written blob is read back byte for byte, by another storage object too."""
        storage: Storage = storage_factory()
        blob = b"as1:3:" + bytes(range(256))
        await storage.write_many([WriteItem("k1", blob, 3), WriteItem("k2", b"as1:1:{}", 1)], None)
        other: Storage = storage_factory()
        assert await other.load_many(["k2", "nope", "k1"]) == [b"as1:1:{}", None, blob]

    async def test_overwrite_and_delete_in_one_batch(self, storage_factory: Factory) -> None:
        """A batch may overwrite some keys and delete others (blob=None): a deleted key
        loads as a tombstone carrying its version."""
        storage: Storage = storage_factory()
        await storage.write_many(
            [WriteItem("a", b"as1:1:1", 1), WriteItem("b", b"as1:1:2", 1)], None
        )
        await storage.write_many([WriteItem("a", b"as1:2:9", 2), WriteItem("b", None, 2)], None)
        assert await storage.load_many(["a", "b"]) == [b"as1:2:9", b"as1:2:"]

    async def test_writes_are_idempotent(self, storage_factory: Factory) -> None:
        """Sending the same batch twice (unknown outcome, retried) leaves the same state."""
        storage: Storage = storage_factory()
        batch = [WriteItem(f"k{i}", b"as1:%d:{}" % i, i) for i in range(1, 51)]
        await storage.write_many(batch, None)
        await storage.write_many(batch, None)
        assert await storage.load_many([f"k{i}" for i in range(1, 51)]) == [i.blob for i in batch]

    async def test_older_versions_never_overwrite_newer(self, storage_factory: Factory) -> None:
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

    async def test_delete_many(self, storage_factory: Factory) -> None:
        """delete_many removes present keys and ignores absent ones."""
        storage: Storage = storage_factory()
        await storage.write_many([WriteItem("a", b"as1:1:1", 1)], None)
        await storage.delete_many(["a", "never"])
        assert await storage.load_many(["a"]) == [None]

    async def test_large_batches(self, storage_factory: Factory) -> None:
        """Batches larger than one statement's parameter limit still land whole."""
        storage: Storage = storage_factory()
        batch = [WriteItem(f"key:{i}", b"as1:1:" + b"x" * 200, 1) for i in range(3000)]
        await storage.write_many(batch, None)
        loaded = await storage.load_many([i.key for i in batch])
        assert loaded == [i.blob for i in batch]

    async def test_close_twice(self, storage_factory: Factory) -> None:
        """close() is safe to call twice."""
        storage: Storage = storage_factory()
        await storage.close()
        await storage.close()

    async def test_manager_round_trip_through_each_storage(self, storage_factory: Factory) -> None:
        """A session written by one manager is read back by a fresh one over new storage."""
        config = SessionConfig(flush_interval=60)
        async with SessionManager(storage_factory(), initial=lambda: {"n": 0}, config=config) as m:
            async with m.session("chat:1") as s:
                s["n"] = 41
            await m.update("chat:1", lambda s: s.update(n=s["n"] + 1))
        async with SessionManager(storage_factory(), initial=lambda: {"n": 0}, config=config) as m2:
            assert await m2.get("chat:1") == {"n": 42}

    async def test_write_all_is_all_or_nothing(self, storage_factory: Factory) -> None:
        """``write_all``: one refused item (newer version stored) writes nothing; a
        replay of an applied batch counts as written. (The keys share a hash tag, as
        keys written together must on Redis Cluster.)"""
        storage = storage_factory()
        if not isinstance(storage, AtomicStorage):
            _skip(storage, "AtomicStorage")
        x, y = "{t}x", "{t}y"
        assert storage.atomic_problem([x, y]) is None
        assert await storage.write_all([WriteItem(x, b"as1:5:x", 5)], None) == []
        batch = [WriteItem(y, b"as1:1:y", 1), WriteItem(x, b"as1:4:old", 4)]
        assert await storage.write_all(batch, None) == [Conflict(1, NEWER_VERSION)]
        assert await storage.load_many([x, y]) == [b"as1:5:x", None]
        batch = [WriteItem(y, b"as1:1:y", 1), WriteItem(x, None, 6)]
        assert await storage.write_all(batch, None) == []
        assert await storage.write_all(batch, None) == []  # the replay
        assert await storage.load_many([x, y]) == [b"as1:6:", b"as1:1:y"]

    async def test_scan_keys_pages_every_key_under_a_prefix(self, storage_factory: Factory) -> None:
        """``scan_keys``: every key under the prefix (taken literally), in pages of at
        most ``batch``; nothing outside it."""
        storage = storage_factory()
        if not isinstance(storage, ScannableStorage):
            _skip(storage, "ScannableStorage")
        writer = storage_factory()
        keys = [f"p*[x]:{i}" for i in range(95)]
        await writer.write_many([WriteItem(k, b"as1:1:{}", 1) for k in keys], None)
        await writer.write_many([WriteItem("p*[y]:0", b"as1:1:{}", 1)], None)
        pages = [page async for page in storage.scan_keys("p*[x]:", 10)]
        assert all(0 < len(page) <= 10 for page in pages)
        assert {key for page in pages for key in page} == set(keys)


def _skip(storage: Storage, ability: str) -> NoReturn:
    import pytest

    pytest.skip(f"{type(storage).__name__} is not a {ability}")
