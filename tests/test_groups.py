"""manager.sessions(k1, k2): turns taken in one order, committed all or nothing."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from typing import Any

import pytest

from actorsess import (
    InvalidKeyError,
    MemoryStorage,
    RedisStorage,
    SessionConfig,
    SessionConflictError,
    SessionDeadlockError,
    SessionManager,
    StorageError,
)
from actorsess.testing import RedisServer

from .helpers import PREFIX, counter, put_record, read_all

# One hash tag: on Redis Cluster, keys written together must share a slot.
ACCOUNTS = [f"acct:{{bank}}:{name}" for name in ("ann", "bo", "cy", "di")]


def balance() -> dict[str, int]:
    return {"balance": 100}


async def transfer(m: SessionManager[dict[str, int]], src: str, dst: str, amount: int) -> None:
    async with m.sessions(src, dst) as (a, b):
        await asyncio.sleep(0)  # other transfers run meanwhile
        if a["balance"] < amount:
            raise ValueError("insufficient funds")
        a["balance"] -= amount
        b["balance"] += amount


async def test_concurrent_transfers_keep_the_total_and_never_deadlock(
    storage_factory: Any,
) -> None:
    rng = random.Random(5)
    async with SessionManager(storage_factory(), initial=balance) as m:
        jobs = []
        for _ in range(300):
            src, dst = rng.sample(ACCOUNTS, 2)  # both orders of every pair
            jobs.append(transfer(m, src, dst, rng.randint(1, 40)))
        results = await asyncio.gather(*jobs, return_exceptions=True)
        refused = [r for r in results if isinstance(r, BaseException)]
        assert all(isinstance(r, ValueError) for r in refused)
        live = await m.get_many(ACCOUNTS)
        assert sum(v["balance"] for v in live.values()) == 400
        assert m.stats().dirty == 0  # a group's commit is written before it ends
    async with SessionManager(storage_factory(), initial=balance) as again:
        assert await again.get_many(ACCOUNTS) == live  # cold reload: the same


async def test_a_block_that_raises_rolls_back_every_session(storage_factory: Any) -> None:
    async with SessionManager(storage_factory(), initial=balance) as m:
        with pytest.raises(ValueError, match="insufficient"):
            await transfer(m, ACCOUNTS[0], ACCOUNTS[1], 500)
        with pytest.raises(RuntimeError):
            async with m.sessions(ACCOUNTS[0], ACCOUNTS[1]) as (a, b):
                a["balance"] = 0
                b["balance"] = 200
                raise RuntimeError
        assert await m.get_many(ACCOUNTS[:2]) == {k: {"balance": 100} for k in ACCOUNTS[:2]}


async def test_a_refused_write_writes_neither_session(storage_factory: Any) -> None:
    """Storage holds a newer version of one key (written from outside): nothing of the
    group lands, SessionConflictError, and the refused session reloads."""
    src, dst = ACCOUNTS[0], ACCOUNTS[1]
    async with SessionManager(storage_factory(), initial=balance) as m:
        await m.get_many([src, dst])
        await put_record(storage_factory(), dst, b'{"balance":7}', 50)
        with pytest.raises(SessionConflictError) as caught:
            await transfer(m, src, dst, 30)
        assert caught.value.key == dst
        assert m.stats().conflicts == 1
        assert await m.get(src) == {"balance": 100}
        assert await m.get(dst) == {"balance": 7}
    [stored_src] = await storage_factory().load_many([PREFIX + src])
    assert stored_src is None  # never written: its part was not applied either


async def test_values_can_be_replaced_and_deleted_through_the_turns(
    storage_factory: Any,
) -> None:
    async with SessionManager(storage_factory(), initial=balance) as m:
        await transfer(m, ACCOUNTS[0], ACCOUNTS[1], 10)
        group = m.sessions(ACCOUNTS[0], ACCOUNTS[1], ACCOUNTS[2])
        async with group:
            first, second, third = group.turns
            first.delete()
            second.value = {"balance": 1}
            third.value["balance"] += 5
    async with SessionManager(storage_factory(), initial=balance) as again:
        found = await again.get_many(ACCOUNTS[:3])
        assert list(found.values()) == [{"balance": 100}, {"balance": 1}, {"balance": 105}]
        stored = await storage_factory().load_many([PREFIX + ACCOUNTS[0]])
        assert stored[0] is not None and stored[0].endswith(b":")  # a tombstone


async def test_a_group_that_re_enters_its_own_key_is_a_deadlock_error() -> None:
    async with SessionManager(MemoryStorage(), initial=counter) as m:
        with pytest.raises(SessionDeadlockError):
            async with asyncio.timeout(5), m.sessions("a", "b"), m.session("b"):
                pass

        # Held by a group, waited for by a block that holds what the group wants next.
        holding = asyncio.Event()

        async def single() -> None:
            async with m.session("z"):
                holding.set()
                await asyncio.sleep(0.2)
                async with m.session("a"):
                    pass

        async def group() -> None:
            await holding.wait()
            async with m.sessions("a", "z"):
                pass

        async with asyncio.timeout(5):
            results = await asyncio.gather(single(), group(), return_exceptions=True)
        assert sum(isinstance(r, SessionDeadlockError) for r in results) == 1


async def test_what_a_group_cannot_be(redis_url: str) -> None:
    async with SessionManager(MemoryStorage(), initial=counter) as m:
        with pytest.raises(ValueError, match="at least one key"):
            async with m.sessions():
                pass
        with pytest.raises(InvalidKeyError, match="given twice"):
            async with m.sessions("a", "b", "a"):
                pass
        with pytest.raises(InvalidKeyError, match="session key"):
            async with m.sessions("a", ""):
                pass


async def test_shared_mode_groups_over_two_managers_keep_the_total(redis_url: str) -> None:
    """Two shared-mode managers (as two workers) transfer between the same accounts: the
    sessions move between them by handover, and every group commits under its leases
    in one write."""
    config = SessionConfig(ownership="shared", flush_interval=0.05, lease_time=5)
    accounts = [f"shared-{a}" for a in ACCOUNTS]
    workers = [
        SessionManager(RedisStorage.from_url(redis_url), initial=balance, config=config)
        for _ in range(2)
    ]
    rng = random.Random(11)
    async with workers[0], workers[1]:
        jobs = []
        for i in range(120):
            src, dst = rng.sample(accounts, 2)
            jobs.append(transfer(workers[i % 2], src, dst, rng.randint(1, 40)))
        results = await asyncio.gather(*jobs, return_exceptions=True)
        assert all(isinstance(r, ValueError) for r in results if isinstance(r, BaseException))
        assert sum(isinstance(r, BaseException) for r in results) < 60
    async with SessionManager(
        RedisStorage.from_url(redis_url), initial=balance, config=config
    ) as again:
        stored = await again.get_many(accounts)
        assert sum(v["balance"] for v in stored.values()) == 400


async def test_on_cluster_keys_without_a_common_slot_are_refused(redis_cluster: Any) -> None:
    storage = RedisStorage.from_url(redis_cluster.url, cluster=True)
    async with SessionManager(storage, initial=counter) as m:
        with pytest.raises(InvalidKeyError, match="common hash tag"):
            async with m.sessions("user:1", "user:2"):
                pass
        async with m.sessions("{pair}:1", "{pair}:2") as (a, b):
            a["n"] = b["n"] = 1
        assert await m.get_many(["{pair}:1", "{pair}:2"]) == {
            "{pair}:1": {"n": 1},
            "{pair}:2": {"n": 1},
        }


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    with RedisServer() as server:
        yield server


@pytest.mark.process
async def test_a_write_whose_reply_is_lost_ends_with_both_old_values(
    private_redis: RedisServer,
) -> None:
    """Redis SIGSTOPped during the group's write: the block raises and rolls back; the
    write still queued in the server lands when it resumes, and the old values are
    written over it (the version that may have landed is skipped), so storage ends at
    both old values, never at one of each."""
    config = SessionConfig(flush_interval=0.05, write_timeout=0.3, retry_base_delay=0.05)
    storage = RedisStorage.from_url(private_redis.url)
    src, dst = ACCOUNTS[0], ACCOUNTS[1]
    async with SessionManager(storage, initial=balance, config=config) as m:
        await transfer(m, src, dst, 10)  # stored: 90 / 110 at version 1
        try:
            with pytest.raises(StorageError, match="were not saved .*all of them were rolled back"):
                async with m.sessions(src, dst) as (a, b):
                    a["balance"] -= 50
                    b["balance"] += 50
                    private_redis.pause()
        finally:
            await asyncio.sleep(0.2)  # the old values' writes queue up behind it too
            private_redis.resume()
        assert await m.get_many([src, dst]) == {src: {"balance": 90}, dst: {"balance": 110}}
        await m.flush()
    stored = await read_all(private_redis.url, [src, dst])
    assert stored == [b'as1:3:{"balance":90}', b'as1:3:{"balance":110}']
