"""Sessions changed outside the bot: refresh() and evict() in local mode, and the
shared-mode way (an admin manager whose update() goes through the owner)."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from actorsess import ConfigError, RedisStorage, SessionConfig, SessionManager
from actorsess._record import encode_record
from actorsess.storage.base import Storage

from .helpers import PREFIX, counter, put_record

#: Long enough that nothing is written behind the tests' backs unless they ask.
SLOW = SessionConfig(flush_interval=60)


async def edit_outside(storage: Storage, key: str, value: dict[str, Any], version: int) -> None:
    await put_record(storage, key, orjson.dumps(value), version)


async def test_refresh_loads_what_was_changed_outside(storage_factory: Any) -> None:
    async with SessionManager(storage_factory(), initial=counter, config=SLOW) as m:
        async with m.session("k") as s:
            s["n"] = 1
        await m.persist("k")
        await edit_outside(storage_factory(), "k", {"n": 50}, version=7)
        assert await m.get("k") == {"n": 1}  # the cached copy, until told
        assert await m.refresh("k") == {"n": 50}
        async with m.session("k") as s:
            assert s == {"n": 50}
            s["n"] += 1
    async with SessionManager(storage_factory(), initial=counter) as again:
        assert await again.get("k") == {"n": 51}  # cold reload: the edit went on from 50


async def test_evict_drops_the_cached_copy_so_the_next_use_loads(storage_factory: Any) -> None:
    async with SessionManager(storage_factory(), initial=counter, config=SLOW) as m:
        await m.update("k", lambda s: s.update(n=1))
        await m.update("other", lambda s: s.update(n=1))
        await m.persist("k")
        await edit_outside(storage_factory(), "k", {"n": 9}, version=3)
        before = m.stats()
        await m.evict("k")
        after = m.stats()
        assert after.cached == before.cached - 1
        assert after.evictions == before.evictions + 1
        assert await m.get("k") == {"n": 9}
        await m.evict("never-used")  # not cached: nothing to do, nothing loaded
        assert m.stats().loads == after.loads + 1


async def test_an_unwritten_change_is_written_before_refresh_or_evict(
    storage_factory: Any,
) -> None:
    """Neither call ever drops what a block committed: it is written, then reloaded."""
    async with SessionManager(storage_factory(), initial=counter, config=SLOW) as m:
        await m.update("a", lambda s: s.update(n=3))
        await m.update("b", lambda s: s.update(n=4))
        assert m.stats().dirty == 2
        assert await m.refresh("a") == {"n": 3}
        await m.evict("b")
        assert m.stats().dirty == 0
    # Read from storage, not from the closing flush: a fresh manager on fresh storage.
    async with SessionManager(storage_factory(), initial=counter) as again:
        assert await again.get_many(["a", "b"]) == {"a": {"n": 3}, "b": {"n": 4}}


async def test_blocks_queued_behind_a_refresh_or_evict_see_the_reloaded_value(
    storage_factory: Any,
) -> None:
    async with SessionManager(storage_factory(), initial=counter, config=SLOW) as m:
        await m.update("k", lambda s: s.update(n=1))
        await m.persist("k")
        outside = storage_factory()
        holding = asyncio.Event()
        release = asyncio.Event()

        async def holder() -> None:
            async with m.session("k") as s:
                holding.set()
                await release.wait()
                s["n"] += 1  # commits n=2 before the refresh runs

        async def add(amount: int) -> int:
            async with m.session("k") as s:
                s["n"] += amount
                return int(s["n"])

        held = asyncio.create_task(holder())
        await holding.wait()
        refreshed = asyncio.create_task(m.refresh("k"))
        evicted = asyncio.create_task(m.evict("k"))
        later = asyncio.create_task(add(100))
        await asyncio.sleep(0.01)
        # While they wait, an edit lands at a newer version than the holder's change,
        # which the refresh writes first: the fence refuses that change (a conflict,
        # logged and counted) and the edit wins.
        await edit_outside(outside, "k", {"n": 40}, version=10)
        release.set()
        await held
        assert await refreshed == {"n": 40}
        await evicted  # a block waits behind it: reloaded, not dropped
        assert await later == 140
        assert m.stats().conflicts == 1
    async with SessionManager(storage_factory(), initial=counter) as again:
        assert await again.get("k") == {"n": 140}


async def test_a_record_put_back_at_an_older_version_is_taken_and_written_over(
    storage_factory: Any,
) -> None:
    """A restored backup carries an older version: the reload takes its value, and the
    next change still gets a version above every one the key has had."""
    async with SessionManager(storage_factory(), initial=counter, config=SLOW) as m:
        for _ in range(5):
            await m.update("k", lambda s: s.update(n=s["n"] + 1))
        await m.persist("k")
        outside = storage_factory()
        await outside.delete_many([PREFIX + "k"])
        await edit_outside(outside, "k", {"n": 2}, version=2)
        assert await m.refresh("k") == {"n": 2}
        await m.update("k", lambda s: s.update(n=s["n"] + 1))
        await m.persist("k")
    async with SessionManager(storage_factory(), initial=counter) as again:
        assert await again.get("k") == {"n": 3}
        stored = await storage_factory().load_many([PREFIX + "k"])
        assert stored == [encode_record(6, b'{"n":3}')]


async def test_refresh_and_evict_check_their_key(storage_factory: Any) -> None:
    async with SessionManager(storage_factory(), initial=counter) as m:
        for call in (m.refresh, m.evict):
            with pytest.raises(ValueError, match="session key"):
                await call("")


async def test_in_shared_mode_an_admin_edits_through_the_owner(redis_url: str) -> None:
    """The supported way to change a session from another process when the bot runs
    in shared mode: a shared-mode manager's update() takes the key from its owner."""
    config = SessionConfig(ownership="shared", flush_interval=60, lease_time=5)
    bot = SessionManager(RedisStorage.from_url(redis_url), initial=counter, config=config)
    admin = SessionManager(RedisStorage.from_url(redis_url), initial=counter, config=config)
    async with bot, admin:
        await bot.update("shared-k", lambda s: s.update(n=5))  # cached, unwritten
        await admin.update("shared-k", lambda s: s.update(n=s["n"] * 10))
        assert await bot.get("shared-k") == {"n": 50}
        for call in (bot.refresh, bot.evict):
            with pytest.raises(ConfigError, match="update\\(\\)"):
                await call("shared-k")
